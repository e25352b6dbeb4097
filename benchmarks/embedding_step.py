"""Milliseconds per training step of an embedding table: zoo.sparse vs dense optax vs PyTorch.

A table of V x 64 float32 rows and a linear head train on batches of 4096 ids, with the step a
user would write (per-example model calls under `jax.vmap`, jitted, model and optimizer state
donated). Every configuration runs in its own subprocess, so that its peak RSS is its own.

    uv run python benchmarks/embedding_step.py                    # V in 1e4, 1e6, 1e7
    uv run python benchmarks/embedding_step.py --sizes 1e4,1e5    # a quick run

PyTorch (`nn.Embedding(sparse=True)`) runs from `.bench-venv/` when that exists (a Python 3.11
venv with the CPU build of torch; see `_torch_embedding_step.py`), and is skipped otherwise.
"""

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
TORCH_PYTHON = HERE.parent / ".bench-venv" / "bin" / "python"
DIM, BATCH = 64, 4096
ZOO = ("sgd", "rowwise_adagrad", "lazy_adam")
TORCH = {"sgd": "sgd", "rowwise_adagrad": "adagrad", "lazy_adam": "sparse_adam"}
DENSE_LIMIT = 1_000_000  # dense Adam at 1e7 needs three 2.5 GB tables and minutes per run


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def zoo_worker(optimizer: str, size: int, steps: int) -> dict:
    """One configuration, in this process: returns timings and memory."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    import zoo
    from _table_model import TableRegressor

    baseline = peak_rss_bytes()

    def loss_fn(model, batch):
        return jnp.mean((jax.vmap(model)(batch["ids"]) - batch["y"]) ** 2)

    if optimizer == "dense_adam":
        opt = optax.adam(1e-3)
        grad_fn, apply, params = eqx.filter_value_and_grad, eqx.apply_updates, eqx.filter
    else:
        embeddings = {
            "sgd": zoo.sparse.sgd(0.1),
            "rowwise_adagrad": zoo.sparse.rowwise_adagrad(0.05),
            "lazy_adam": zoo.sparse.lazy_adam(1e-3),
        }[optimizer]
        opt = zoo.sparse.partition(dense=optax.adam(1e-3), embeddings=embeddings)
        grad_fn, apply = zoo.sparse.value_and_grad, zoo.sparse.apply_updates
        params = lambda model, _: model  # noqa: E731

    def step(model, opt_state, batch):
        loss, grads = grad_fn(loss_fn)(model, batch)
        updates, opt_state = opt.update(grads, opt_state, model)
        return apply(model, updates), opt_state, loss

    # Built under jit so that initialisation makes no second copy of the table.
    model = eqx.filter_jit(TableRegressor)(size, DIM, jax.random.key(0))
    opt_state = eqx.filter_jit(lambda m: opt.init(params(m, eqx.is_inexact_array)))(model)
    step = jax.jit(step, donate_argnums=(0, 1))
    keys = jax.random.split(jax.random.key(1), 8)
    batches = [
        {"ids": jax.random.randint(k, (BATCH,), 0, size), "y": jax.random.normal(k, (BATCH,))}
        for k in keys
    ]
    times = []
    for i in range(steps + 3):  # 3 warm-up steps, the first compiles
        start = time.perf_counter()
        model, opt_state, loss = step(model, opt_state, batches[i % len(batches)])
        loss.block_until_ready()
        times.append(time.perf_counter() - start)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(opt_state))
    return {
        "ms": 1e3 * statistics.median(times[3:]),
        "peak_rss": peak_rss_bytes(),
        "baseline_rss": baseline,
        "table_and_state": model.table.weight.nbytes + state_bytes,
    }


# glibc's allocator asks the kernel for 2 MiB pages (where transparent huge pages are in
# "madvise" mode, as on Debian). Random rows of a table of GBs then miss the TLB far less.
HUGE_PAGES = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def run(args: list[str], python: str = sys.executable, env: dict | None = None) -> dict | str:
    """Run one configuration in a subprocess; its JSON result, or why it failed."""
    command = [python, *args]
    env = os.environ | (env or {})
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        return f"failed: {done.stderr.strip().splitlines()[-1:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(sizes: list[int], steps: int, env: dict) -> dict:
    results = {}
    torch_ok = TORCH_PYTHON.exists()
    if not torch_ok:
        print(f"PyTorch: skipped ({TORCH_PYTHON} not found; see _torch_embedding_step.py)")
    for size in sizes:
        for name in ("dense_adam", *ZOO):
            if name == "dense_adam" and size > DENSE_LIMIT:
                results[name, size] = f"skipped (V > {DENSE_LIMIT:.0e}: too big and slow)"
                continue
            script = [__file__, "--worker", name, "--size", str(size), "--steps", str(steps)]
            results[name, size] = run(script, env=env)
        for torch_name in TORCH.values():
            if torch_ok:
                script = [str(HERE / "_torch_embedding_step.py"), torch_name, str(size)]
                results[f"torch_{torch_name}", size] = run([*script, str(steps)], TORCH_PYTHON, env)
    return results


def report(results: dict, sizes: list[int]) -> None:
    names = ["dense_adam", *ZOO, *(f"torch_{t}" for t in TORCH.values())]
    print(f"\nms/step (median), V x {DIM} float32 table, batch {BATCH} ids")
    print(f"{'V':>10} " + " ".join(f"{n:>18}" for n in names))
    for size in sizes:
        cells = []
        for name in names:
            r = results.get((name, size), "-")
            cells.append(f"{r['ms']:18.2f}" if isinstance(r, dict) else f"{str(r)[:18]:>18}")
        print(f"{size:>10.0e} " + " ".join(cells))
    for (name, size), r in results.items():
        if isinstance(r, str) and r != "-":
            print(f"  {name} at V={size:.0e}: {r}")
    ms = {k: r["ms"] for k, r in results.items() if isinstance(r, dict)}
    small, large = min(sizes), max(sizes)
    print("\nTargets:")
    for name in ZOO:
        if (name, small) in ms and (name, large) in ms:
            ratio = ms[name, large] / ms[name, small]
            print(f"  zoo {name}: V={large:.0e} / V={small:.0e} = {ratio:.2f}x (target <= 1.5)")
    for name, torch_name in TORCH.items():
        target = "<= 1.0" if name == "sgd" else "<= 0.5"
        for size in sizes:
            if (name, size) in ms and (f"torch_{torch_name}", size) in ms:
                ratio = ms[name, size] / ms[f"torch_{torch_name}", size]
                print(f"  zoo {name} / torch {torch_name} at V={size:.0e}: {ratio:.2f}x ({target})")
    for size in sizes:
        for name in ZOO:
            if (name, size) in ms and ("dense_adam", size) in ms:
                speedup = ms["dense_adam", size] / ms[name, size]
                print(f"  dense Adam / zoo {name} at V={size:.0e}: {speedup:.0f}x (>= 200 at 1e6)")
    print("\nPeak RSS / (table + optimizer state) bytes (target <= 1.1 at V=1e7):")
    for (name, size), r in results.items():
        if isinstance(r, dict) and "table_and_state" in r:
            raw = r["peak_rss"] / r["table_and_state"]
            net = (r["peak_rss"] - r["baseline_rss"]) / r["table_and_state"]
            print(
                f"  {name:>18} V={size:.0e}: {raw:.2f}x "
                f"({net:.2f}x without the {r['baseline_rss'] / 2**20:.0f} MiB before the table)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e4,1e6,1e7", help="table sizes V, comma-separated")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per configuration")
    parser.add_argument("--plot", type=pathlib.Path, help="also draw ms/step against V to a PNG")
    parser.add_argument(
        "--huge-pages",
        action="store_true",
        help="run every configuration (zoo, dense and PyTorch alike) with " + str(HUGE_PAGES),
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(zoo_worker(args.worker, args.size, args.steps)))
        return
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    env = HUGE_PAGES if args.huge_pages else {}
    print(f"{os.cpu_count()} CPUs; {args.steps} timed steps per configuration; env {env}")
    results = measure(sizes, args.steps, env)
    report(results, sizes)
    if args.plot:
        plot(results, sizes, args.plot)


def plot(results: dict, sizes: list[int], path: pathlib.Path) -> None:
    """ms/step against table size, one line per method (log-log), to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2))
    for name in ["dense_adam", *ZOO, *(f"torch_{t}" for t in TORCH.values())]:
        points = [
            (v, results[name, v]["ms"]) for v in sizes if isinstance(results.get((name, v)), dict)
        ]
        if points:
            style = "--" if name.startswith("torch") else "-"
            axis.plot(*zip(*points, strict=True), style, marker="o", label=name)
    axis.set(
        xscale="log",
        yscale="log",
        xlabel="table rows V (x 64 float32)",
        ylabel="ms per step (batch 4096 ids)",
        title="Embedding training step",
    )
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
