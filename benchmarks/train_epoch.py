"""Seconds per epoch of the seed lesson's workload, zoo.train against hand-written loops.

Workload: MLP 784-256-128-10 (ReLU), Adam 1e-3, cross-entropy, MNIST's 60k training images,
reshuffled every epoch, last partial batch kept. In one process and one run, side by side:

- `zoo.train`: the library call (fused chunks of steps on device).
- `hand-fused scan`: a whole epoch as one `lax.scan` program written by hand.
- `jax.jit loop`: the lesson's loop, a `jax.jit` step on pure-function parameters, batches
  sliced on the host.
- `eqx.filter_jit loop`: the same loop over an Equinox model with `eqx.filter_jit`.
- `pytorch eager`: the same workload in PyTorch, run from `.bench-venv/` (Python 3.11 with the
  CPU build of torch, made on first use by `_torch_env.py`) as a subprocess; skipped with the
  reason when it cannot be had.

Each method runs `--epochs` epochs per round over `--rounds` rounds, the methods taking turns,
and reports the median epoch time excluding each round's first epoch (compilation). The FLOP
floor is the epoch's FLOPs over a matmul peak measured in the same run.

    uv run python benchmarks/train_epoch.py                      # batch 32, 128, 1024
    uv run python benchmarks/train_epoch.py --batch-sizes 128 --rounds 1
    uv run python benchmarks/train_epoch.py --methods zoo,fused   # the fused ratio alone

With `--precision`, instead: `zoo.train` in float32 and with `precision="bfloat16"` (and any
other of `--precisions`) side by side, rounds interleaved, each trained `--epochs` epochs from
the same key: median s/epoch (first epoch excluded) and the final MNIST test accuracy of each.

    uv run python benchmarks/train_epoch.py --precision --batch-sizes 128 --epochs 5
    uv run python benchmarks/train_epoch.py --precision --precisions float32,bfloat16,float16
"""

import argparse
import itertools
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

HERE = pathlib.Path(__file__).resolve().parent
SIZES = (784, 256, 128, 10)


def load_mnist(root: pathlib.Path | None, split: str = "train") -> dict:
    try:
        return zoo.data.mnist(split, root=root, download=False)
    except zoo.data.DatasetNotFoundError:
        print(f"MNIST {split} files not found: timing on random data of the same shape instead")
        rng = np.random.default_rng(0)
        count = 60_000 if split == "train" else 10_000
        return {
            "x": rng.random((count, 784), np.float32),
            "y": rng.integers(0, 10, count).astype(np.int32),
        }


def epoch_flops(n: int) -> float:
    """Forward matmuls 2*m*k*n per layer; backward twice that: 3x the forward in all."""
    forward = sum(2 * a * b for a, b in itertools.pairwise(SIZES)) * n
    return 3.0 * forward


def matmul_peak_flops(size: int = 2048, repeats: int = 10) -> float:
    a = jax.random.normal(jax.random.key(0), (size, size))
    matmul = jax.jit(jnp.dot)
    matmul(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times)


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def zoo_history(data, batch_size, epochs, **options):
    """The history of `zoo.train` on the workload, with any further `options`."""
    model = zoo.MLP(784, 10, SIZES[1:-1], key=jax.random.key(0))
    _, history = zoo.train(
        model,
        data,
        optimizer=optax.adam(1e-3),
        epochs=epochs,
        batch_size=batch_size,
        key=jax.random.key(1),
        callbacks=[],
        **options,
    )
    return history


def run_zoo_train(data, batch_size, epochs):
    return zoo_history(data, batch_size, epochs)["time"]


def run_zoo_precision(data, test, batch_size, epochs, precision):
    """`zoo.train` in `precision`: (seconds of each epoch, final test accuracy)."""
    history = zoo_history(
        data, batch_size, epochs, eval_data=test, metrics=("accuracy",), precision=precision
    )
    return history["time"], history["eval"]["accuracy"][-1]


def compare_precisions(data, test, batch_sizes, precisions, epochs, rounds) -> None:
    print(f"\nzoo.train in {', '.join(precisions)}: {epochs} epochs per run, {rounds} round(s)")
    print(f"  device: {jax.devices()[0].device_kind}")
    for batch_size in batch_sizes:
        times = {precision: [] for precision in ("float32", *precisions)}
        accuracy = {}
        for _ in range(rounds):
            for precision in times:
                seconds, accuracy[precision] = run_zoo_precision(
                    data, test, batch_size, epochs, precision
                )
                times[precision] += seconds[1:]
        base = statistics.median(times["float32"])
        print(f"\nbatch {batch_size}: median s/epoch, ratio to float32, final test accuracy")
        for precision, samples in times.items():
            seconds = statistics.median(samples)
            print(
                f"  {precision:9s} {seconds:7.3f} s   {seconds / base:5.2f}x   "
                f"accuracy {accuracy[precision]:.4f}"
            )
        for precision in list(times)[1:]:
            gap = 100 * (accuracy["float32"] - accuracy[precision])
            print(f"  float32 - {precision} accuracy = {gap:+.2f} points (target <= 0.3)")


def run_hand_fused(data, batch_size, epochs, *, records: bool = False):
    """One epoch = one jitted program: shuffle, a lax.scan over full batches, then the rest.

    With `records`, each step also computes what `zoo.train` records of it: the gradient's
    global norm (`optax.tree.norm`) and the sums of loss and norm that the epoch returns.
    """
    model = zoo.MLP(784, 10, SIZES[1:-1], key=jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_array)
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(params)
    x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
    n = x.shape[0]
    full = n // batch_size

    def step(params, opt_state, indices):
        def loss(params):
            return cross_entropy(jax.vmap(eqx.combine(params, static))(x[indices]), y[indices])

        value, grads = jax.value_and_grad(loss)(params)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        figures = jnp.stack([value, optax.tree.norm(grads)]) if records else jnp.zeros(2)
        return (optax.apply_updates(params, updates), opt_state), figures

    def epoch(params, opt_state, key):
        order = jax.random.permutation(key, n)
        batches = order[: full * batch_size].reshape(full, batch_size)
        (params, opt_state), figures = jax.lax.scan(
            lambda carry, idx: step(*carry, idx), (params, opt_state), batches
        )
        if n % batch_size:
            (params, opt_state), _ = step(params, opt_state, order[full * batch_size :])
        return params, opt_state, figures.sum(axis=0)

    epoch = jax.jit(epoch, donate_argnums=(0, 1))
    times = []
    for e in range(epochs):
        start = time.perf_counter()
        params, opt_state, figures = epoch(params, opt_state, jax.random.key(e))
        jax.block_until_ready((params, figures))
        times.append(time.perf_counter() - start)
    return times


def _host_batches(data, batch_size, rng):
    order = rng.permutation(len(data["y"]))
    for first in range(0, len(order), batch_size):
        indices = order[first : first + batch_size]
        yield data["x"][indices], data["y"][indices]


def run_jax_jit_loop(data, batch_size, epochs):
    """The lesson's loop: parameters as a list of (W, b), a jax.jit step, host-side batches."""
    keys = jax.random.split(jax.random.key(0), len(SIZES) - 1)
    params = [
        (jax.random.normal(k, (m, n)) * jnp.sqrt(2.0 / m), jnp.zeros(n))
        for k, m, n in zip(keys, SIZES[:-1], SIZES[1:], strict=True)
    ]
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(params)

    def predict(params, x):
        for w, b in params[:-1]:
            x = jax.nn.relu(x @ w + b)
        w, b = params[-1]
        return x @ w + b

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: cross_entropy(predict(p, x), y))(params)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return _timed_host_loop(step, params, opt_state, data, batch_size, epochs)


def run_filter_jit_loop(data, batch_size, epochs):
    """The same loop over an Equinox model with eqx.filter_jit."""
    model = zoo.MLP(784, 10, SIZES[1:-1], key=jax.random.key(0))
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, opt_state, x, y):
        loss, grads = eqx.filter_value_and_grad(lambda m: cross_entropy(jax.vmap(m)(x), y))(model)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    return _timed_host_loop(step, model, opt_state, data, batch_size, epochs)


def _timed_host_loop(step, params, opt_state, data, batch_size, epochs):
    rng = np.random.default_rng(0)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for x, y in _host_batches(data, batch_size, rng):
            params, opt_state, _ = step(params, opt_state, x, y)
        jax.block_until_ready(params)
        times.append(time.perf_counter() - start)
    return times


def run_torch(python: pathlib.Path | None, data_file, batch_size, epochs):
    if python is None:
        return None
    result = subprocess.run(
        [
            str(python),
            str(HERE / "_torch_train_epoch.py"),
            data_file,
            str(batch_size),
            str(epochs),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)["epoch_seconds"]


_METHODS = {
    "zoo": ("zoo.train", run_zoo_train),
    "fused": ("hand-fused scan", run_hand_fused),
    "fused_records": (
        "hand-fused + grad norm",
        lambda data, batch_size, epochs: run_hand_fused(data, batch_size, epochs, records=True),
    ),
    "jit": ("jax.jit loop", run_jax_jit_loop),
    "filter_jit": ("eqx.filter_jit loop", run_filter_jit_loop),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="32,128,1024")
    parser.add_argument("--epochs", type=int, default=4, help="per round, the first discarded")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--data-dir", type=pathlib.Path, default=HERE.parent.parent / "shared" / "data" / "mnist"
    )
    parser.add_argument(
        "--precision", action="store_true", help="compare float32 and --precisions instead"
    )
    parser.add_argument("--precisions", default="bfloat16", help="compared with float32")
    parser.add_argument(
        "--figure", type=pathlib.Path, help="also draw s/epoch to a PNG, its data beside it"
    )
    parser.add_argument(
        "--methods",
        default="all",
        help="a subset of zoo,fused,fused_records,jit,filter_jit,torch (zoo and fused always run)",
    )
    args = parser.parse_args()

    data = load_mnist(args.data_dir)
    if args.precision:
        test = load_mnist(args.data_dir, "test")
        batch_sizes = list(map(int, args.batch_sizes.split(",")))
        precisions = [p for p in args.precisions.split(",") if p != "float32"]
        compare_precisions(data, test, batch_sizes, precisions, args.epochs, args.rounds)
        return
    floor = epoch_flops(len(data["y"])) / matmul_peak_flops()
    print(
        f"FLOP floor: {epoch_flops(len(data['y'])) / 1e9:.1f} GFLOP per epoch at a measured "
        f"matmul peak of {epoch_flops(len(data['y'])) / floor / 1e9:.0f} GFLOP/s "
        f"= {floor:.3f} s/epoch"
    )
    chosen = set(args.methods.split(",")) if args.methods != "all" else set(_METHODS) | {"torch"}
    python, how = torch_python() if "torch" in chosen else (None, "PyTorch not asked for")
    print(how)
    methods = {
        name: run for key, (name, run) in _METHODS.items() if key in chosen | {"zoo", "fused"}
    }
    medians = {}
    with tempfile.TemporaryDirectory() as scratch:
        data_file = str(pathlib.Path(scratch) / "mnist.npz")
        np.savez(data_file, **data)
        for batch_size in map(int, args.batch_sizes.split(",")):
            samples = {name: [] for name in [*methods, "pytorch eager"]}
            for _ in range(args.rounds):
                for name, run in methods.items():
                    samples[name] += run(data, batch_size, args.epochs)[1:]
                torch_times = run_torch(python, data_file, batch_size, args.epochs)
                if torch_times:
                    samples["pytorch eager"] += torch_times[1:]
            medians[batch_size] = {k: statistics.median(v) for k, v in samples.items() if v}
            report(batch_size, medians[batch_size], floor)
    if args.figure:
        plot(medians, args.figure)


def plot(medians: dict[int, dict[str, float]], path: pathlib.Path) -> None:
    """Median s/epoch of each method, grouped by batch size, to a PNG and its JSON data."""
    import figures

    methods = list(dict.fromkeys(name for by_method in medians.values() for name in by_method))
    data = {
        "title": "One epoch of MLP 784-256-128-10 on MNIST (lower is faster)",
        "y_label": "seconds per epoch (median)",
        "batch_sizes": list(medians),
        "seconds": {name: [medians[b].get(name) for b in medians] for name in methods},
    }
    figures.save(path, "epoch_times", data, figures.this_command())


def report(batch_size: int, medians: dict[str, float], floor: float) -> None:
    zoo_time, fused = medians["zoo.train"], medians["hand-fused scan"]
    print(f"\nbatch {batch_size}: median s/epoch (ratio to zoo.train)")
    for name, seconds in medians.items():
        print(f"  {name:22s} {seconds:7.3f} s   {seconds / zoo_time:5.2f}x")
    print(f"  zoo.train / hand-fused scan = {zoo_time / fused:.2f} (target <= 1.05)")
    if "hand-fused + grad norm" in medians:
        # What zoo.train computes per step beyond the plain scan: the gradient norm it records.
        recorded = medians["hand-fused + grad norm"]
        print(f"  zoo.train / hand-fused + grad norm = {zoo_time / recorded:.2f}")
    if "pytorch eager" in medians:
        print(
            f"  pytorch eager / zoo.train   = {medians['pytorch eager'] / zoo_time:.2f} "
            "(target >= 2.5)"
        )
    print(f"  zoo.train / FLOP floor      = {zoo_time / floor:.2f} (target <= 2.0)")


if __name__ == "__main__":
    sys.exit(main())
