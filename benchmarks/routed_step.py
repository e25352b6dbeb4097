"""The sparse step on a mesh, routed (ids sent to their rows' shards) against partitioned by jit.

A 2**20 x 64 float32 table and a linear head train with row-wise Adagrad on batches of 4096
uniform ids, on meshes of simulated CPU devices (`data` x `model`). For each mesh it prints
the bytes that one step's collectives deliver to each device, read from the compiled program,
and ms/step medians of the trainer's fused loop, both side by side with their ratio.

    uv run python benchmarks/routed_step.py
    uv run python benchmarks/routed_step.py --steps 5 --rounds 3     # a quick run

The simulated devices share this machine's cores and memory, so their timings measure the
work all devices do together, not what communication would cost between real devices; the
bytes are what the program would move on any backend.
"""

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time

MESHES = ((1, 2), (1, 4), (1, 8), (2, 4))
ROWS, DIM, BATCH = 2**20, 64, 4096


def worker(steps: int, rounds: int) -> dict:
    import equinox as eqx
    import jax
    import numpy as np
    import optax

    import zoo
    from _table_model import TableRegressor
    from zoo._training._step import SPARSE, Programs, StepTotals, initial_state, make_train_step
    from zoo._training._strategy import (
        Placement,
        routed_step,
        routing_for,
        shard_training,
        training_mesh,
    )
    from zoo.distributed._hlo import bytes_per_device

    def loss_fn(model, batch, key):
        del key
        return jax.numpy.mean((jax.vmap(model)(batch["ids"]) - batch["y"]) ** 2)

    optimizer = zoo.sparse.partition(optax.adam(1e-3), zoo.sparse.rowwise_adagrad(0.05))
    make_step = functools.partial(make_train_step, loss_fn, optimizer)
    rng = np.random.default_rng(0)
    arrays = {
        "ids": rng.integers(0, ROWS, BATCH * steps).astype(np.int32),
        "y": rng.normal(size=BATCH * steps).astype(np.float32),
    }

    def init(model):
        return initial_state(model, optimizer.init(model), jax.random.key(1))

    def programs_for(mesh, routing) -> tuple:
        model = eqx.filter_jit(TableRegressor)(ROWS, DIM, jax.random.key(0))
        dynamic, static, step = shard_training(init, model, make_step(SPARSE), mesh, routing)
        return Programs(step, static, BATCH), dynamic

    def step_bytes(mesh, routing) -> int:
        programs, dynamic = programs_for(mesh, routing)
        batch = Placement(mesh).batch({name: x[:BATCH] for name, x in arrays.items()})
        compiled = programs.one_step.lower(dynamic, StepTotals.zeros(), batch).compile()
        return bytes_per_device(compiled)

    def measure(mesh, routed: bool) -> dict:
        # Bytes of the step that runs when no device has too many ids for one shard (the
        # trainer's program also holds the step for skewed ids, whose collectives would be
        # counted too); times of the trainer's loop as it runs, choosing between the two.
        capped = functools.partial(routed_step, make_step, loss_fn, fallback=False)
        moved = step_bytes(mesh, capped if routed else None)
        routing = routing_for(SPARSE, make_step, loss_fn, mesh) if routed else None
        programs, dynamic = programs_for(mesh, routing)
        data = Placement(mesh).dataset(arrays)
        order = programs.epoch_order(dynamic, BATCH * steps)
        times = []
        for _ in range(rounds + 1):  # the first round compiles
            start = time.perf_counter()
            dynamic, totals = programs.run_steps(dynamic, StepTotals.zeros(), data, order, steps)
            jax.block_until_ready(totals)
            times.append((time.perf_counter() - start) / steps)
            dynamic = eqx.tree_at(lambda s: s.batch, dynamic, dynamic.batch * 0)
        return {"bytes": moved, "ms": 1e3 * statistics.median(times[1:])}

    results = {}
    for data, model in MESHES:
        devices = jax.devices()[: data * model]
        mesh = jax.make_mesh((data, model), ("data", "model"), devices=devices)
        mesh = training_mesh(mesh, BATCH)
        results[f"{data}x{model}"] = {
            name: measure(mesh, routed) for name, routed in (("routed", True), ("jit", False))
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per configuration")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.steps, args.rounds)))
        return
    # JAX fixes its device count when it starts: the measurements run in a process of their own.
    environment = os.environ | {
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    command = [sys.executable, __file__, "--worker", "--steps", str(args.steps)]
    done = subprocess.run(
        [*command, "--rounds", str(args.rounds)],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    results = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"table {ROWS} x {DIM} float32, batch {BATCH} ids, row-wise Adagrad, 8 simulated devices")
    print(f"{'mesh':>6} {'bytes/device/step':>36} {'ms/step (all devices, 2 cores)':>36}")
    columns = f"{'routed':>11} {'jit':>11} {'ratio':>12}"
    print(f"{'':>6} {columns} {columns}")
    for mesh, r in results.items():
        routed, jit = r["routed"], r["jit"]
        print(
            f"{mesh:>6} {routed['bytes']:>11,} {jit['bytes']:>11,} "
            f"{routed['bytes'] / jit['bytes']:>11.2f}x {routed['ms']:>11.2f} {jit['ms']:>11.2f} "
            f"{routed['ms'] / jit['ms']:>11.2f}x"
        )


if __name__ == "__main__":
    main()
