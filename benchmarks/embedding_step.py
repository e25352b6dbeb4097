"""Milliseconds per training step of an embedding table: zoo.sparse vs dense optax vs PyTorch.

A table of V x 64 float32 rows and a linear head train on batches of 4096 ids, with the step a
user would write (per-example model calls under `jax.vmap`, jitted, model and optimizer state
donated). Every configuration runs in its own subprocess, so that its peak RSS is its own.

    uv run python benchmarks/embedding_step.py                    # V in 1e4, 1e6, 1e7
    uv run python benchmarks/embedding_step.py --sizes 1e4,1e5    # a quick run
    uv run python benchmarks/embedding_step.py --plot docs/img/embedding_step.png  # + figure

PyTorch (`nn.Embedding(sparse=True)`) runs from `.bench-venv/`, a Python 3.11 venv with the CPU
build of torch that `_torch_env.py` makes on first use; where it cannot, the run says why and
goes on without PyTorch. `fbgemm_*` is the step torchrec users run, FBGEMM's table-batched
embedding (`fbgemm-gpu-cpu`, built for that torch, installed into the same venv on first use)
with its optimizer fused into the backward pass: `_fbgemm_embedding_step.py`. FBGEMM has no Adam
on CPU, and `fbgemm_lazy_adam` says so.

zoo's steps come two ways: `sgd`, `rowwise_adagrad`, `lazy_adam` through
`zoo.sparse.value_and_update` (SGD in place: the table's own `jax.Ref` receives `-lr * grad` in
the backward pass), `*_jnp_take` the same steps with the rows read by
`jnp.take(weight, ids, axis=0)` instead of the Embedding call, and `*_coalesced` through
`value_and_grad` + `update` + `apply_updates`.
They run on zoo's native CPU kernels where those are built (`zoo.sparse.kernels()`); `*_jax`
runs the same steps with `ZOO_SPARSE_KERNELS=jax`, XLA's own gather and scatter.

`limit_*` is the machine's limit for the table part of each optimizer's step: `_machine_limit.c`,
compiled here with the system C compiler, moves the rows and per-row state that optimizer must
read and write (4096 random rows of the same table), on one thread.

Beside them runs `jax_floor`: the least work any JAX step of this model can do, one gather of
the looked-up rows and one scatter-add of `-lr * grad` into the table, duplicates uncoalesced
(plain SGD, written by hand). Whatever zoo does on top, it cannot be faster than that, so the
floor shows which targets XLA itself puts out of reach on the machine at hand.

The machines these run on are shared and their speed drifts within minutes, so every size
runs its configurations in `--rounds` interleaved rounds, and each figure is the median of
the rounds' medians.
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

from _torch_env import fbgemm_python, torch_python

HERE = pathlib.Path(__file__).resolve().parent
DIM, BATCH = 64, 4096
# zoo's steps through `zoo.sparse.value_and_update`, the one call a user's step makes: SGD
# lands in the table's own ref during the backward pass; the others coalesce the ids.
ZOO = ("sgd", "rowwise_adagrad", "lazy_adam")
# The same optimizers through value_and_grad + update + apply_updates (coalesced, SparseRows).
COALESCED = tuple(f"{name}_coalesced" for name in ZOO)
FLOOR = "jax_floor"
SORTED_FLOOR = "jax_floor_sorted"  # the floor, with the ids sorted: see `floor_step`
LAZY_ADAM_BY_HAND = "jax_lazy_adam_by_hand"  # the least an exact lazy Adam step does
# zoo SGD in place with a loss that looks the whole id array up at once, outside `vmap`.
UNBATCHED = "sgd_unbatched_loss"
# zoo's one-call step with the rows read by `jnp.take(weight, ids, axis=0)` per example, in
# place of the Embedding call: zoo finds the take in a trace of the loss and reads the rows.
TAKEN = ("sgd_jnp_take", "rowwise_adagrad_jnp_take")
# The same steps with XLA's own gather and scatter (ZOO_SPARSE_KERNELS=jax).
PURE_JAX = tuple(f"{name}_jax" for name in ZOO)
LIMITS = tuple(f"limit_{name}" for name in ZOO)  # the machine's limit, _machine_limit.c
TORCH = {"sgd": "sgd", "rowwise_adagrad": "adagrad", "lazy_adam": "sparse_adam"}
FBGEMM = tuple(f"fbgemm_{name}" for name in ZOO)  # FBGEMM's optimizer of the same name
DENSE_LIMIT = 1_000_000  # dense Adam at 1e7 needs three 2.5 GB tables and minutes per run


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _rows_loss_and_grads(model, batch):
    """The loss of a hand-written step, and its gradients with respect to the looked-up rows
    (one per id, duplicates apart) and the head."""
    import jax
    import jax.numpy as jnp

    def loss_of_rows(rows, head):
        return jnp.mean((jax.vmap(head)(rows)[:, 0] - batch["y"]) ** 2)

    grad_fn = jax.value_and_grad(loss_of_rows, argnums=(0, 1))
    loss, (rows_grad, head_grad) = grad_fn(model.table.weight[batch["ids"]], model.head)
    return loss, rows_grad, head_grad


def floor_step(opt, *, sorted_ids: bool = False):
    """The least a JAX step of this model does: one gather, one scatter-add, no coalescing.

    Plain SGD on the table (duplicate ids add up in the scatter, which is exact for SGD) and
    `opt` on the head. `init` takes the model and gives `opt`'s state for the head.

    With `sorted_ids`, the ids are sorted first and the scatter told so: the least an exact
    step of an optimizer with per-row state adds to the floor, since it must sum each row's
    duplicate gradients before its non-linear update (a sort, or work of the table's size).
    """
    import equinox as eqx
    import jax.numpy as jnp

    def step(model, opt_state, batch):
        table, ids = model.table.weight, batch["ids"]
        loss, rows_grad, head_grad = _rows_loss_and_grads(model, batch)
        updates, opt_state = opt.update(head_grad, opt_state, model.head)
        if sorted_ids:
            order = jnp.argsort(ids)
            update = table.at[ids[order]].add(-0.1 * rows_grad[order], indices_are_sorted=True)
        else:
            update = table.at[ids].add(-0.1 * rows_grad)
        new = (update, eqx.apply_updates(model.head, updates))
        return eqx.tree_at(lambda m: (m.table.weight, m.head), model, new), opt_state, loss

    return step, lambda model: opt.init(model.head)


def lazy_adam_by_hand(opt, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """Lazy Adam on the table written by hand, the least an exact step of it does: the floor's
    gather and scatter, the ids sorted and each row's duplicates summed, and the moments of
    those rows (one complex array, as zoo keeps them) gathered and scattered. `opt` on the head.
    """
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    def init(model):
        moments = jnp.zeros(model.table.weight.shape, jnp.complex64)
        return opt.init(model.head), moments, jnp.zeros((), jnp.int32)

    def step(model, state, batch):
        head_state, moments, count = state
        table, ids = model.table.weight, batch["ids"]
        loss, rows_grad, head_grad = _rows_loss_and_grads(model, batch)
        updates, head_state = opt.update(head_grad, head_state, model.head)
        order = jnp.argsort(ids)
        sorted_ids, grads = ids[order], rows_grad[order]
        first = jnp.concatenate([jnp.ones((1,), bool), sorted_ids[1:] != sorted_ids[:-1]])
        segment = jnp.cumsum(first) - 1
        sums = jax.ops.segment_sum(grads, segment, ids.shape[0], indices_are_sorted=True)
        rows = jnp.full(ids.shape, table.shape[0]).at[segment].set(sorted_ids)
        old = moments.at[rows].get(mode="fill", fill_value=0)
        m = b1 * old.real + (1 - b1) * sums
        v = b2 * old.imag + (1 - b2) * sums**2
        count = count + 1
        t = count.astype(jnp.float32)
        step_size = lr * jnp.sqrt(1 - b2**t) / (1 - b1**t)
        moments = moments.at[rows].set(jax.lax.complex(m, v), mode="drop", unique_indices=True)
        delta = -step_size * m / (jnp.sqrt(v) + eps)
        table = table.at[rows].add(delta, mode="drop", unique_indices=True)
        new = (table, eqx.apply_updates(model.head, updates))
        model = eqx.tree_at(lambda m: (m.table.weight, m.head), model, new)
        return model, (head_state, moments, count), loss

    return step, init


def optimizer_step(optimizer: str):
    """`(step, init)` for dense optax Adam or a zoo sparse optimizer, as a user writes them."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    import zoo

    def loss_fn(model, batch):
        return jnp.mean((jax.vmap(model)(batch["ids"]) - batch["y"]) ** 2)

    if optimizer == UNBATCHED:  # the table called on the whole id array, outside vmap

        def loss_fn(model, batch):
            rows = model.table(batch["ids"])
            return jnp.mean((jax.vmap(model.head)(rows)[:, 0] - batch["y"]) ** 2)

        optimizer = "sgd"

    if optimizer in TAKEN:  # jnp.take of the table's rows instead of the Embedding call

        def loss_fn(model, batch):
            def score(i):
                return model.head(jnp.take(model.table.weight, i, axis=0))[0]

            return jnp.mean((jax.vmap(score)(batch["ids"]) - batch["y"]) ** 2)

        optimizer = optimizer.removesuffix("_jnp_take")

    if optimizer in (FLOOR, SORTED_FLOOR):
        return floor_step(optax.adam(1e-3), sorted_ids=optimizer == SORTED_FLOOR)
    if optimizer == LAZY_ADAM_BY_HAND:
        return lazy_adam_by_hand(optax.adam(1e-3))
    if optimizer == "dense_adam":
        opt = optax.adam(1e-3)
        grad_fn, apply = eqx.filter_value_and_grad, eqx.apply_updates
        init = lambda model: opt.init(eqx.filter(model, eqx.is_inexact_array))  # noqa: E731
    else:
        embeddings = {
            "sgd": zoo.sparse.sgd(0.1),
            "rowwise_adagrad": zoo.sparse.rowwise_adagrad(0.05),
            "lazy_adam": zoo.sparse.lazy_adam(1e-3),
        }[optimizer.removesuffix("_coalesced")]
        opt = zoo.sparse.partition(dense=optax.adam(1e-3), embeddings=embeddings)
        grad_fn, apply, init = zoo.sparse.value_and_grad, zoo.sparse.apply_updates, opt.init
        if optimizer in ZOO:

            def whole_step(model, opt_state, batch):
                loss, model, opt_state = zoo.sparse.value_and_update(loss_fn, opt)(
                    model, opt_state, batch
                )
                return model, opt_state, loss

            return whole_step, init

    def step(model, opt_state, batch):
        loss, grads = grad_fn(loss_fn)(model, batch)
        updates, opt_state = opt.update(grads, opt_state, model)
        return apply(model, updates), opt_state, loss

    return step, init


def zoo_worker(optimizer: str, size: int, steps: int) -> dict:
    """One configuration, in this process: returns timings and memory."""
    # Read when a step is traced: "_jax" names force XLA's gather and scatter.
    os.environ["ZOO_SPARSE_KERNELS"] = "jax" if optimizer in PURE_JAX else "auto"
    optimizer = optimizer.removesuffix("_jax")
    import equinox as eqx
    import jax

    import zoo
    from _table_model import TableRegressor

    baseline = peak_rss_bytes()
    step, init = optimizer_step(optimizer)
    # Built under jit so that initialisation makes no second copy of the table.
    model = eqx.filter_jit(TableRegressor)(size, DIM, jax.random.key(0))
    opt_state = eqx.filter_jit(init)(model)
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
        "kernels": zoo.sparse.kernels().path,
    }


def machine_limit() -> tuple[str | None, str]:
    """`(binary, how)`: `_machine_limit.c` compiled, or `None` and why not."""
    import shutil
    import tempfile

    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None, "machine limit skipped: no C compiler"
    binary = str(pathlib.Path(tempfile.mkdtemp()) / "machine_limit")
    # -ffast-math: a row's sum of squares may be reassociated and vectorised; a limit, not a
    # reference for the results.
    flags = ["-O3", "-march=native", "-ffast-math"]
    command = [compiler, *flags, str(HERE / "_machine_limit.c"), "-o", binary, "-lm"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return None, f"machine limit skipped: {done.stderr.strip()[-200:]}"
    return binary, f"machine limit: {' '.join(command)}"


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


def commands(
    size: int, steps: int, torch_python, limit=None, fbgemm=None
) -> dict[str, list[str] | str]:
    """Every configuration at one size: its command line, or why it is skipped."""
    configs = {}
    if limit is not None:
        for name in ZOO:
            configs[f"limit_{name}"] = [limit, name, str(size), str(steps)]
    zoo_steps = (*ZOO, *PURE_JAX, UNBATCHED, *TAKEN, *COALESCED)
    for name in ("dense_adam", FLOOR, SORTED_FLOOR, LAZY_ADAM_BY_HAND, *zoo_steps):
        if name == "dense_adam" and size > DENSE_LIMIT:
            configs[name] = f"skipped (V > {DENSE_LIMIT:.0e}: too big and slow)"
        else:
            configs[name] = [__file__, "--worker", name, "--size", str(size), "--steps", str(steps)]
    if torch_python is not None:
        for torch_name in TORCH.values():
            script = str(HERE / "_torch_embedding_step.py")
            configs[f"torch_{torch_name}"] = [script, torch_name, str(size), str(steps)]
    if fbgemm is not None:
        for name in ZOO:
            script = str(HERE / "_fbgemm_embedding_step.py")
            configs[f"fbgemm_{name}"] = [script, name, str(size), str(steps)]
    return configs


def combine(rounds: list[dict | str]) -> dict | str:
    """One figure from a configuration's rounds: the median time, the highest memory."""
    done = [r for r in rounds if isinstance(r, dict)]
    if not done:
        return rounds[0]
    return {
        "ms": statistics.median(r["ms"] for r in done),
        "ms_rounds": [r["ms"] for r in done],
        "peak_rss": max(r["peak_rss"] for r in done),
        "baseline_rss": min(r["baseline_rss"] for r in done),
        "table_and_state": done[0]["table_and_state"],
        "kernels": done[0].get("kernels"),
    }


def measure(sizes: list[int], steps: int, rounds: int, env: dict, only=None) -> dict:
    """`{(name, size): result}`, each size's configurations run in interleaved rounds;
    `only` names the configurations to run (default: all)."""
    wants_torch = only is None or any(name.startswith("torch_") for name in only)
    torch, how = torch_python() if wants_torch else (None, "PyTorch not asked for (--only)")
    wants_fbgemm = only is None or any(name.startswith("fbgemm_") for name in only)
    fbgemm, fbgemm_how = fbgemm_python() if wants_fbgemm else (None, "FBGEMM not asked for")
    limit, limit_how = machine_limit()
    print(how)
    print(fbgemm_how)
    print(limit_how)
    results = {}
    for size in sizes:
        configs = commands(size, steps, torch, limit, fbgemm)
        if only:
            configs = {name: command for name, command in configs.items() if name in only}
        runs = {name: [] for name in configs}
        for _ in range(rounds):
            for name, command in configs.items():
                if isinstance(command, str):
                    runs[name].append(command)
                else:
                    python = sys.executable
                    if name.startswith(("torch_", "fbgemm_")):
                        python = str(fbgemm if name.startswith("fbgemm_") else torch)
                    if name.startswith("limit_"):  # a compiled program, not a script
                        python, command = command[0], command[1:]
                    runs[name].append(run(command, python, env))
                print(f"  {name} V={size:.0e}: {_brief(runs[name][-1])}", flush=True)
        results |= {(name, size): combine(r) for name, r in runs.items()}
    return results


def _brief(result: dict | str) -> str:
    return f"{result['ms']:.2f} ms" if isinstance(result, dict) else result


TORCH_NAMES = [f"torch_{t}" for t in TORCH.values()]
NAMES = [
    "dense_adam",
    *LIMITS,
    FLOOR,
    SORTED_FLOOR,
    LAZY_ADAM_BY_HAND,
    *ZOO,
    *PURE_JAX,
    UNBATCHED,
    *TAKEN,
    *COALESCED,
    *TORCH_NAMES,
    *FBGEMM,
]


def report(results: dict, sizes: list[int]) -> None:
    ms = {k: r["ms"] for k, r in results.items() if isinstance(r, dict)}
    print_times(results, sizes)
    print_targets(ms, sizes)
    print_native_targets(results, ms, sizes)
    print_floor(ms, sizes)
    print_memory(results)


def print_times(results: dict, sizes: list[int]) -> None:
    print(f"\nms/step (median of rounds), V x {DIM} float32 table, batch {BATCH} ids")
    print(f"{'V':>10} " + " ".join(f"{n:>18}" for n in NAMES))
    for size in sizes:
        cells = []
        for name in NAMES:
            r = results.get((name, size), "-")
            cells.append(f"{r['ms']:18.2f}" if isinstance(r, dict) else f"{str(r)[:18]:>18}")
        print(f"{size:>10.0e} " + " ".join(cells))
    print("Each round's median ms/step:")
    for (name, size), r in results.items():
        if isinstance(r, dict):
            print(f"  {name:>18} V={size:.0e}: " + " ".join(f"{x:.2f}" for x in r["ms_rounds"]))
        elif r != "-":
            print(f"  {name} at V={size:.0e}: {r}")


def growth(ms: dict, name: str, sizes: list[int]) -> str | None:
    small, large = min(sizes), max(sizes)
    if (name, small) in ms and (name, large) in ms:
        return f"V={large:.0e} / V={small:.0e} = {ms[name, large] / ms[name, small]:.2f}x"
    return None


FLOOR_TARGETS = {"sgd": 1.1, "sgd_unbatched_loss": 1.1, "rowwise_adagrad": 1.5, "lazy_adam": 1.5}


def print_targets(ms: dict, sizes: list[int]) -> None:
    print("\nTargets against the floor, same run:")
    for size in sizes:
        for name in (*ZOO, UNBATCHED, *COALESCED):
            target = FLOOR_TARGETS[name.removesuffix("_coalesced")]
            if (name, size) in ms and (FLOOR, size) in ms:
                ratio = ms[name, size] / ms[FLOOR, size]
                verdict = "met" if ratio <= target else "missed"
                print(f"  zoo {name} / floor at V={size:.0e}: {ratio:.2f}x (<={target}: {verdict})")
        for name in TAKEN:
            call = name.removesuffix("_jnp_take")
            if (name, size) in ms and (call, size) in ms:
                ratio = ms[name, size] / ms[call, size]
                print(f"  zoo {name} / {call} (the Embedding call) at V={size:.0e}: {ratio:.2f}x")
        if (SORTED_FLOOR, size) in ms and (FLOOR, size) in ms:
            ratio = ms[SORTED_FLOOR, size] / ms[FLOOR, size]
            print(f"  {SORTED_FLOOR} / floor at V={size:.0e}: {ratio:.2f}x (what sorting costs)")
    print("\nTargets:")
    for name in ZOO:
        if ratio := growth(ms, name, sizes):
            print(f"  zoo {name}: {ratio} (target <= 1.5)")
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


def print_native_targets(results: dict, ms: dict, sizes: list[int]) -> None:
    """zoo's steps against the machine's limit, their pure-JAX selves and FBGEMM (where run)."""
    print("\nNative kernels, same run (targets: <= 2x the machine limit, >= 2x FBGEMM speed):")
    for size in sizes:
        for name in ZOO:
            if (name, size) not in ms:
                continue
            path = results[name, size].get("kernels")
            cells = [f"zoo {name} ({path}) at V={size:.0e}: {ms[name, size]:.2f} ms"]
            if (limit := ms.get((f"limit_{name}", size))) is not None:
                ratio = ms[name, size] / limit
                verdict = "met" if ratio <= 2 else "missed"
                cells.append(f"{ratio:.2f}x its limit {limit:.2f} ms (<= 2: {verdict})")
            if (pure := ms.get((f"{name}_jax", size))) is not None:
                cells.append(f"{pure / ms[name, size]:.2f}x faster than {name}_jax")
            if (fbgemm := ms.get((f"fbgemm_{name}", size))) is not None:
                speedup = fbgemm / ms[name, size]
                verdict = "met" if speedup >= 2 else "missed"
                cells.append(f"{speedup:.2f}x faster than FBGEMM {fbgemm:.2f} ms (>= 2: {verdict})")
            elif isinstance(why := results.get((f"fbgemm_{name}", size)), str):
                cells.append(f"no FBGEMM figure: {why}")
            print("  " + "; ".join(cells))


def print_floor(ms: dict, sizes: list[int]) -> None:
    """The same ratios for the floor: what no JAX step of this model can beat here."""
    print(f"\nThe floor ({FLOOR}: one gather, one scatter-add) and PyTorch's own growth:")
    for name in (FLOOR, *(f"torch_{t}" for t in TORCH.values())):
        if ratio := growth(ms, name, sizes):
            print(f"  {name}: {ratio}")
    pairs = [
        ("dense_adam", FLOOR),
        (FLOOR, "torch_sgd"),
        *((name, FLOOR) for name in ZOO),
        *((name, SORTED_FLOOR) for name in ZOO[1:]),
        (LAZY_ADAM_BY_HAND, FLOOR),
        ("lazy_adam", LAZY_ADAM_BY_HAND),
    ]
    for size in sizes:
        for a, b in pairs:
            if (a, size) in ms and (b, size) in ms:
                print(f"  {a} / {b} at V={size:.0e}: {ms[a, size] / ms[b, size]:.2f}x")


def print_memory(results: dict) -> None:
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
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per configuration")
    parser.add_argument("--plot", type=pathlib.Path, help="also draw ms/step against V to a PNG")
    parser.add_argument(
        "--huge-pages",
        action="store_true",
        help="run every configuration (zoo, dense and PyTorch alike) with " + str(HUGE_PAGES),
    )
    parser.add_argument("--only", help="configurations to run, comma-separated (default: all)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(zoo_worker(args.worker, args.size, args.steps)))
        return
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    env = HUGE_PAGES if args.huge_pages else {}
    print(f"{os.cpu_count()} CPUs; {args.rounds} rounds of {args.steps} timed steps; env {env}")
    only = args.only.split(",") if args.only else None
    results = measure(sizes, args.steps, args.rounds, env, only)
    report(results, sizes)
    if args.plot:
        plot(results, sizes, args.plot)


def plot(results: dict, sizes: list[int], path: pathlib.Path) -> None:
    """ms/step against table size, one line per configuration (log-log), to a PNG, with the
    figures in a JSON file beside it (benchmarks/figures.py redraws it from that)."""
    import figures

    series = {
        name: [results[name, v]["ms"] if isinstance(results.get((name, v)), dict) else None
               for v in sizes]
        for name in NAMES
    }  # fmt: skip
    data = {
        "title": f"Embedding training step, batch {BATCH} ids",
        "x_label": f"table rows V (x {DIM} float32)",
        "y_label": "ms per step (median of rounds)",
        "sizes": sizes,
        "series": {k: v for k, v in series.items() if any(x is not None for x in v)},
    }
    figures.save(path, "speed_by_table_size", data, figures.this_command())


if __name__ == "__main__":
    main()
