"""Peak memory of full-ranking evaluation at MovieLens-20M's size: 138,493 users x 26,744 items.

A synthetic stand-in of that size (about 16 million events, Zipf-like item popularity, per-user
lengths like ML-20M's: at least 20, mean about 144) is written once; then two child processes
each load it and split it leave-last-out, and the second also runs
`zoo.recsys.evaluate_ranking` (a matrix factorisation of dim 32, the whole catalogue ranked for
every user, `baselines=False`: the random baseline scores each of the 3.7 billion pairs through
its hash, which takes far longer than the model). The peak RSS of each child
(`getrusage(RUSAGE_CHILDREN)`) shows what the evaluation adds to the data's own footprint.

    uv run python benchmarks/full_ranking_memory.py
"""

import argparse
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

USERS, ITEMS, MEAN_LENGTH = 138_493, 26_744, 144


def write_stand_in(path: pathlib.Path, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    lengths = np.clip(20 + rng.lognormal(np.log(60), 1.1, USERS), 20, 9000).astype(np.int64)
    lengths = np.maximum(20, (lengths * (MEAN_LENGTH / lengths.mean())).astype(np.int64))
    weights = 1.0 / (1.0 + rng.permutation(ITEMS)) ** 0.9
    cumulative = np.cumsum(weights) / weights.sum()
    items = np.searchsorted(cumulative, rng.random(int(lengths.sum())))
    users = np.repeat(np.arange(USERS), lengths)
    pairs = np.unique(users * ITEMS + np.minimum(items, ITEMS - 1))  # each pair once
    np.savez(path, user=(pairs // ITEMS).astype(np.int32), item=(pairs % ITEMS).astype(np.int32))
    return len(pairs)


def child(path: str, evaluate: bool) -> None:
    import jax

    import zoo

    with np.load(path) as saved:
        arrays = {"user": saved["user"], "item": saved["item"]}
    arrays["timestamp"] = np.arange(len(arrays["user"]), dtype=np.int64)
    data = zoo.data.Interactions(arrays, user_ids=np.arange(USERS), item_ids=np.arange(ITEMS))
    train, test = zoo.data.leave_last_out(data)
    model = zoo.MatrixFactorization(USERS, ITEMS, dim=32, key=jax.random.key(0))
    if evaluate:
        start = time.perf_counter()
        report = zoo.recsys.evaluate_ranking(model, train, test, baselines=False)
        print(f"evaluated {report.users} users in {time.perf_counter() - start:.0f} s")


def peak_of(path: pathlib.Path, evaluate: bool) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    command = [sys.executable, __file__, "--child", str(path)] + (
        ["--evaluate"] if evaluate else []
    )
    subprocess.run(command, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(before, after) / 2**20  # KiB to GiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--evaluate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.evaluate)
        return
    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / "stand_in.npz"
        events = write_stand_in(path)
        print(f"stand-in: {USERS} users x {ITEMS} items, {events} events")
        loaded = peak_of(path, evaluate=False)
        print(f"peak RSS, data loaded and split: {loaded:.2f} GiB", flush=True)
        evaluated = peak_of(path, evaluate=True)
        print(f"peak RSS, and full-ranking evaluation: {evaluated:.2f} GiB "
              f"(+{evaluated - loaded:.2f} GiB)")  # fmt: skip


if __name__ == "__main__":
    main()
