"""The PyTorch side of `embedding_step.py`: `nn.Embedding(sparse=True)` and a linear head.

Runs in its own Python 3.11 venv (torch has no CPU wheel for this project's Python here):

    ~/.pyenv/versions/3.11.7/bin/python -m venv .bench-venv
    .bench-venv/bin/pip install torch==2.13.0 numpy

Usage: `_torch_embedding_step.py {sgd,sparse_adam,adagrad} V STEPS`; prints one JSON line.
"""

import json
import resource
import statistics
import sys
import time

import torch

DIM, BATCH = 64, 4096


def main(optimizer: str, size: int, steps: int) -> dict:
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.manual_seed(0)
    table = torch.nn.Embedding(size, DIM, sparse=True)
    head = torch.nn.Linear(DIM, 1)
    sparse = {
        "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
        "sparse_adam": lambda p: torch.optim.SparseAdam(p, lr=1e-3),
        "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.05),
    }[optimizer](table.parameters())
    dense = torch.optim.Adam(head.parameters(), lr=1e-3)
    batches = [(torch.randint(0, size, (BATCH,)), torch.randn(BATCH)) for _ in range(8)]
    times = []
    for i in range(steps + 3):
        ids, y = batches[i % len(batches)]
        start = time.perf_counter()
        sparse.zero_grad(set_to_none=True)
        dense.zero_grad(set_to_none=True)
        loss = torch.mean((head(table(ids))[:, 0] - y) ** 2)
        loss.backward()
        sparse.step()
        dense.step()
        times.append(time.perf_counter() - start)
    state = sum(
        t.numel() * t.element_size()
        for s in sparse.state.values()
        for t in s.values()
        if torch.is_tensor(t)
    )
    return {
        "ms": 1e3 * statistics.median(times[3:]),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "baseline_rss": baseline,
        "table_and_state": table.weight.numel() * 4 + state,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
