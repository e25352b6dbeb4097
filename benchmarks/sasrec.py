"""SASRec training throughput (sequences/s): zoo.train beside a hand-written JAX loop and PyTorch.

Workload: `zoo.data.synthetic_sequences` (2048 users, 1000 items, 50 events each), split
leave-last-out, as `zoo.data.sequences(train, max_len=50)` rows; `zoo.SASRec` with dim 64,
2 blocks, 1 head, dropout 0.2; the full-softmax next-item loss (`sequence_loss("softmax")`);
Adam 1e-3; batches of 128 sequences, reshuffled every epoch, full batches only. In one
process and one run, side by side:

- `zoo.train`: the library call, as a user makes it (by default each compiled program runs
  a tenth of an epoch and at least 32 steps: here the epoch's 16 steps).
- `zoo.train, 1 chunk/epoch`: the same with `steps_per_chunk` = the steps of an epoch.
- `hand-written scan`: the same model, loss and optimizer, a whole epoch as one jitted
  `lax.scan` program written by hand (donated buffers, the per-step key folded from the step).
- `pytorch eager`: the same model and loss in PyTorch, run from `.bench-venv/` (Python 3.11
  with the CPU build of torch 2.13, made on first use by `_torch_env.py`) as a subprocess;
  skipped with the reason when it cannot be had.

Each method runs `--epochs` epochs per round over `--rounds` rounds, the methods taking turns,
and reports the median over epochs after each round's first (compilation).

Then, in the same run, the **time to the validation plateau**: `zoo train recommender
--model sasrec` as the CLI runs it (the ML-100K stand-in `zoo.data.synthetic_movielens`,
ratings >= 4, leave-one-out, its default SASRec, loss, optimizer, batch and epoch, through
`recipes.fit`), beside the same model, loss, optimizer, rows and validation in PyTorch eager.
Both validate after every epoch (NDCG@10 of the validation items over the whole catalogue)
and stop after `PATIENCE` epochs without a better figure; the time to the plateau is the
wall-clock from the start of training (zoo's compilation included) to the end of the best
epoch's validation. `--plateau-only` skips the throughput rounds, `--throughput-only` the
plateau; `--max-len` shortens the history for a quicker run. Each side's time is split:
training and validation per epoch (medians), the first epoch's extra training time
(compiling) and the time before it.

    uv run python benchmarks/sasrec.py

Plateau runs (`--plateau-only`, the CLI's 200-item history, 2 shared CPU cores): pytorch / zoo
time to the plateau = 1.70, 1.53 and 1.30 (zoo at epoch 15, 15 and 19; PyTorch at 22 each
time; an epoch of training 1.09-1.14x faster in zoo). Figures and the profile:
docs/sasrec.md.
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import zoo
from _torch_env import torch_python
from zoo._cli import _recipes as recipes

HERE = pathlib.Path(__file__).resolve().parent
CONFIG = {
    "num_users": 2048,
    "num_items": 1000,
    "max_len": 50,
    "dim": 64,
    "num_blocks": 2,
    "num_heads": 1,
    "dropout": 0.2,
    "learning_rate": 1e-3,
    "batch_size": 128,
}


def sequence_rows() -> dict[str, np.ndarray]:
    data = zoo.data.synthetic_sequences(
        CONFIG["num_users"], CONFIG["num_items"], length=CONFIG["max_len"], key=jax.random.key(0)
    )
    train, _ = zoo.data.leave_last_out(data)
    return zoo.data.sequences(train, max_len=CONFIG["max_len"])


def new_model() -> zoo.SASRec:
    sizes = ("num_items", "dim", "num_blocks", "num_heads", "max_len", "dropout")
    return zoo.SASRec(**{name: CONFIG[name] for name in sizes}, key=jax.random.key(1))


LOSS = zoo.recsys.sequence_loss("softmax")


def run_zoo_train(rows, epochs, **options):
    _, history = zoo.train(
        new_model(),
        rows,
        loss=LOSS,
        optimizer=optax.adam(CONFIG["learning_rate"]),
        epochs=epochs,
        batch_size=CONFIG["batch_size"],
        key=jax.random.key(2),
        callbacks=[],
        loop=zoo.Loop(last_batch="drop", **options),
    )
    return history["time"]


def run_zoo_train_one_chunk(rows, epochs):
    return run_zoo_train(rows, epochs, steps_per_chunk=len(rows["input"]) // CONFIG["batch_size"])


def run_hand_scan(rows, epochs):
    """One epoch = one jitted program: shuffle, then a lax.scan of optimizer steps."""
    params, static = eqx.partition(new_model(), eqx.is_array)
    optimizer = optax.adam(CONFIG["learning_rate"])
    opt_state = optimizer.init(params)
    data = {name: jnp.asarray(column) for name, column in rows.items()}
    n, batch_size = len(rows["input"]), CONFIG["batch_size"]
    steps = n // batch_size

    def step(carry, inputs):
        params, opt_state = carry
        indices, key = inputs
        batch = {name: column[indices] for name, column in data.items()}
        grads = jax.grad(lambda p: LOSS(eqx.combine(p, static), batch, key))(params)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    def epoch(params, opt_state, key):
        order = jax.random.permutation(key, n)[: steps * batch_size].reshape(steps, batch_size)
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(steps))
        (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), (order, keys))
        return params, opt_state

    epoch = jax.jit(epoch, donate_argnums=(0, 1))
    times = []
    for e in range(epochs):
        start = time.perf_counter()
        params, opt_state = epoch(params, opt_state, jax.random.key(e))
        jax.block_until_ready(params)
        times.append(time.perf_counter() - start)
    return times


def run_torch(python: pathlib.Path | None, data_file: str, epochs: int):
    if python is None:
        return None
    result = subprocess.run(
        [
            str(python),
            str(HERE / "_torch_sasrec.py"),
            data_file,
            json.dumps(CONFIG),
            str(epochs),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)["epoch_seconds"]


def plateau_workload(max_len: int):
    """What `zoo train recommender --model sasrec` trains and validates on, and its settings."""
    data_key, init_key, train_key = recipes.split_keys(0)
    data, _ = recipes.load("synthetic", None, data_key, sequential=True)
    train, valid, _ = recipes.splits(data)
    config = CONFIG | {
        "num_items": train.num_items,
        "max_len": max_len,
        "dim": recipes.DEFAULT_DIM["sasrec"],
        "learning_rate": recipes.learning_rate("sasrec", "adam"),
        "batch_size": recipes.DEFAULT_BATCH_SIZE["sasrec"],
    }
    rows = recipes.training_data("sasrec", train, max_len, config["batch_size"])
    return train, valid, rows, config, (init_key, train_key)


def zoo_plateau(train, valid, rows, config, keys, epochs: int, patience: int) -> list:
    """`[seconds since training began, validation NDCG@10]` after each epoch of the CLI's fit."""
    init_key, train_key = keys
    model = recipes.build_model("sasrec", train, config["dim"], init_key, max_len=config["max_len"])
    validation = recipes.validation(train, valid)
    marks = []

    def timed(model):
        start = time.perf_counter()
        figures = validation(model)
        end = time.perf_counter()
        marks.append([end - began, figures[recipes.MONITOR], figures["hr@10"], end - start])
        return figures

    began = time.perf_counter()
    _, history, _ = recipes.fit(
        model,
        rows,
        loss=recipes.build_loss("softmax", train, model="sasrec"),
        optimizer=recipes.build_optimizer("adam", config["learning_rate"]),
        epochs=epochs,
        batch_size=config["batch_size"],
        key=train_key,
        evaluate=timed,
        patience=patience,
    )
    marks = marks[-len(history["epoch"]) :]  # an evaluation before training names the figures
    return [[*mark, seconds] for mark, seconds in zip(marks, history["time"], strict=True)]


def torch_plateau(python, train, valid, rows, config, epochs: int, patience: int) -> list | None:
    if python is None:
        return None
    histories = np.asarray(zoo.SASRec(config["num_items"], dim=4, max_len=config["max_len"],
                                      key=jax.random.key(0)).ranker(train).histories)  # fmt: skip
    arrays = dict(rows) | {
        "histories": histories,
        "valid_user": np.asarray(valid["user"]),
        "valid_item": np.asarray(valid["item"]),
        "seen_user": np.asarray(train["user"]),
        "seen_item": np.asarray(train["item"]),
    }
    with tempfile.TemporaryDirectory() as scratch:
        data_file = str(pathlib.Path(scratch) / "plateau.npz")
        np.savez(data_file, **arrays)
        result = subprocess.run(
            [str(python), str(HERE / "_torch_sasrec.py"), data_file, json.dumps(config),
             str(epochs), str(patience)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    return json.loads(result.stdout)["marks"]


def plateau(marks: list) -> tuple[int, float, float, float]:
    """`(epoch, seconds, ndcg, hr)` of the best validation figure (the first, on ties)."""
    best = max(range(len(marks)), key=lambda epoch: (marks[epoch][1], -epoch))
    return best + 1, marks[best][0], marks[best][1], marks[best][2]


def split(marks: list) -> str:
    """Where a side's time went: training and validation per epoch (medians), the first
    epoch's extra training time (compiling, warm-up), and the time before the first epoch."""
    train = [mark[4] for mark in marks]
    evaluation = [mark[3] for mark in marks]
    before = marks[0][0] - train[0] - evaluation[0]
    typical = statistics.median(train)
    return (
        f"training {typical:.2f} s an epoch (the first {train[0] - typical:+.1f} s), "
        f"validation {statistics.median(evaluation):.2f} s an epoch, {before:.1f} s before "
        "the first"
    )


def run_plateau(python, max_len: int) -> None:
    train, valid, rows, config, keys = plateau_workload(max_len)
    epochs, patience = recipes.EPOCHS, recipes.PATIENCE
    print(
        f"\ntime to the validation plateau: the stand-in, {train.num_users} users, "
        f"{train.num_items} items, {len(rows['input'])} rows of {max_len} items an epoch, "
        f"dim {config['dim']}, Adam {config['learning_rate']:g}, batch {config['batch_size']}, "
        f"full softmax; patience {patience}, at most {epochs} epochs",
        flush=True,
    )
    results = {"zoo (recipes.fit)": zoo_plateau(train, valid, rows, config, keys, epochs, patience)}
    torch_marks = torch_plateau(python, train, valid, rows, config, epochs, patience)
    if torch_marks:
        results["pytorch eager"] = torch_marks
    for name, marks in results.items():
        epoch, seconds, ndcg, hr = plateau(marks)
        print(
            f"  {name:20s} best validation NDCG@10 {ndcg:.4f} (HR@10 {hr:.4f}) at epoch {epoch} "
            f"of {len(marks)}: {seconds:.0f} s to the plateau ({marks[-1][0]:.0f} s in all, "
            f"{marks[-1][0] / len(marks):.1f} s an epoch)\n  {'':20s} {split(marks)}"
        )
    if torch_marks:
        ratio = plateau(torch_marks)[1] / plateau(results["zoo (recipes.fit)"])[1]
        print(f"  pytorch / zoo time to the plateau = {ratio:.2f} (target >= 1.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="per round, the first discarded")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--plateau-only", action="store_true", help="skip the throughput rounds")
    parser.add_argument(
        "--throughput-only", action="store_true", help="skip the time to the plateau"
    )
    parser.add_argument(
        "--max-len", type=int, default=recipes.DEFAULT_MAX_LEN, help="plateau run's history"
    )
    args = parser.parse_args()
    if args.plateau_only:
        python, how = torch_python()
        print(how)
        run_plateau(python, args.max_len)
        return

    rows = sequence_rows()
    sequences = (len(rows["input"]) // CONFIG["batch_size"]) * CONFIG["batch_size"]
    print(f"{sequences} sequences per epoch; {CONFIG}")
    python, how = torch_python()
    print(how)
    methods = {
        "zoo.train": run_zoo_train,
        "zoo.train, 1 chunk/epoch": run_zoo_train_one_chunk,
        "hand-written scan": run_hand_scan,
    }
    samples = {name: [] for name in [*methods, "pytorch eager"]}
    with tempfile.TemporaryDirectory() as scratch:
        data_file = str(pathlib.Path(scratch) / "rows.npz")
        np.savez(data_file, **rows)
        for round_ in range(args.rounds):
            for name, run in methods.items():
                samples[name] += run(rows, args.epochs)[1:]
            torch_times = run_torch(python, data_file, args.epochs)
            if torch_times:
                samples["pytorch eager"] += torch_times[1:]
            print(
                f"round {round_ + 1}: "
                + ", ".join(
                    f"{name} {sequences / statistics.median(times):.0f}/s"
                    for name, times in samples.items()
                    if times
                )
            )
    report({name: sequences / statistics.median(v) for name, v in samples.items() if v})
    if not args.throughput_only:
        run_plateau(python, args.max_len)


def report(throughput: dict[str, float]) -> None:
    zoo_rate = throughput["zoo.train"]
    print("\nmedian sequences/s (ratio to zoo.train)")
    for name, rate in throughput.items():
        print(f"  {name:26s} {rate:8.0f}/s   {rate / zoo_rate:5.2f}x")
    print(
        f"  hand-written scan / zoo.train = {throughput['hand-written scan'] / zoo_rate:.2f} "
        "(target <= 1.10)"
    )
    one_chunk = throughput["zoo.train, 1 chunk/epoch"]
    print(
        f"  hand-written scan / zoo.train, 1 chunk/epoch = "
        f"{throughput['hand-written scan'] / one_chunk:.2f}"
    )
    if "pytorch eager" in throughput:
        print(
            f"  zoo.train / pytorch eager     = {zoo_rate / throughput['pytorch eager']:.2f} "
            "(target >= 1.5)"
        )


if __name__ == "__main__":
    sys.exit(main())
