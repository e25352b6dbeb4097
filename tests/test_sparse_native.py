"""zoo.sparse's native CPU kernels: the same results as the pure-JAX path, in place.

Each test runs a step on both paths (`ZOO_SPARSE_KERNELS=jax` and `=native`, read when a step is
traced) and compares them. The gathers and scatter-adds equal XLA's bit for bit: they add in the
order of the ids, as XLA's scatter does, and are compiled without fused multiply-adds; so the
in-place SGD step, and every step of a loss that looks each table up once, agree bit for bit.
Two things round differently, by a few float32 ulps: a table looked up at several places has
the gradients of its rows summed in another order (XLA reorders the sums of the lookups' scatters),
and the fused optimizer kernels (row-wise Adagrad, lazy Adam) round each element's update once
more or less than XLA, which fuses some multiply-adds of its own (and row-wise Adagrad sums
a row's squares in eight partial sums, vectorised).
"""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zoo
from zoo.sparse import _native

from .helpers import tree_allclose, tree_equal

requires_native = pytest.mark.skipif(
    _native._load()[0] is None or jax.default_backend() != "cpu",
    reason="zoo's native kernels are not built here, or the backend is not CPU",
)
pytestmark = requires_native

FUSED = ("rowwise_adagrad", "lazy_adam")  # one kernel updates the table and the state


def _agree(native, expected, name, *, one_lookup=False) -> bool:
    if name in FUSED or (name != "sgd" and not one_lookup):
        return tree_allclose(native, expected, rtol=1e-6, atol=1e-7)
    return tree_equal(native, expected)


OPTIMIZERS = {
    "sgd": lambda: zoo.sparse.sgd(0.1),
    "rowwise_adagrad": lambda: zoo.sparse.rowwise_adagrad(0.05),
    "adagrad": lambda: zoo.sparse.adagrad(0.05),
    "lazy_adam": lambda: zoo.sparse.lazy_adam(1e-2),
}


class _Scorer(eqx.Module):
    users: zoo.Embedding
    items: zoo.Embedding
    head: eqx.nn.Linear

    def __init__(self, key, dtype=jnp.float32):
        k1, k2, k3 = jax.random.split(key, 3)
        self.users = zoo.Embedding(30, 8, padding_idx=0, dtype=dtype, key=k1)
        self.items = zoo.Embedding(20, 8, combiner="sum", dtype=dtype, key=k2)
        self.head = eqx.nn.Linear(8, 1, dtype=dtype, key=k3)

    def __call__(self, user, items):
        return self.head(self.users(user) * self.items(items))[0]


def _vmapped(model, batch):
    scores = jax.vmap(model)(batch["user"], batch["items"])
    return jnp.mean((scores - batch["y"]) ** 2)


def _every_form(model, batch):
    """Lookups under vmap, on whole id arrays outside vmap, and inside lax.scan."""
    users, items = model.users(batch["user"]), model.items(batch["items"])
    whole = jax.vmap(model.head)(users * items)[:, 0]

    def body(total, example):
        user, items, y = example
        return total + (model(user, items) - y) ** 2, None

    examples = (batch["user"][:4], batch["items"][:4], batch["y"][:4])
    scanned, _ = jax.lax.scan(body, jnp.zeros(()), examples)
    return _vmapped(model, batch) + jnp.mean((whole - batch["y"]) ** 2) + scanned


def _batch(key, n=24):
    k1, k2, k3 = jax.random.split(key, 3)
    # Few distinct ids, so that every batch repeats ids; user 0 is the padding id.
    return {
        "user": jax.random.randint(k1, (n,), 0, 6),
        "items": jax.random.randint(k2, (n, 3), 0, 5),
        "y": jax.random.normal(k3, (n,)),
    }


def _steps_on(path, monkeypatch, model, optimizer, loss, batches):
    monkeypatch.setenv("ZOO_SPARSE_KERNELS", path)
    assert zoo.sparse.kernels().path == path
    step = jax.jit(zoo.sparse.value_and_update(loss, optimizer), donate_argnums=(0, 1))
    model, state = jax.tree.map(jnp.copy, (model, optimizer.init(model)))
    losses = []
    for batch in batches:
        value, model, state = step(model, state, batch)
        losses.append(value)
    return model, state, losses


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_native_and_jax_steps_agree(name, monkeypatch, getkey):
    model = _Scorer(getkey())
    optimizer = zoo.sparse.partition(dense=optax.sgd(1e-2), embeddings=OPTIMIZERS[name]())
    batches = [_batch(getkey()) for _ in range(2)]
    expected = _steps_on("jax", monkeypatch, model, optimizer, _every_form, batches)
    native = _steps_on("native", monkeypatch, model, optimizer, _every_form, batches)
    assert _agree(native, expected, name)
    # The padding row never moves; the looked-up rows do.
    trained = native[0]
    assert jnp.array_equal(trained.users.weight[0], model.users.weight[0])
    assert not jnp.array_equal(trained.items.weight, model.items.weight)


@pytest.mark.parametrize("name", ["adagrad", "lazy_adam"])
def test_native_and_jax_agree_for_float64_tables(name, monkeypatch, getkey):
    with jax.enable_x64(True):
        model = _Scorer(getkey(), dtype=jnp.float64)
        optimizer = zoo.sparse.partition(dense=optax.sgd(1e-2), embeddings=OPTIMIZERS[name]())
        batches = [_batch(getkey()) for _ in range(2)]
        expected = _steps_on("jax", monkeypatch, model, optimizer, _vmapped, batches)
        native = _steps_on("native", monkeypatch, model, optimizer, _vmapped, batches)
    assert _agree(native, expected, name, one_lookup=True)


@pytest.mark.parametrize("name", ["sgd", "rowwise_adagrad"])
def test_native_steps_under_a_scan_of_steps_agree(name, monkeypatch, getkey):
    # Many steps fused into one program, as zoo.train's chunks are.
    model = _Scorer(getkey())
    optimizer = zoo.sparse.partition(dense=optax.sgd(1e-2), embeddings=OPTIMIZERS[name]())
    batches = [_batch(getkey()) for _ in range(4)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)

    def run(path):
        monkeypatch.setenv("ZOO_SPARSE_KERNELS", path)

        @jax.jit
        def chunk(model, state, batches):
            def body(carry, batch):
                value, *carry = zoo.sparse.value_and_update(_vmapped, optimizer)(*carry, batch)
                return tuple(carry), value

            return jax.lax.scan(body, (model, state), batches)

        return chunk(model, optimizer.init(model), stacked)

    assert _agree(run("native"), run("jax"), name, one_lookup=True)


def test_native_lookups_under_vmap_of_the_whole_loss(monkeypatch, getkey):
    # Per-example losses under vmap, summed: a plain jax.vjp sees the batched lookup too.
    model = _Scorer(getkey())
    batch = _batch(getkey())

    def grads(path):
        monkeypatch.setenv("ZOO_SPARSE_KERNELS", path)
        per_example = lambda m, b: jax.vmap(lambda u, i, y: (m(u, i) - y) ** 2)(  # noqa: E731
            b["user"], b["items"], b["y"]
        )
        loss = lambda m, b: jnp.mean(per_example(m, b))  # noqa: E731
        return jax.jit(zoo.sparse.value_and_grad(loss))(model, batch)

    assert tree_equal(grads("native"), grads("jax"))


def _compiled_step(optimizer, model, batch):
    step = jax.jit(zoo.sparse.value_and_update(_vmapped, optimizer), donate_argnums=(0, 1))
    return step.lower(model, optimizer.init(model), batch).compile()


@pytest.mark.parametrize("name", ["sgd", "rowwise_adagrad", "lazy_adam"])
def test_the_native_step_runs_the_kernels_and_never_copies_a_table(name, monkeypatch, getkey):
    big = 100_003  # a size nothing else in the step has
    items = zoo.Embedding(big, 8, combiner="sum", key=getkey())
    model = eqx.tree_at(lambda m: m.items, _Scorer(getkey()), items)
    optimizer = zoo.sparse.partition(dense=optax.sgd(1e-2), embeddings=OPTIMIZERS[name]())
    monkeypatch.setenv("ZOO_SPARSE_KERNELS", "native")
    compiled = _compiled_step(optimizer, model, _batch(getkey()))
    hlo = compiled.as_text()
    targets = set(re.findall(r'custom_call_target="(zoo_\w+)"', hlo))
    # The rows' gather, and the kernel that writes the table in place.
    writes = {"sgd": "zoo_scatter_add_rows_scaled"}.get(name, f"zoo_{name}")
    assert {"zoo_gather_rows", writes} <= targets
    if name != "sgd":  # the coalesced path sorts the ids with the native radix sort
        assert {"zoo_sort_ids", "zoo_scatter_add_into_zeros"} <= targets
    table_sized = [line for line in hlo.splitlines() if f"[{big}" in line]
    assert not [line for line in table_sized if re.search(r"\b(copy|broadcast)\(", line)]
    assert compiled.memory_analysis().temp_size_in_bytes < big * 4


def test_out_of_range_ids_are_refused_on_the_native_path(monkeypatch, getkey):
    model = _Scorer(getkey())
    optimizer = zoo.sparse.partition(dense=optax.sgd(0.1), embeddings=zoo.sparse.sgd(0.1))
    batch = _batch(getkey()) | {"user": jnp.full((24,), 30)}
    monkeypatch.setenv("ZOO_SPARSE_KERNELS", "native")
    step = jax.jit(zoo.sparse.value_and_update(_vmapped, optimizer))
    with pytest.raises(Exception, match=r"ids must lie in \[0, num_embeddings\)"):
        jax.block_until_ready(step(model, optimizer.init(model), batch))


def test_zoo_train_resumed_on_the_native_path_equals_the_jax_path(tmp_path, monkeypatch, getkey):
    model, data, key = _Scorer(getkey()), _batch(getkey(), n=64), getkey()
    data = {k: np.asarray(v) for k, v in data.items()}
    optimizer = zoo.sparse.partition(
        dense=optax.sgd(1e-2), embeddings=zoo.sparse.rowwise_adagrad(0.1)
    )

    def loss(model, batch, key):
        del key
        return _vmapped(model, batch)

    def train(path, directory, epochs, resume):
        monkeypatch.setenv("ZOO_SPARSE_KERNELS", path)
        options = dict(loss=loss, optimizer=optimizer, batch_size=16, key=key, callbacks=[])
        checkpoint = zoo.Checkpointing(directory, resume=resume)
        return zoo.train(model, data, epochs=epochs, checkpoint=checkpoint, **options)[0]

    expected = train("jax", tmp_path / "jax", 2, False)
    train("native", tmp_path / "native", 1, False)  # a run stopped after its first epoch ...
    resumed = train("native", tmp_path / "native", 2, True)  # ... and resumed to the end
    assert _agree(resumed, expected, "rowwise_adagrad")
    # Resuming on the native path equals running through on it, bit for bit.
    assert tree_equal(resumed, train("native", tmp_path / "whole", 2, False))


@pytest.mark.parametrize("name", FUSED)
def test_zoo_train_step_runs_the_fused_kernels(name, monkeypatch, getkey):
    from zoo._training._step import initial_state, make_train_step, rule_for

    model = _Scorer(getkey())
    optimizer = zoo.sparse.partition(dense=optax.sgd(1e-2), embeddings=OPTIMIZERS[name]())

    def loss(model, batch, key):
        del key
        return _vmapped(model, batch)

    monkeypatch.setenv("ZOO_SPARSE_KERNELS", "native")
    step = make_train_step(loss, optimizer, rule_for(optimizer))
    state = initial_state(model, optimizer.init(model), getkey())
    hlo = jax.jit(step).lower(state, _batch(getkey())).compile().as_text()
    targets = set(re.findall(r'custom_call_target="(zoo_\w+)"', hlo))
    assert {"zoo_gather_rows", f"zoo_{name}", "zoo_sort_ids"} <= targets


def test_the_switch_is_checked_and_forces_a_path(monkeypatch):
    monkeypatch.setenv("ZOO_SPARSE_KERNELS", "fast")
    with pytest.raises(ValueError, match="ZOO_SPARSE_KERNELS"):
        zoo.sparse.kernels()
    monkeypatch.setenv("ZOO_SPARSE_KERNELS", "jax")
    assert zoo.sparse.kernels().path == "jax"
    assert "ZOO_SPARSE_KERNELS=jax" in zoo.sparse.kernels().reason
    monkeypatch.setenv("ZOO_SPARSE_KERNELS", "auto")
    assert zoo.sparse.kernels().path == "native"


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_the_gather_and_store_kernels_match_xla(dtype):
    table = jnp.arange(5 * 3, dtype=dtype).reshape(5, 3)
    ids = jnp.array([4, 0, 5, 4, -1], jnp.int32)  # out-of-range ids read zeros, are dropped
    expected = table.at[ids].get(mode="fill", fill_value=0, wrap_negative_indices=False)
    assert jnp.array_equal(_native.gather_rows(table, ids), expected)
    rows = -jnp.ones((5, 3), dtype)
    unique = jnp.array([4, 0, 5, 2, 7], jnp.int32)
    stored = _native.scatter_rows(table, unique, rows)
    assert jnp.array_equal(stored, table.at[unique].set(rows, mode="drop"))


@pytest.mark.parametrize("size", [0, 1, 7, 4096])
def test_the_sort_kernel_equals_xla_sort(size):
    # Negative ids and ids past 2^24 take the radix sort through its sign and high bytes.
    key = jax.random.key(size)
    ids = jax.random.randint(key, (size,), -(2**30), 2**30, jnp.int32)
    ids = jnp.concatenate([ids, ids[: size // 2]])  # repeats
    assert jnp.array_equal(jax.jit(_native.sort_ids)(ids), jnp.sort(ids))
    small = ids % 97  # one byte differs: the other passes are skipped
    assert jnp.array_equal(jax.jit(_native.sort_ids)(small), jnp.sort(small))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_the_scatter_into_zeros_kernel_equals_xla(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        rows = jax.random.normal(jax.random.key(0), (9, 4), dtype)
        ids = jnp.array([3, 0, 3, 5, 9, -1, 3, 0, 2], jnp.int32)  # repeats; 9 and -1 dropped
        got = _native.scatter_add_into_zeros((6, 4), ids, rows, 0.5)
        expected = (
            jnp.zeros((6, 4), dtype)
            .at[ids]
            .add(jnp.asarray(0.5, dtype) * rows, mode="drop", wrap_negative_indices=False)
        )
        assert got.dtype == dtype
        assert jnp.array_equal(got, expected)


def test_the_cli_says_which_path_its_sparse_steps_take(tmp_path, capsys):
    from zoo._cli import main

    args = ["train", "recommender", "--model", "mf", "--optimizer", "sparse-adagrad",
            "--data", "synthetic:40x30", "--dim", "4", "--epochs", "1",
            "--batch-size", "50", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    assert "zoo: sparse steps on zoo's native CPU kernels" in capsys.readouterr().out
