"""Seconds to save and restore an embedding table and its optimizer state: zoo vs raw NumPy.

A `zoo.TrainState` holding a `zoo.Embedding` of `--gib` GiB (float32 rows of 64) and its
`zoo.sparse.rowwise_adagrad` accumulator goes through `zoo.save`/`zoo.load` and through
`zoo.Checkpoints` (asynchronous save: the time `save` blocks, then the total until written; one
`Checkpoints` for the whole run, as in training, so that each save after the first copies the
state into the host memory of the save before).
The same arrays are written with `numpy.save` and read with `numpy.load`, in the same run and
the same folder. Both sides fsync their files (TensorStore, under Orbax, fsyncs each file it
writes; the NumPy side calls `os.fsync`), and both read back what they just wrote, from the
page cache. zoo's times include its checksums, and its loads end with device arrays.

    uv run python benchmarks/checkpoint.py              # 1 GiB
    uv run python benchmarks/checkpoint.py --gib 0.1    # a quick run
    uv run python benchmarks/checkpoint.py --settle 3   # each read from reclaimed memory
"""

import argparse
import os
import pathlib
import shutil
import statistics
import tempfile
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import zoo

DIM = 64


def train_state(gib: float) -> zoo.TrainState:
    rows = int(gib * 2**30) // (DIM * 4)
    # Built under jit, so that initialisation makes no second copy of the table.
    table = eqx.filter_jit(lambda key: zoo.Embedding(rows, DIM, key=key))(jax.random.key(0))
    opt_state = zoo.sparse.rowwise_adagrad(0.05).init(table)
    # Random accumulators, not zeros: Orbax skips chunks equal to the fill value.
    accumulator = jax.random.uniform(jax.random.key(1), (rows,))
    sums = eqx.tree_at(lambda t: t.weight, opt_state.sum_of_squares, accumulator)
    counters = [jnp.array(0, jnp.int32) for _ in range(3)]
    return zoo.TrainState(
        table, opt_state._replace(sum_of_squares=sums), *counters, jax.random.key(2)
    )


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def numpy_save(folder: pathlib.Path, arrays: list[np.ndarray]) -> None:
    for i, array in enumerate(arrays):
        with open(folder / f"{i}.npy", "wb") as file:
            np.save(file, array)
            file.flush()
            os.fsync(file.fileno())


def numpy_load(folder: pathlib.Path, count: int) -> list[np.ndarray]:
    return [np.load(folder / f"{i}.npy") for i in range(count)]


def one_run(
    folder: pathlib.Path,
    checkpoints: zoo.Checkpoints,
    state: zoo.TrainState,
    arrays: list[np.ndarray],
    record,
    turn: int,
    settle: float,
) -> None:
    """Each way of saving once, then each way of reading back once, in fresh subfolders.

    Saves and reads start in turn (`turn`), so that no side is always first or last, and after
    each read the run pauses `settle` seconds. Back to back, an operation may reuse memory the
    previous one has just freed, cheap to touch, or get memory the VM has already handed back
    to its host, which costs about 2 s per GiB to touch again (the page cache a write fills
    included). Which one it gets depends on timing, not on the method. After a pause of 2 s or
    more, every read starts like a restore at the start of a run: with memory the host has to
    provide again.
    """
    numpy_dir, zoo_dir = folder / "numpy", folder / "zoo"
    numpy_dir.mkdir()

    def checkpoint():
        start = time.perf_counter()
        checkpoints.save(turn + 1, state)
        record("Checkpoints.save (blocks)", time.perf_counter() - start)
        checkpoints.wait()
        record("Checkpoints.save (written)", time.perf_counter() - start)

    saves = [
        lambda: record("numpy.save (fsync)", timed(lambda: numpy_save(numpy_dir, arrays))),
        lambda: record("zoo.save", timed(lambda: zoo.save(zoo_dir, state))),
        checkpoint,
    ]
    for save in _in_turn(saves, turn):
        save()
    reads = [
        ("numpy.load", lambda: numpy_load(numpy_dir, len(arrays))),
        ("zoo.load", lambda: jax.block_until_ready(zoo.load(zoo_dir, like=state))),
        ("Checkpoints.restore", lambda: jax.block_until_ready(checkpoints.restore(state))),
    ]
    for name, read in _in_turn(reads, turn):
        record(name, timed(read))
        time.sleep(settle)
    for done in (numpy_dir, zoo_dir):
        shutil.rmtree(done)


def _in_turn(items: list, turn: int) -> list:
    return items[turn % len(items) :] + items[: turn % len(items)]


def report(times: dict[str, list[float]], nbytes: int) -> None:
    """Medians and minimums: on a shared VM a read sometimes stalls for seconds (fresh memory,
    evicted page cache), so the minimum is the repeatable figure and the median the typical."""
    median = {name: statistics.median(values) for name, values in times.items()}
    fastest = {name: min(values) for name, values in times.items()}
    print(f"{'':28} {'median s':>9} {'min s':>7} {'GiB/s':>7} {'x numpy':>8} {'(min)':>6}")
    for name in times:
        reads = "load" in name or "restore" in name
        baseline = "numpy.load" if reads else "numpy.save (fsync)"
        gib_per_s = nbytes / 2**30 / median[name]
        print(
            f"{name:28} {median[name]:9.3f} {fastest[name]:7.3f} {gib_per_s:7.2f} "
            f"{median[name] / median[baseline]:8.2f} {fastest[name] / fastest[baseline]:6.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="size of the table in GiB")
    parser.add_argument(
        "--repeats", type=int, default=6, help="runs of each (a multiple of 3: reads rotate)"
    )
    parser.add_argument(
        "--settle", type=float, default=0.0, help="seconds to pause after each read (try 3)"
    )
    parser.add_argument("--dir", type=pathlib.Path, default=None, help="folder to write in")
    args = parser.parse_args()

    state = train_state(args.gib)
    arrays = [np.asarray(x) for x in jax.tree.leaves(eqx.filter(state, eqx.is_inexact_array))]
    nbytes = sum(a.nbytes for a in arrays)
    folder = pathlib.Path(tempfile.mkdtemp(prefix="zoo-bench-", dir=args.dir))
    print(f"{nbytes / 2**30:.3f} GiB in {len(arrays)} float arrays, written in {folder}")
    # Disk and CPU shared with other work make every figure noisier: say how busy it was.
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    times: dict[str, list[float]] = {}
    # One `Checkpoints` for every run, as in training: each save after the first copies the
    # state into the host memory of the one before. It keeps every checkpoint, so that no
    # deletion of an old one (which NumPy's side does not do) falls inside a timed save.
    checkpoints = zoo.Checkpoints(folder / "run", keep=None)
    try:
        # One untimed round first: this VM's first touch of fresh memory costs up to 10x, and
        # whichever side ran first would pay it. The first checkpoint also allocates its copies.
        one_run(folder, checkpoints, state, arrays, lambda name, s: None, -1, args.settle)
        record = lambda name, s: times.setdefault(name, []).append(s)  # noqa: E731
        for turn in range(args.repeats):
            one_run(folder, checkpoints, state, arrays, record, turn, args.settle)
    finally:
        checkpoints.close()
        shutil.rmtree(folder, ignore_errors=True)
    report(times, nbytes)
    print("\nEvery run, in seconds (the spread is this machine's, not the method's):")
    for name, values in times.items():
        print(f"  {name:28} " + " ".join(f"{v:.2f}" for v in values))


if __name__ == "__main__":
    main()
