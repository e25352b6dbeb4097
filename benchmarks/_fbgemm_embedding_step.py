"""The FBGEMM side of `embedding_step.py`: the table-batched embedding torchrec runs on CPU.

FBGEMM's `SplitTableBatchedEmbeddingBagsCodegen` with the table on the host, its optimizer
fused into the backward pass (the rows are updated while the gradient is computed, as torchrec
trains), and the same linear head and MSE loss as the other steps, the head on torch's Adam.
One id per bag (offsets `0, 1, ..., B`), so that a bag's sum is the row.

Runs in the benchmark's own Python 3.11 venv (`_torch_env.py`: torch's CPU build and
`fbgemm-gpu-cpu` built for it).

Usage: `_fbgemm_embedding_step.py {sgd,rowwise_adagrad,lazy_adam} V STEPS`; prints one JSON line.
"""

import json
import resource
import statistics
import sys
import time

import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)
import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    ComputeDevice,
    SplitTableBatchedEmbeddingBagsCodegen,
)

DIM, BATCH = 64, 4096
# One thread: with torch's default two on the shared 2-core machine, FBGEMM's CPU backward (an
# OpenMP region) took 65-90 ms a step at V = 1e6 where one thread takes 0.5 ms; zoo's kernels
# run on one thread too.
THREADS = 1
# zoo's optimizer -> FBGEMM's, with zoo's hyperparameters. FBGEMM's ADAM updates only the
# looked-up rows' moments and weights, with the global step's bias correction: lazy Adam.
OPTIMIZERS = {
    "sgd": (EmbOptimType.EXACT_SGD, {"learning_rate": 0.1}),
    "rowwise_adagrad": (EmbOptimType.EXACT_ROWWISE_ADAGRAD, {"learning_rate": 0.05, "eps": 1e-8}),
    "lazy_adam": (
        EmbOptimType.ADAM,
        {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
    ),
}


def main(optimizer: str, size: int, steps: int) -> dict:
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    kind, hyper = OPTIMIZERS[optimizer]
    table = SplitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=[(size, DIM, EmbeddingLocation.HOST, ComputeDevice.CPU)],
        optimizer=kind,
        pooling_mode=PoolingMode.SUM,
        weights_precision=SparseType.FP32,
        **hyper,
    )
    head = torch.nn.Linear(DIM, 1)
    dense = torch.optim.Adam(head.parameters(), lr=1e-3)
    offsets = torch.arange(BATCH + 1, dtype=torch.int64)
    batches = [
        (torch.randint(0, size, (BATCH,), dtype=torch.int64), torch.randn(BATCH)) for _ in range(8)
    ]
    times = []
    for i in range(steps + 3):
        ids, y = batches[i % len(batches)]
        start = time.perf_counter()
        dense.zero_grad(set_to_none=True)
        loss = torch.mean((head(table(ids, offsets))[:, 0] - y) ** 2)
        loss.backward()  # FBGEMM updates the looked-up rows in here
        dense.step()
        times.append(time.perf_counter() - start)
    state = (
        sum(
            t.numel() * t.element_size() for t in table.split_optimizer_states()[0] if t is not None
        )
        if kind != EmbOptimType.EXACT_SGD
        else 0
    )
    return {
        "ms": 1e3 * statistics.median(times[3:]),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "baseline_rss": baseline,
        "table_and_state": size * DIM * 4 + state,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
