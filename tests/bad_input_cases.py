"""The table of bad inputs across zoo's public API, each with the error a user gets and the fix.

`tests/test_bad_input.py` asserts every case; `docs/errors.md` is generated from this table by
running it (`uv run python tests/bad_input_cases.py`), and a test checks that page is current.
"""

import contextlib
import dataclasses
import decimal
import gzip
import io
import pathlib
import re
import sys
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import zoo
import zoo._cli

try:
    from .helpers import train
except ImportError:  # run as a script, to write docs/errors.md
    from helpers import train


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    area: str  # the public name the input goes to
    bad: str  # what is wrong, in the words of the docs page
    call: Callable[[pathlib.Path], Any]  # gets a fresh folder; must raise `error`
    error: type[BaseException] | tuple[type[BaseException], ...]
    message: str  # regex on the message: it names the argument and what was expected
    fix: str
    setup: Callable[[pathlib.Path], None] | None = None  # files the call needs, made first


def _mlp(in_size=4):
    return zoo.MLP(in_size, 3, (8,), key=jax.random.key(0))


def _classification(n=8, features=4):
    return {"x": np.zeros((n, features), np.float32), "y": np.zeros(n, np.int32)}


def _train(data=None, **kwargs):
    return lambda tmp: train(
        _mlp(), _classification() if data is None else data, progress=False, **kwargs
    )


def _sparse_step(loss, embeddings, ref_in_model=False):
    """One jitted `zoo.sparse.value_and_update` step of `loss` on a small table (whose weight
    is a `jax.Ref` with `ref_in_model`)."""
    table = zoo.Embedding(5, 2, key=jax.random.key(0))

    @jax.jit
    def step(table, state, ids):
        if ref_in_model:
            table = eqx.tree_at(lambda t: t.weight, table, jax.new_ref(table.weight))
        return zoo.sparse.value_and_update(loss, embeddings)(table, state, ids)

    return step(table, embeddings.init(table), jnp.array([1, 2]))


def _tied_loss(table, ids):
    return jnp.sum(table(ids)) + jnp.sum(table.weight.T)


def _sum_loss(table, ids):
    return jnp.sum(jax.vmap(table)(ids))


def _partition_update(gradient, optax_apply=False):
    """`zoo.sparse.partition`'s update of the gradient `gradient(table, ids)` (or, with
    `optax_apply`, `optax.apply_updates` of it), for a small table."""
    table, ids = zoo.Embedding(5, 2, key=jax.random.key(0)), jnp.array([1, 2])
    grads = gradient(table, ids)
    if optax_apply:
        return optax.apply_updates(table.weight, grads.weight)
    opt = zoo.sparse.partition(dense=optax.sgd(0.1), embeddings=zoo.sparse.sgd(0.1))
    return opt.update(grads, opt.init(table), table)


def _while_loss(table, ids):
    def body(carry):
        i, total = carry
        return i + 1, total + jnp.sum(table(ids[i]))

    return jax.lax.while_loop(lambda c: c[0] < ids.shape[0], body, (0, 0.0))[1]


def _cli(*args: str):
    """Runs the `zoo` command line; its exit carries the status and argparse's complaint."""

    def call(tmp: pathlib.Path) -> None:
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                zoo._cli.main(list(args))
        except SystemExit as exit:
            complaint = stderr.getvalue().strip().splitlines()[-1]
            raise SystemExit(f"exit status {exit.code}: {complaint}") from None

    return call


def _saved_mlp(tmp: pathlib.Path) -> None:
    zoo.save(tmp / "model", _mlp())


def _damaged_save(damage: Callable[[bytes], bytes]) -> Callable[[pathlib.Path], None]:
    """Setup: a save of a 2000 x 16 table whose largest array data file is then damaged."""

    def setup(tmp: pathlib.Path) -> None:
        zoo.save(tmp / "model", zoo.Embedding(2000, 16, key=jax.random.key(0)))
        arrays = next((tmp / "model").glob("arrays-*"))
        largest = max((p for p in arrays.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        largest.write_bytes(damage(largest.read_bytes()))

    return setup


def _flip_bytes(content: bytes) -> bytes:
    middle = len(content) // 2
    return (
        content[:middle]
        + bytes(b ^ 0xFF for b in content[middle : middle + 8])
        + content[middle + 8 :]
    )


def _trained_with_checkpoints(tmp: pathlib.Path) -> None:
    train(_mlp(), _classification(), epochs=1, checkpoint_dir=tmp / "run", progress=False)


# A training run in tmp/"run" (8 examples in batches of 4, key 1), and one resumed there.
_RUN = dict(batch_size=4, key=jax.random.key(1), progress=False)


def _run_folder(tmp: pathlib.Path) -> None:
    train(_mlp(), _classification(), checkpoint_dir=tmp / "run", **_RUN)


def _resumed(data=None, model=None, **changed):
    options = _RUN | dict(checkpoint_dir="run", resume=True) | changed
    return lambda tmp: train(
        _mlp() if model is None else model,
        _classification() if data is None else data,
        **(options | {"checkpoint_dir": tmp / options["checkpoint_dir"]}),
    )


def _write_ratings(tmp: pathlib.Path) -> None:
    (tmp / "ml-100k").mkdir()
    (tmp / "ml-100k" / "u.data").write_text("1\t2\t3\t881250949\n1\tx\t3\t881250949\n")


def _write_bytes(name: str, content: bytes):
    def setup(tmp: pathlib.Path) -> None:
        (tmp / name).write_bytes(content)

    return setup


def _nan_data():
    data = _classification()
    data["x"][5] = np.nan
    return data


def _sasrec():
    return zoo.SASRec(100, dim=8, num_blocks=1, max_len=50, key=jax.random.key(0))


def _one_event_per_user():
    arrays = {
        "user": np.arange(3, dtype=np.int32),
        "item": np.zeros(3, np.int32),
        "timestamp": np.zeros(3, np.int64),
    }
    return zoo.data.Interactions(arrays, user_ids=np.arange(3), item_ids=np.arange(1))


_TOO_LARGE_BATCH = ("train", "recommender", "--model", "mf", "--data", "synthetic:20x30")
_TOO_LARGE_BATCH += ("--batch-size", "100000", "--quiet")


def _embedding(**kwargs):
    return zoo.Embedding(10, 4, key=jax.random.key(0), **kwargs)


WIDE = 2**32 + 3  # an int64 id that JAX without x64 would silently wrap to 3
_INT32 = r"fit int32, in \[-2147483648, 2147483647\]; got 4294967299"


def _wide(values=(1, 2)) -> np.ndarray:
    return np.array([*values, WIDE], np.int64)


def _small_split():
    data = zoo.data.synthetic_interactions(20, 30, interactions_per_user=4, key=jax.random.key(0))
    return zoo.data.leave_last_out(data)


def _mf(train):
    return zoo.MatrixFactorization(train.num_users, train.num_items, key=jax.random.key(1))


def _nan_mf(train):
    model = _mf(train)
    return eqx.tree_at(
        lambda m: m.user_embedding.weight, model, model.user_embedding.weight * np.nan
    )


def _ratings(text: str):
    def setup(tmp: pathlib.Path) -> None:
        (tmp / "ml-100k").mkdir()
        (tmp / "ml-100k" / "u.data").write_text(text)

    return setup


def _evaluate_nan_model(tmp):
    model = jax.tree.map(lambda leaf: leaf * np.nan if eqx.is_array(leaf) else leaf, _mlp())
    return zoo.evaluate(model, _classification())


CASES: list[Case] = [
    # -- models -------------------------------------------------------------------------------
    Case(
        "mlp-feature-size",
        "zoo.MLP",
        "an example whose feature size does not match in_size",
        lambda tmp: _mlp(4)(jnp.ones(5)),
        ValueError,
        r"x must be one example of shape \(4,\)",
        "Pass one example of `in_size` features; batch with `jax.vmap(model)(xs)`.",
    ),
    Case(
        "mlp-in-size",
        "zoo.MLP",
        "in_size of 0",
        lambda tmp: zoo.MLP(0, 3, key=jax.random.key(0)),
        ValueError,
        "in_size must be a positive int; got 0",
        "Give the number of input features, e.g. `zoo.MLP(in_size=784, ...)`.",
    ),
    Case(
        "mlp-hidden",
        "zoo.MLP",
        "a hidden width of 0",
        lambda tmp: zoo.MLP(4, 3, (8, 0), key=jax.random.key(0)),
        ValueError,
        r"hidden must hold positive widths.*got \(8, 0\)",
        "Use positive widths, e.g. `(256, 128)`.",
    ),
    Case(
        "mlp-dropout",
        "zoo.MLP",
        "dropout of 1.5",
        lambda tmp: zoo.MLP(4, 3, dropout=1.5, key=jax.random.key(0)),
        ValueError,
        r"dropout must be a probability in \[0, 1\); got 1.5",
        "Use a rate in [0, 1).",
    ),
    Case(
        "mlp-activation",
        "zoo.MLP",
        "an unknown activation name",
        lambda tmp: zoo.MLP(4, 3, activation="swish2", key=jax.random.key(0)),
        ValueError,
        "activation must be a callable or one of 'relu'",
        "Use a listed name or a callable.",
    ),
    Case(
        "embedding-out-of-range",
        "zoo.Embedding",
        "an id >= num_embeddings",
        lambda tmp: _embedding()(jnp.array([3, 10])),
        ValueError,
        r"zoo\.Embedding\(10, 4\): ids must lie in \[0, num_embeddings\) = \[0, 10\); got ids "
        r"out of range, from 10 to 10",
        "Remap ids to 0..num_embeddings-1 (`zoo.data.movielens` does this).",
    ),
    Case(
        "embedding-negative",
        "zoo.Embedding",
        "a negative id",
        lambda tmp: _embedding()(jnp.array([-1])),
        ValueError,
        r"ids must lie in \[0, num_embeddings\) = \[0, 10\); got ids out of range, from -1",
        "Ids index rows from 0; reserve a row as `padding_idx` for missing values.",
    ),
    Case(
        "embedding-float-ids",
        "zoo.Embedding",
        "float ids",
        lambda tmp: _embedding()(jnp.array([1.0, 2.0])),
        TypeError,
        "ids",
        "Cast ids to an integer dtype: `ids.astype(jnp.int32)`.",
    ),
    Case(
        "embedding-out-of-range-jit",
        "zoo.Embedding",
        "an out-of-range id under `jax.jit`",
        lambda tmp: jax.block_until_ready(eqx.filter_jit(_embedding())(jnp.array([12]))),
        jax.errors.JaxRuntimeError,
        r"zoo\.Embedding\(10, 4\): ids must lie in \[0, num_embeddings\) = \[0, 10\); got ids "
        r"out of range, from 12 to 12",
        "Under jit the check raises when the step runs, whatever `EQX_ON_ERROR`, before any row "
        "is read; the last line of the message names the table and the ids.",
    ),
    Case(
        "embedding-padding-idx",
        "zoo.Embedding",
        "padding_idx outside the table",
        lambda tmp: _embedding(padding_idx=10),
        ValueError,
        r"padding_idx must be a valid id, 0 <= padding_idx < num_embeddings=10",
        "Use an id inside the table, e.g. `padding_idx=0`.",
    ),
    Case(
        "embedding-combiner",
        "zoo.Embedding",
        "an unknown combiner",
        lambda tmp: _embedding(combiner="max"),
        ValueError,
        'combiner must be None, "sum" or',
        'Use `combiner="sum"` or `"mean"`.',
    ),
    # -- training -----------------------------------------------------------------------------
    Case(
        "train-empty",
        "zoo.train",
        "an empty dataset `{}`",
        _train({}),
        ValueError,
        "data is empty",
        "Pass arrays such as `{'x': features, 'y': labels}`.",
    ),
    Case(
        "train-no-examples",
        "zoo.train",
        "arrays with no rows",
        _train(_classification(n=0)),
        ValueError,
        "data has no examples",
        "Check the loader or the split that produced the data.",
    ),
    Case(
        "train-lengths",
        "zoo.train",
        "features and labels of different lengths",
        _train({"x": np.zeros((8, 4), np.float32), "y": np.zeros(7, np.int32)}),
        ValueError,
        "data must hold arrays of equal length.*x=8, y=7",
        "Give one label per example.",
    ),
    Case(
        "train-ragged",
        "zoo.train",
        "a ragged array of rows (an object array)",
        _train(
            {"x": np.array([np.zeros(2), np.zeros(1)], dtype=object), "y": np.zeros(2, np.int32)}
        ),
        ValueError,
        r"data\['x'\] is ragged",
        "Pad the rows to one length (and use `padding_idx` for ids).",
    ),
    Case(
        "train-label-dtype",
        "zoo.train",
        "float labels with `loss='cross_entropy'`",
        _train({"x": np.zeros((8, 4), np.float32), "y": np.zeros(8, np.float32)}),
        TypeError,
        "cross_entropy needs integer class labels",
        "Cast labels: `y.astype(np.int32)`.",
    ),
    Case(
        "train-label-range",
        "zoo.train",
        "a label >= the number of classes",
        _train({"x": np.zeros((8, 4), np.float32), "y": np.full(8, 3, np.int32)}),
        ValueError,
        r"data\[.y.\] must hold class labels in \[0, 3\).*got labels from 3 to 3",
        "Remap labels to 0..classes-1, or give the model more outputs.",
    ),
    Case(
        "train-feature-size",
        "zoo.train",
        "data whose features do not match the model",
        _train(_classification(features=5)),
        ValueError,
        r"x must be one example of shape \(4,\)",
        "Build the model with `in_size` equal to the data's feature count.",
    ),
    Case(
        "train-batch-size",
        "zoo.train",
        "a negative batch size",
        _train(batch_size=-1),
        ValueError,
        "batch_size must be a positive int; got -1",
        "Use e.g. `batch_size=128`.",
    ),
    Case(
        "train-epochs",
        "zoo.train",
        "a negative epoch count",
        _train(epochs=-1),
        ValueError,
        "epochs must be an int >= 0; got -1",
        "Use e.g. `epochs=10`.",
    ),
    Case(
        "train-unknown-loss",
        "zoo.train",
        "an unknown loss name",
        _train(loss="hinge"),
        ValueError,
        "loss must be a callable.*'cross_entropy', 'mse', 'bce'",
        "Use a listed name, or any callable `loss(model, batch, key)`.",
    ),
    Case(
        "train-loss-signature",
        "zoo.train",
        "a loss that takes only the model",
        _train(loss=lambda model: 0.0),
        TypeError,
        r"loss must be callable as loss\(model, batch, key\), .* got <lambda> with signature",
        "Take `(model, batch)`, or `(model, batch, key)` for dropout or sampling.",
    ),
    Case(
        "train-unknown-metric",
        "zoo.train",
        "an unknown metric name",
        _train(metrics=["f1"]),
        ValueError,
        "metrics must name known metrics.*'accuracy'",
        "Use a listed name or a callable `metric(predictions, targets)`.",
    ),
    Case(
        "train-optimizer",
        "zoo.train",
        "a learning rate passed as the optimizer",
        _train(optimizer=0.01),
        TypeError,
        "optimizer must be an optax GradientTransformation|parameter .optimizer.",
        "Pass `optimizer=optax.adam(0.01)`.",
    ),
    Case(
        "train-learning-rate",
        "zoo.train",
        "a negative learning rate",
        _train(optimizer=optax.inject_hyperparams(optax.adam)(learning_rate=-1e-3)),
        ValueError,
        "learning rate must be positive and finite; got -0.001",
        "Use a positive learning rate such as 1e-3.",
    ),
    Case(
        "train-non-finite",
        "zoo.train",
        "a NaN in the data (the loss becomes NaN)",
        _train(_nan_data(), batch_size=4, optimizer=optax.sgd(0.1)),
        FloatingPointError,
        r"loss or the model became non-finite .* at step \d",
        "Lower the learning rate, clip gradients, or clean the data.",
    ),
    Case(
        "train-last-batch",
        "zoo.train",
        "an unknown last_batch mode",
        _train(last_batch="pad"),
        (ValueError, TypeError),
        "last_batch must be .keep. or .drop.|parameter .last_batch.",
        "Use 'keep' or 'drop'.",
    ),
    Case(
        "train-patience",
        "zoo.EarlyStopping",
        "a negative patience",
        lambda tmp: zoo.EarlyStopping("accuracy", patience=-1),
        ValueError,
        "patience must be >= 0.*got -1",
        "Use the number of epochs without improvement to wait, e.g. `patience=3`.",
    ),
    Case(
        "train-monitor",
        "zoo.train",
        "early stopping on a figure the evaluation does not produce",
        _train(eval_data=_classification(), callbacks=[zoo.EarlyStopping("mae")]),
        ValueError,
        "monitors 'mae', which the evaluation does not produce; it produces "
        "'loss', 'cross_entropy', 'accuracy'",
        "Monitor a name of `history['eval']`: a metric, or a key `eval_fn` returns.",
    ),
    Case(
        "train-monitor-no-eval",
        "zoo.train",
        "early stopping without any evaluation",
        _train(callbacks=[zoo.EarlyStopping("accuracy")]),
        ValueError,
        "monitors 'accuracy', but there is no evaluation",
        "Pass `eval_data`, `validation_split=0.1` or `eval_fn`.",
    ),
    Case(
        "train-validation-split",
        "zoo.train",
        "a validation_split outside (0, 1)",
        _train(validation_split=1.5),
        ValueError,
        r"validation_split must lie strictly between 0 and 1.*got 1.5",
        "Use the fraction to hold out, e.g. `validation_split=0.1`.",
    ),
    Case(
        "train-validation-split-empty",
        "zoo.train",
        "a validation_split that leaves no example to evaluate",
        _train(validation_split=0.01),
        ValueError,
        "validation_split=0.01 of 8 examples leaves the eval set empty",
        "Use a larger fraction, or more data.",
    ),
    Case(
        "train-precision",
        "zoo.train",
        "an unknown precision",
        _train(precision="float8"),
        ValueError,
        "precision must be one of 'float32', 'bfloat16', 'float16'; got 'float8'",
        "Use `precision='bfloat16'` for mixed precision.",
    ),
    Case(
        "train-accumulate",
        "zoo.train",
        "accumulate that does not divide the batch",
        _train(batch_size=8, accumulate=3),
        ValueError,
        "accumulate=3 must divide batch_size=8 into equal micro-batches",
        "Pick a batch size that the number of micro-batches divides.",
    ),
    Case(
        "train-monitor-direction",
        "zoo.EarlyStopping",
        "a monitored figure zoo does not define, without `mode`",
        lambda tmp: zoo.EarlyStopping("score"),
        ValueError,
        "EarlyStopping's mode is needed for monitor='score'",
        "Say which way is better: `mode='max'` for a score, `mode='min'` for a loss.",
    ),
    Case(
        "train-eval-fn-shadows",
        "zoo.train",
        "an `eval_fn` figure named like a built-in one",
        _train(eval_data=_classification(), eval_fn=lambda model: {"accuracy": 1.0}),
        ValueError,
        "eval_fn returns 'accuracy', which zoo.train already records",
        "Give your figure its own name, e.g. `{'my_accuracy': ...}`.",
    ),
    Case(
        "train-accumulate-in-batch",
        "zoo.train",
        "accumulate > 1 with a loss whose negatives come from the batch",
        lambda tmp: zoo.train(
            zoo.MatrixFactorization(5, 5, dim=2, key=jax.random.key(0)),
            {"user": np.arange(8) % 5, "item": np.arange(8) % 5},
            loss=zoo.recsys.in_batch_softmax_loss(),
            batch_size=8,
            loop=zoo.Loop(accumulate=2),
            callbacks=[],
        ),
        ValueError,
        "accumulate=2 cannot give this loss's step.*negatives_from_batch",
        "Use `accumulate=1` with the batch size that fits, or sampled negatives.",
    ),
    Case(
        "train-log-dir-taken",
        "zoo.Logger",
        "a `log_dir` that holds another run's logs",
        lambda tmp: _train(callbacks=[zoo.Logger(tmp / "logs")])(tmp),
        ValueError,
        "log_dir .*logs already holds the logs of another run",
        "Give each run its own folder, e.g. `zoo.Logger('runs/run-2')`.",
        setup=lambda tmp: _train(callbacks=[zoo.Logger(tmp / "logs")])(tmp),
    ),
    Case(
        "sparse-learning-rate",
        "zoo.sparse",
        "a sparse optimizer with learning rate 0",
        lambda tmp: zoo.sparse.rowwise_adagrad(0.0),
        ValueError,
        "learning_rate of zoo.sparse.rowwise_adagrad must be positive and finite; got 0.0",
        "Use a positive learning rate, e.g. `zoo.sparse.rowwise_adagrad(0.05)`.",
    ),
    Case(
        "sparse-ref-in-model",
        "zoo.sparse.value_and_update",
        "a model holding a jax.Ref",
        lambda tmp: _sparse_step(_tied_loss, zoo.sparse.sgd(0.1), ref_in_model=True),
        TypeError,
        r"holding a jax\.Ref at \.weight.*Pass the array instead",
        "Keep arrays in the model: zoo makes the refs inside the step (`jax.freeze` a ref first).",
    ),
    Case(
        "sparse-table-read-directly",
        "zoo.sparse.value_and_update",
        "a loss that reads a table as an array (weight tying)",
        lambda tmp: _sparse_step(_tied_loss, zoo.sparse.sgd(0.1)),
        AttributeError,
        r"embedding table model is read whole inside the loss",
        "Read rows (`model.items(ids)`, `weight[ids]`), or train what is read whole densely.",
    ),
    Case(
        "sparse-lookup-in-while-loop",
        "zoo.sparse.value_and_grad",
        "a lookup inside jax.lax.while_loop, with per-row state",
        lambda tmp: _sparse_step(_while_loss, zoo.sparse.rowwise_adagrad(0.1)),
        ValueError,
        r"inside jax\.lax\.while_loop.*jax\.lax\.scan",
        "Give the loop static bounds: `jax.lax.scan` or `fori_loop(0, n, ...)` with a Python int.",
    ),
    Case(
        "sparse-per-example-loss",
        "zoo.sparse.value_and_update",
        "a loss that is not a scalar (in-place SGD)",
        lambda tmp: _sparse_step(lambda t, ids: jax.vmap(t)(ids).sum(-1), zoo.sparse.sgd(0.1)),
        TypeError,
        r"fn must return a scalar floating loss",
        "Reduce the per-example losses: `jnp.mean(losses)`.",
    ),
    Case(
        "sparse-negative-schedule",
        "zoo.sparse",
        "a schedule that goes negative",
        lambda tmp: jax.block_until_ready(
            _sparse_step(_sum_loss, zoo.sparse.sgd(optax.constant_schedule(-0.5)))
        ),
        jax.errors.JaxRuntimeError,
        r"learning_rate of zoo\.sparse\.sgd: the schedule returned -0\.5 at a step",
        "A schedule must stay finite and >= 0, e.g. `optax.linear_schedule(0.1, 1e-4, 1000)`.",
    ),
    Case(
        "sparse-rows-negative-id",
        "zoo.sparse.SparseRows",
        "a negative row id",
        lambda tmp: zoo.sparse.SparseRows(jnp.array([2, -1]), jnp.ones((2, 3)), 5),
        ValueError,
        r"SparseRows: ids must lie in \[0, num_rows \+ 1\) = \[0, 6\); got ids out of range, "
        r"from -1 to -1",
        "Ids index rows from 0; `num_rows` itself marks an unused slot.",
    ),
    Case(
        "sparse-dense-table-gradient",
        "zoo.sparse.partition",
        "a table's gradient from eqx.filter_grad",
        lambda tmp: _partition_update(eqx.filter_grad(_sum_loss)),
        TypeError,
        r"dense gradient of the embedding table at grads\.weight",
        "Take gradients with `zoo.sparse.value_and_grad`.",
    ),
    Case(
        "sparse-multi-steps",
        "zoo.sparse.partition",
        "optax.MultiSteps inside the dense optimizer",
        lambda tmp: zoo.sparse.partition(
            dense=optax.chain(optax.MultiSteps(optax.adam(1e-3), 4).gradient_transformation()),
            embeddings=zoo.sparse.sgd(0.1),
        ).init(_embedding()),
        TypeError,
        r"dense must not be optax\.MultiSteps",
        "Take larger batches: a sparse step costs O(batch) whatever the table's size.",
    ),
    Case(
        "sparse-optax-apply-updates",
        "zoo.sparse.SparseRows",
        "sparse updates passed to optax.apply_updates",
        lambda tmp: _partition_update(
            lambda table, ids: zoo.sparse.value_and_grad(_sum_loss)(table, ids)[1], optax_apply=True
        ),
        TypeError,
        r"apply sparse updates with zoo\.sparse\.apply_updates",
        "Use `zoo.sparse.apply_updates(model, updates)`.",
    ),
    Case(
        "save-ref",
        "zoo.save",
        "a model holding a jax.Ref",
        lambda tmp: zoo.save(
            tmp / "model",
            eqx.tree_at(lambda t: t.weight, _embedding(), jax.new_ref(_embedding().weight)),
        ),
        TypeError,
        r"zoo\.save got a model holding a jax\.Ref at \.weight",
        "Save arrays: `jax.freeze(ref)` first.",
    ),
    Case(
        "evaluate-no-targets",
        "zoo.evaluate",
        "data without 'y'",
        lambda tmp: zoo.evaluate(_mlp(), {"x": np.zeros((2, 4), np.float32)}),
        ValueError,
        "data must hold inputs under 'x' and targets under 'y'",
        "Add the targets under 'y'.",
    ),
    # -- data ---------------------------------------------------------------------------------
    Case(
        "mnist-missing",
        "zoo.data.mnist",
        "no MNIST files and no download",
        lambda tmp: zoo.data.mnist("train", root=tmp / "mnist", download=False),
        zoo.data.DatasetNotFoundError,
        r"train-images-idx3-ubyte\.gz",
        "Put the four IDX files in the folder named, or set `ZOO_DATA_DIR`.",
    ),
    Case(
        "mnist-malformed",
        "zoo.data.mnist",
        "a truncated IDX file",
        lambda tmp: zoo.data.mnist("test", root=tmp, download=False),
        ValueError,
        r"t10k-images-idx3-ubyte\.gz",
        "Delete the file and download it again.",
        setup=lambda tmp: [
            _write_bytes(name, gzip.compress(content))(tmp)
            for name, content in [
                ("t10k-images-idx3-ubyte.gz", b"\x00\x00\x08\x03\x00\x00\x00\x02truncated"),
                ("t10k-labels-idx1-ubyte.gz", b"\x00\x00\x08\x01\x00\x00\x00\x02\x01\x02"),
            ]
        ],
    ),
    Case(
        "digits-split",
        "zoo.data.digits",
        "an unknown split",
        lambda tmp: zoo.data.digits("val"),
        ValueError,
        "split must be one of 'train', 'test', 'all'; got 'val'",
        "Use 'train', 'test' or 'all'.",
    ),
    # -- saving, loading and checkpoints ---------------------------------------------------------
    Case(
        "load-missing",
        "zoo.load",
        "a path with no save",
        lambda tmp: zoo.load(tmp / "nothing"),
        FileNotFoundError,
        r"no zoo save at .*nothing: the directory does not exist",
        "Check the path; `zoo.save(path, model)` makes one.",
    ),
    Case(
        "load-structure",
        "zoo.load",
        "a save of another architecture (like= differs)",
        lambda tmp: zoo.load(tmp / "model", like=zoo.MLP(5, 3, (8,), key=jax.random.key(0))),
        ValueError,
        r"does not match the model at \.layers\[0\]\.weight: saved float32\[8,4\], "
        r"expected float32\[8,5\]",
        "Load into a model built with the saved arguments, or load without `like=`.",
        setup=_saved_mlp,
    ),
    Case(
        "load-dtype",
        "zoo.load",
        "a save loaded into a model of another dtype",
        lambda tmp: zoo.load(
            tmp / "model", like=zoo.MLP(4, 3, (8,), dtype=jnp.float16, key=jax.random.key(0))
        ),
        ValueError,
        r"at \.layers\[0\]\.weight: saved float32\[8,4\], expected float16",
        "Load with the saved dtype, then cast: `jax.tree.map(lambda a: a.astype(...), model)`.",
        setup=_saved_mlp,
    ),
    Case(
        "load-corrupted",
        "zoo.load",
        "an array file with flipped bytes",
        lambda tmp: zoo.load(tmp / "model"),
        ValueError,
        r"is (corrupted|damaged)",
        "The checksum caught it: restore the save from a copy, or save the model again.",
        setup=_damaged_save(_flip_bytes),
    ),
    Case(
        "load-truncated",
        "zoo.load",
        "a truncated array file",
        lambda tmp: zoo.load(tmp / "model"),
        ValueError,
        r"is (corrupted|damaged)",
        "The file was cut short (a full disk, an interrupted copy): use another copy.",
        setup=_damaged_save(lambda content: content[: len(content) // 3]),
    ),
    Case(
        "save-exists",
        "zoo.save",
        "saving over an existing save",
        lambda tmp: zoo.save(tmp / "model", _mlp()),
        FileExistsError,
        r"already holds a save; pass overwrite=True",
        "Pass `overwrite=True` (the old save stays intact until the new one is complete).",
        setup=_saved_mlp,
    ),
    Case(
        "save-not-rebuildable",
        "zoo.save",
        "a zoo model changed after it was built: its arguments rebuild another",
        lambda tmp: zoo.save(
            tmp / "model", eqx.tree_at(lambda m: m.layers[0].bias, _mlp(), jnp.zeros(9))
        ),
        ValueError,
        r"refuses this zoo\.MLP: rebuilt from the arguments it was built with, "
        r"\.layers\[0\]\.bias would be float32\[8\], not float32\[9\]",
        "Build it with arguments that make it; or save `{'model': model}`, load with `like=`.",
    ),
    Case(
        "save-inexact-leaf",
        "zoo.save",
        "a leaf that a save cannot give back exactly (a Decimal)",
        lambda tmp: zoo.save(tmp / "model", {"weight": jnp.ones(2), "rate": decimal.Decimal(1)}),
        TypeError,
        r"model has a leaf that zoo\.save refuses: \['rate'\]=Decimal",
        "Make it a static field, an array, or a float.",
    ),
    Case(
        "resume-other-model",
        "zoo.train",
        "resume=True with a different model than the run's",
        lambda tmp: train(
            zoo.MLP(4, 3, (16,), key=jax.random.key(0)),
            _classification(),
            checkpoint_dir=tmp / "run",
            resume=True,
            progress=False,
        ),
        ValueError,
        r"does not match the model at .*layers\[0\]\.weight",
        "Resume with the model, optimizer and arguments of the first run.",
        setup=_trained_with_checkpoints,
    ),
    Case(
        "checkpoint-every",
        "zoo.Checkpointing",
        "`every` of 0 steps between checkpoints",
        lambda tmp: zoo.Checkpointing("unused", every=0),
        ValueError,
        "Checkpointing's every must be a positive int; got 0",
        "Use e.g. `zoo.Checkpointing('runs/x', every=1000)`.",
    ),
    # -- recommenders ---------------------------------------------------------------------------
    Case(
        "movielens-malformed",
        "zoo.data.movielens",
        "a malformed line in u.data",
        lambda tmp: zoo.data.movielens(tmp / "ml-100k"),
        ValueError,
        r"ml-100k/u\.data:2: expected integer user, item and timestamp",
        "Fix or drop the line the message names (file and line number).",
        setup=_write_ratings,
    ),
    Case(
        "movielens-missing",
        "zoo.data.movielens",
        "a folder that does not exist",
        lambda tmp: zoo.data.movielens(tmp / "ml-1m"),
        zoo.data.DatasetNotFoundError,
        r"MovieLens folder .*ml-1m does not exist",
        "Download MovieLens yourself (its licence forbids redistribution) and name the folder.",
    ),
    Case(
        "mf-size",
        "zoo.MatrixFactorization",
        "num_users of 0",
        lambda tmp: zoo.MatrixFactorization(0, 5, key=jax.random.key(0)),
        ValueError,
        "num_users must be a positive int; got 0",
        "Give the number of users (ids 0..n-1).",
    ),
    Case(
        "two-tower-similarity",
        "zoo.TwoTower",
        "an unknown similarity",
        lambda tmp: zoo.TwoTower(5, 5, similarity="l2", key=jax.random.key(0)),
        ValueError,
        'similarity must be "dot" or "cosine"; got \'l2\'',
        "Use 'dot' or 'cosine'.",
    ),
    Case(
        "sasrec-heads",
        "zoo.SASRec",
        "num_heads that does not divide dim",
        lambda tmp: zoo.SASRec(100, dim=64, num_heads=3, key=jax.random.key(0)),
        ValueError,
        "num_heads must divide dim; got num_heads=3, dim=64",
        "Pick `num_heads` among the divisors of `dim` (1, 2, 4, ... for 64).",
    ),
    Case(
        "sasrec-too-long",
        "zoo.SASRec",
        "a sequence longer than max_len",
        lambda tmp: _sasrec()(jnp.arange(60)),
        ValueError,
        r"sequence must be one user's items, of shape \(length,\) with 1 <= length <= "
        r"max_len=50; got shape \(60,\)",
        "Keep the latest `max_len` items (`zoo.data.sequences` does), or build a longer model.",
    ),
    Case(
        "sasrec-empty",
        "zoo.SASRec",
        "an empty sequence",
        lambda tmp: _sasrec()(jnp.zeros(0, jnp.int32)),
        ValueError,
        r"sequence must be one user's items.*got shape \(0,\)",
        "Score users with a history; `model.ranker(train)` gives users without one zero scores.",
    ),
    Case(
        "sasrec-out-of-range",
        "zoo.SASRec",
        "an item id above num_items (the padding id)",
        lambda tmp: _sasrec()(jnp.array([3, 101])),
        ValueError,
        r"sequence ids must lie in \[0, num_items\] = \[0, 100\] \(num_items is the padding "
        r"id\); got ids from 3 to 101",
        "Remap item ids to 0..num_items-1; pad with `num_items`.",
    ),
    Case(
        "sequences-no-history",
        "zoo.data.sequences",
        "interactions where no user has two events",
        lambda tmp: zoo.data.sequences(_one_event_per_user(), max_len=50),
        ValueError,
        "interactions must give some user at least two events",
        "Sequences need histories: check the split (e.g. `leave_last_out` of the full data).",
    ),
    Case(
        "sequences-max-len",
        "zoo.data.sequences",
        "max_len of 0",
        lambda tmp: zoo.data.sequences(_one_event_per_user(), max_len=0),
        ValueError,
        "max_len must be a positive int; got 0",
        "Use e.g. `max_len=50`.",
    ),
    Case(
        "sequence-loss-kind",
        "zoo.recsys.sequence_loss",
        "an unknown kind",
        lambda tmp: zoo.recsys.sequence_loss("bpr"),
        ValueError,
        "kind must be one of 'bce', 'softmax', 'sampled_softmax'; got 'bpr'",
        "Use one of the listed kinds.",
    ),
    Case(
        "sequence-loss-batch",
        "zoo.recsys.sequence_loss",
        "interactions instead of sequence rows",
        lambda tmp: zoo.recsys.sequence_loss("softmax")(
            _sasrec(), {"user": jnp.zeros(3, jnp.int32), "item": jnp.zeros(3, jnp.int32)}, None
        ),
        ValueError,
        r"sequence_loss needs batches of zoo.data.sequences rows \{'input': ..., 'target': ...\}",
        "Train on `zoo.data.sequences(train, max_len=50)`.",
    ),
    # -- command line ---------------------------------------------------------------------------
    Case(
        "cli-epochs",
        "zoo train mlp",
        "`--epochs 0`",
        _cli("train", "mlp", "--epochs", "0"),
        SystemExit,
        "exit status 2: .*argument --epochs: expected a positive integer, got '0'",
        "Pass a positive number of epochs.",
    ),
    Case(
        "cli-lr",
        "zoo train mlp",
        "`--lr -1`",
        _cli("train", "mlp", "--lr", "-1"),
        SystemExit,
        "exit status 2: .*argument --lr: expected a positive number, got '-1'",
        "Pass a positive learning rate such as `--lr 1e-3`.",
    ),
    Case(
        "cli-hidden",
        "zoo train mlp",
        "`--hidden 256,x`",
        _cli("train", "mlp", "--hidden", "256,x"),
        SystemExit,
        "exit status 2: .*argument --hidden: expected comma-separated positive widths",
        "Pass widths such as `--hidden 256,128`.",
    ),
    Case(
        "cli-dataset",
        "zoo train mlp",
        "`--dataset cifar`",
        _cli("train", "mlp", "--dataset", "cifar"),
        SystemExit,
        "exit status 2: .*argument --dataset: invalid choice: 'cifar'",
        "Use `digits` or `mnist`.",
    ),
    Case(
        "cli-model",
        "zoo train",
        "an unknown model",
        _cli("train", "resnet"),
        SystemExit,
        "exit status 2: .*invalid choice: 'resnet'",
        "See `zoo train --help` for the models.",
    ),
    Case(
        "cli-sasrec-loss",
        "zoo train recommender",
        "`--model sasrec --loss bpr`",
        _cli("train", "recommender", "--model", "sasrec", "--loss", "bpr"),
        SystemExit,
        "exit status 2: .*--loss bpr is not a sasrec loss; use softmax, bce or sampled-softmax",
        "Use `--loss softmax` (the default), `bce` or `sampled-softmax`.",
    ),
    # -- Ids, datasets, loaders and evaluation: never a wrapped id or an unearned figure. --
    Case(
        "embedding-wide-id",
        "zoo.Embedding",
        "an int64 id beyond int32 (JAX would wrap 2**32 + 3 to row 3)",
        lambda tmp: _embedding()(_wide()),
        ValueError,
        "ids must hold integers that " + _INT32,
        "Remap ids to 0..n-1 (`np.unique(ids, return_inverse=True)`).",
    ),
    Case(
        "sasrec-wide-id",
        "zoo.SASRec",
        "an int64 item id beyond int32 in a sequence",
        lambda tmp: _sasrec()(_wide()),
        ValueError,
        "sequence must hold integers that " + _INT32,
        "Remap item ids to 0..num_items-1; pad with `num_items`.",
    ),
    Case(
        "train-wide-column",
        "zoo.train",
        "an int64 column beyond int32 in data",
        _train({"x": np.zeros((3, 4), np.float32), "y": _wide()}),
        ValueError,
        r"data\['y'\] must hold integers that " + _INT32,
        "Remap labels or ids to 0..n-1 before training.",
    ),
    Case(
        "evaluate-wide-column",
        "zoo.evaluate",
        "an int64 column beyond int32 in data",
        lambda tmp: zoo.evaluate(_mlp(), {"x": np.zeros((3, 4), np.float32), "y": _wide()}),
        ValueError,
        r"data\['y'\] must hold integers that " + _INT32,
        "Remap labels to 0..n-1.",
    ),
    Case(
        "interactions-wide-id",
        "zoo.data.Interactions",
        "an int64 user index beyond int32",
        lambda tmp: zoo.data.Interactions(
            {"user": _wide(), "item": np.zeros(3, np.int32)},
            user_ids=np.arange(3),
            item_ids=np.arange(1),
        ),
        ValueError,
        r"Interactions\['user'\] must hold integers that " + _INT32,
        "Give indices 0..n-1, the raw ids as `user_ids` (`np.unique(raw, return_inverse=True)`).",
    ),
    Case(
        "sampler-wide-id",
        "zoo.recsys.NegativeSampler",
        "interactions with an int64 user beyond int32",
        lambda tmp: zoo.recsys.NegativeSampler(
            5, interactions={"user": _wide(), "item": np.zeros(3, np.int32)}, exclude_positives=True
        ),
        ValueError,
        r"interactions\['user'\] must hold integers that " + _INT32,
        "Sample for index users 0..n-1 (a `zoo.data.Interactions` has them).",
    ),
    Case(
        "ranking-metrics-wide-target",
        "zoo.recsys.ranking_metrics",
        "an int64 held-out item beyond int32",
        lambda tmp: zoo.recsys.ranking_metrics(jnp.zeros((3, 5)), _wide()[:, None]),
        ValueError,
        "targets must hold integers that " + _INT32,
        "Pass item indices in [0, num_items), padded with -1.",
    ),
    Case(
        "evaluate-ranking-wide-user",
        "zoo.recsys.evaluate_ranking",
        "an int64 test user beyond int32",
        lambda tmp: zoo.recsys.evaluate_ranking(
            _mf(_small_split()[0]),
            _small_split()[0],
            {"user": _wide(), "item": np.zeros(3, np.int32)},
        ),
        ValueError,
        r"test\['user'\] must hold integers that " + _INT32,
        "Evaluate on the splits of one `zoo.data.Interactions` (indices 0..n-1).",
    ),
    Case(
        "ranking-metrics-target-range",
        "zoo.recsys.ranking_metrics",
        "a held-out item outside the catalogue",
        lambda tmp: zoo.recsys.ranking_metrics(jnp.zeros((1, 5)), np.array([[7]])),
        ValueError,
        r"targets must be item ids in \[0, num_items\) = \[0, 5\), padded with -1; got 7",
        "Pad with -1, never with other out-of-range ids.",
    ),
    Case(
        "auc-labels",
        "zoo.recsys.auc",
        "labels other than 0 and 1",
        lambda tmp: zoo.recsys.auc(jnp.zeros(3), np.array([0, 1, 2])),
        ValueError,
        r"labels must be 1 \(or True\) for positives and 0 for negatives; got values \[0, 1, 2\]",
        "Binarise the labels, e.g. `clicked.astype(bool)`.",
    ),
    Case(
        "movielens-id-beyond-int64",
        "zoo.data.movielens",
        "an id beyond int64 in u.data",
        lambda tmp: zoo.data.movielens(tmp / "ml-100k"),
        ValueError,
        r"ml-100k/u\.data:2: user, item and timestamp must fit int64, at most "
        r"9223372036854775807",
        "Fix the line the message names; ids are read as exact integers.",
        setup=_ratings("1\t2\t3\t881250949\n1\t100000000000000000000\t3\t881250949\n"),
    ),
    Case(
        "movielens-float-id",
        "zoo.data.movielens",
        "an id written as a float (1e20) in u.data",
        lambda tmp: zoo.data.movielens(tmp / "ml-100k"),
        ValueError,
        r"ml-100k/u\.data:2: expected integer user, item and timestamp",
        "Write ids as decimal integers.",
        setup=_ratings("1\t2\t3\t881250949\n1\t1e20\t3\t881250949\n"),
    ),
    Case(
        "evaluate-non-finite-inputs",
        "zoo.evaluate",
        "a NaN in the inputs (an argmax of NaN would score class 0 as right)",
        lambda tmp: zoo.evaluate(_mlp(), _nan_data()),
        ValueError,
        r"data\['x'\] must be finite; 1 of 8 examples hold NaN or infinite inputs "
        r"\(the first at row 5\)",
        "Drop or fix the rows named; no metric is reported from NaN.",
    ),
    Case(
        "evaluate-non-finite-model",
        "zoo.evaluate",
        "a model whose predictions are NaN",
        _evaluate_nan_model,
        ValueError,
        r"model predictions on data must be finite; 8 of 8 examples",
        "Evaluate the last good model (a diverged run's parameters are NaN).",
    ),
    Case(
        "evaluate-ranking-non-finite",
        "zoo.recsys.evaluate_ranking",
        "a model whose scores are NaN",
        lambda tmp: zoo.recsys.evaluate_ranking(_nan_mf(_small_split()[0]), *_small_split()),
        ValueError,
        r"model scores must be finite; 20 of 20 users got NaN or infinite scores",
        "Evaluate the last good model; no figure is reported from NaN scores.",
    ),
    Case(
        "evaluate-sampled-too-many-negatives",
        "zoo.recsys.evaluate_sampled",
        "more negatives than a user has items left",
        lambda tmp: zoo.recsys.evaluate_sampled(
            _mf(_small_split()[0]), *_small_split(), num_negatives=100
        ),
        ValueError,
        r"num_negatives must be at most the items each test user has not interacted with; "
        r"got 100, but user \d+ has only \d+ of num_items=\d+ left",
        "Lower `num_negatives`, or use `evaluate_ranking` (the whole catalogue).",
    ),
    Case(
        "sampler-nothing-left",
        "zoo.recsys.NegativeSampler",
        "a user whose positives are the whole catalogue",
        lambda tmp: zoo.recsys.NegativeSampler(
            3,
            interactions={"user": np.zeros(3, np.int32), "item": np.arange(3)},
            exclude_positives=True,
        ),
        ValueError,
        r"interactions leave user 0 no item to sample as a negative: all num_items=3 items",
        "Drop such users, or sample with `exclude_positives=False`.",
    ),
    Case(
        "sampler-alpha",
        "zoo.recsys.NegativeSampler",
        "a negative popularity exponent (unseen items would get infinite weight)",
        lambda tmp: zoo.recsys.NegativeSampler(
            5,
            distribution="popularity",
            interactions={"user": np.zeros(2, np.int32), "item": np.arange(2)},
            alpha=-1.0,
        ),
        ValueError,
        r"alpha must be a finite float >= 0; got -1\.0",
        "Use `alpha` in [0, 1] (word2vec's 0.75).",
    ),
    Case(
        "two-tower-temperature",
        "zoo.TwoTower",
        "an infinite temperature (every score would be 0)",
        lambda tmp: zoo.TwoTower(5, 5, temperature=float("inf"), key=jax.random.key(0)),
        ValueError,
        r"temperature must be a finite float > 0; got inf",
        "Use about 0.05 to 0.2 for cosine, 1 for dot.",
    ),
    Case(
        "in-batch-batch-of-one",
        "zoo.recsys.in_batch_softmax_loss",
        "a batch of one interaction (no other row to compare with)",
        lambda tmp: zoo.recsys.in_batch_softmax_loss()(
            zoo.TwoTower(5, 5, key=jax.random.key(0)),
            {"user": jnp.zeros(1, jnp.int32), "item": jnp.zeros(1, jnp.int32)},
        ),
        ValueError,
        r"in_batch_softmax_loss needs batches of at least 2 interactions.*got a batch of 1",
        "Train with a larger `batch_size`, and `last_batch='drop'` if the last batch has one row.",
    ),
    Case(
        "in-batch-item-counts",
        "zoo.recsys.in_batch_softmax_loss",
        "negative item counts",
        lambda tmp: zoo.recsys.in_batch_softmax_loss(item_counts=np.array([3, -1, 2])),
        ValueError,
        r"item_counts must be finite counts >= 0, not all zero, one per item.*from -1 to 3",
        "Use `zoo.recsys.item_counts(train, train.num_items)`.",
    ),
    Case(
        "in-batch-item-counts-short",
        "zoo.recsys.in_batch_softmax_loss",
        "item counts for fewer items than the model has",
        lambda tmp: zoo.recsys.in_batch_softmax_loss(item_counts=np.ones(3))(
            zoo.TwoTower(5, 5, key=jax.random.key(0)),
            {"user": jnp.array([0, 1]), "item": jnp.array([1, 4])},
        ),
        ValueError,
        r"item_counts must hold one count per item of the model, 5; got 3",
        "Count over the whole catalogue: `zoo.recsys.item_counts(train, train.num_items)`.",
    ),
    Case(
        "sampler-popularity-no-items",
        "zoo.recsys.NegativeSampler",
        "popularity sampling from interactions with no item",
        lambda tmp: zoo.recsys.NegativeSampler(
            5,
            distribution="popularity",
            interactions={"user": np.zeros(0, np.int32), "item": np.zeros(0, np.int32)},
        ),
        ValueError,
        r"distribution='popularity' needs item counts that are not all zero",
        "Pass the training split, or use `distribution='uniform'`.",
    ),
    Case(
        "implicit-keeps-nothing",
        "zoo.data.implicit",
        "a threshold above every rating",
        lambda tmp: zoo.data.implicit(
            zoo.data.Interactions(
                {
                    "user": np.zeros(1, np.int32),
                    "item": np.zeros(1, np.int32),
                    "rating": np.array([3.0], np.float32),
                },
                user_ids=np.arange(1),
                item_ids=np.arange(1),
            ),
            threshold=6.0,
        ),
        ValueError,
        r"threshold must keep some events; got 6\.0, above every rating \(the highest is 3\.0\)",
        "Pick a threshold within the rating scale (4.0 for MovieLens' 1 to 5).",
    ),
    Case(
        "synthetic-signal",
        "zoo.data.synthetic_interactions",
        "an infinite signal (every probability would be NaN)",
        lambda tmp: zoo.data.synthetic_interactions(
            10, 30, signal=float("inf"), key=jax.random.key(0)
        ),
        ValueError,
        r"signal must be a finite float >= 0; got inf",
        "Use a finite `signal` such as the default 3.0.",
    ),
    #
    #
    # -- Training runs: validated before the first step, resumed only as the same run. --
    Case(
        "resume-batch-size",
        "zoo.train",
        "resume=True with another batch_size than the run's",
        _resumed(batch_size=2),
        ValueError,
        r"resume=True with batch_size=2, but the run in Checkpointing directory .* was started "
        r"with "
        r"batch_size=4 \(recorded 4, given 2\)",
        "Resume with the run's arguments (the message names them), or start a new run elsewhere.",
        setup=_run_folder,
    ),
    Case(
        "resume-data-size",
        "zoo.train",
        "resume=True with data of another size",
        _resumed(data=_classification(n=6)),
        ValueError,
        r"resume=True with data='6 examples'.* \(recorded '8 examples', given '6 examples'\)",
        "Resume on the run's data; a new dataset is a new run (another `zoo.Checkpointing` "
        "directory).",
        setup=_run_folder,
    ),
    Case(
        "resume-last-batch",
        "zoo.train",
        "resume=True with another last_batch",
        _resumed(last_batch="drop"),
        ValueError,
        r"resume=True with last_batch='drop'.*\(recorded 'keep', given 'drop'\)",
        "Resume with the run's `last_batch`.",
        setup=_run_folder,
    ),
    Case(
        "resume-accumulate",
        "zoo.train",
        "resume=True with another accumulate",
        _resumed(accumulate=2),
        ValueError,
        r"resume=True with accumulate=2.*\(recorded 1, given 2\)",
        "Resume with the run's `accumulate`.",
        setup=_run_folder,
    ),
    Case(
        "resume-precision",
        "zoo.train",
        "resume=True with another precision",
        _resumed(precision="bfloat16"),
        ValueError,
        r"resume=True with precision='bfloat16'.*\(recorded 'float32', given 'bfloat16'\)",
        "Resume with the run's `precision`.",
        setup=_run_folder,
    ),
    Case(
        "resume-loss",
        "zoo.train",
        "resume=True with another loss",
        _resumed(loss="mse"),
        ValueError,
        r"resume=True with loss='mse'.*\(recorded 'cross_entropy', given 'mse'\)",
        "Resume with the run's `loss`.",
        setup=_run_folder,
    ),
    Case(
        "resume-key",
        "zoo.train",
        "resume=True with another key",
        _resumed(key=jax.random.key(7)),
        ValueError,
        r"resume=True with key=\[0, 7\].*\(recorded \[0, 1\], given \[0, 7\]\)",
        "Resume with the run's `key` (its shuffles and dropout derive from it).",
        setup=_run_folder,
    ),
    Case(
        "resume-optimizer",
        "zoo.train",
        "resume=True with another optimizer (SGD for Adam)",
        _resumed(optimizer=optax.sgd(0.1)),
        ValueError,
        r"an optimizer whose state does not match the optimizer state at \[0\]\.count of the "
        r"run in Checkpointing directory .*: recorded int32\[\], given no array",
        "Resume with the run's optimizer.",
        setup=_run_folder,
    ),
    Case(
        "resume-save-folder",
        "zoo.train",
        "a `zoo.Checkpointing` directory pointing at a `zoo.save` folder",
        _resumed(checkpoint_dir="model"),
        ValueError,
        r"Checkpointing directory .*model is not a zoo training run: it holds .* and no "
        r"zoo-run\.json",
        "Give `zoo.Checkpointing` a new or empty folder; zoo writes nothing into this one.",
        setup=_saved_mlp,
    ),
    Case(
        "train-over-a-run",
        "zoo.train",
        "a new run (resume=False) in a folder that holds a run",
        _resumed(resume=False),
        ValueError,
        r"Checkpointing directory .*run already holds a training run \(checkpoints 2\): "
        r"pass resume=True",
        "Pass `resume=True` to continue it, or give the new run another folder.",
        setup=_run_folder,
    ),
    Case(
        "checkpoint-dir-file",
        "zoo.train",
        "`checkpoint_dir` that is a file",
        lambda tmp: _train(checkpoint_dir=tmp / "unused")(tmp),
        ValueError,
        r"Checkpointing directory must be a folder, but .*unused is a file",
        "Give a folder (new or empty) for the checkpoints.",
        setup=_write_bytes("unused", b"x"),
    ),
    Case(
        "checkpoints-directory-file",
        "zoo.Checkpoints",
        "a directory that is a file",
        lambda tmp: zoo.Checkpoints(tmp / "run"),
        ValueError,
        r"directory must be a folder for checkpoints; .*run is a file",
        "Give a folder (new or empty) for the checkpoints.",
        setup=_write_bytes("run", b"x"),
    ),
    Case(
        "train-eval-data-features",
        "zoo.train",
        "eval_data whose features do not match the model",
        _train(eval_data=_classification(features=5)),
        ValueError,
        r"eval_data does not fit the model and metrics .*x must be one example of shape \(4,\)",
        "Give eval_data the features of data (checked before the first step).",
    ),
    Case(
        "train-eval-data-no-labels",
        "zoo.train",
        "eval_data without targets under 'y'",
        _train(eval_data={"x": np.zeros((8, 4), np.float32)}),
        ValueError,
        r"eval_data must hold inputs under 'x' and targets under 'y' .* no 'y'",
        "Pass `eval_data={'x': features, 'y': labels}`.",
    ),
    Case(
        "train-generator-epochs",
        "zoo.train",
        "a generator of batches with epochs > 1",
        _train((batch for batch in [_classification()]), epochs=2),
        ValueError,
        r"data is a one-shot iterator \(generator\), which epochs=2 would exhaust.*re-iterable",
        "Pass a list of batches, or a class whose `__iter__` starts a new pass.",
    ),
    Case(
        "train-eval-fn-names",
        "zoo.train",
        "an eval_fn whose figures are not named by strings",
        _train(eval_fn=lambda model: {1: 0.5}),
        TypeError,
        r"eval_fn must return a mapping from names \(str\) to numbers; got 1: 0\.5",
        "Name each figure: `{'score': 0.5}`.",
    ),
    Case(
        "resume-model-dtype",
        "zoo.train",
        "resume=True with the model in another dtype",
        _resumed(model=zoo.MLP(4, 3, (8,), dtype=jnp.float16, key=jax.random.key(0))),
        ValueError,
        r"a model that does not match the model at \.layers\[0\]\.weight of the run in "
        r"Checkpointing directory .*: recorded float32\[8,4\], given float16\[8,4\]",
        "Resume with the model the run was started with (cast after training).",
        setup=_run_folder,
    ),
    Case(
        "train-eval-fn-nan",
        "zoo.train",
        "an eval_fn that returns nan",
        _train(eval_fn=lambda model: {"score": float("nan")}),
        ValueError,
        r"eval_fn returned 'score': nan, not a finite number",
        "Fix the evaluation; every recorded figure must be finite.",
    ),
    Case(
        "train-eval-fn-list",
        "zoo.train",
        "an eval_fn that returns a list",
        _train(eval_fn=lambda model: [0.5]),
        TypeError,
        r"eval_fn must return a mapping from names to numbers; got list",
        "Return a dict: `{'score': 0.5}`.",
    ),
    Case(
        "train-schedule-negative",
        "zoo.train",
        "a learning-rate schedule that turns negative",
        _train(
            optimizer=optax.inject_hyperparams(optax.sgd)(
                learning_rate=optax.linear_schedule(0.1, -0.1, transition_steps=1)
            ),
            epochs=2,
        ),
        ValueError,
        r"learning_rate: the optimizer's learning-rate schedule returned a negative or "
        r"non-finite value .* finite values >= 0",
        "End the schedule at a value >= 0 (0 is allowed: decay to zero).",
    ),
    Case(
        "resume-record-damaged",
        "zoo.train",
        "a run folder whose run record is damaged",
        _resumed(),
        ValueError,
        r"Checkpointing directory .*run: its run record zoo-run\.json cannot be read",
        "Restore the folder from a copy, or start a new run in another folder.",
        setup=lambda tmp: (_run_folder(tmp), (tmp / "run" / "zoo-run.json").write_text("{")),
    ),
    #
    # -- One rule for arguments: zoo's own errors, never JAX's, pathlib's or optax's. --
    # (In zoo's tests beartype may name a mistyped parameter first: `|parameter .name.`.)
    Case(
        "key-int-seed",
        "zoo.MLP",
        "an int seed as `key`",
        lambda tmp: zoo.MLP(4, 3, key=0),
        TypeError,
        r"key must be a PRNG key such as jax\.random\.key\(0\); got 0|parameter .key.",
        "Make a key from the seed: `key=jax.random.key(0)`.",
    ),
    Case(
        "train-key-int-seed",
        "zoo.train",
        "an int seed as `key`",
        _train(key=1),
        TypeError,
        r"key must be a PRNG key such as jax\.random\.key\(0\); got 1|parameter .key.",
        "Pass `key=jax.random.key(1)`.",
    ),
    Case(
        "sampler-int-key",
        "zoo.recsys.NegativeSampler",
        "an int seed as the sampler's `key`",
        lambda tmp: zoo.recsys.NegativeSampler(10)(0, jnp.zeros(3, jnp.int32), 2),
        TypeError,
        r"key must be a PRNG key such as jax\.random\.key\(0\); got 0|parameter .key.",
        "Pass a key: `sampler(jax.random.key(0), users, 4)`.",
    ),
    Case(
        "train-string-column",
        "zoo.train",
        "a column of strings in `data`",
        _train({"x": np.full((8, 4), "a"), "y": np.zeros(8, np.int32)}),
        TypeError,
        r"data\['x'\] must be a numeric array \(bool, int or float\); got an array of dtype <U1",
        "Convert the column to numbers first, e.g. `np.asarray(column, np.float32)`.",
    ),
    Case(
        "interactions-string-column",
        "zoo.data.Interactions",
        "user ids given as strings",
        lambda tmp: zoo.data.Interactions(
            {"user": np.array(["a", "b"]), "item": np.zeros(2, np.int32)},
            user_ids=np.arange(2),
            item_ids=np.arange(1),
        ),
        TypeError,
        r"Interactions\['user'\] must be a numeric array \(bool, int or float\)",
        "Map raw ids to indices first: `np.unique(raw, return_inverse=True)`.",
    ),
    Case(
        "mlp-integer-dtype",
        "zoo.MLP",
        "an integer `dtype`",
        lambda tmp: zoo.MLP(4, 3, dtype=jnp.int32, key=jax.random.key(0)),
        ValueError,
        r"dtype must be a floating dtype such as jnp\.float32 or jnp\.bfloat16; got 'int32'",
        "Use a floating dtype, e.g. `dtype=jnp.bfloat16`.",
    ),
    Case(
        "embedding-float-padding",
        "zoo.Embedding",
        "a float `padding_idx`",
        lambda tmp: _embedding(padding_idx=1.0),
        TypeError,
        r"padding_idx must be an int; got 1\.0|parameter .padding_idx.",
        "Give the id as an int: `padding_idx=0`.",
    ),
    Case(
        "load-none",
        "zoo.load",
        "`None` as the path",
        lambda tmp: zoo.load(None),
        TypeError,
        r"path must be a path \(a str or pathlib\.Path\); got None|parameter .path.",
        "Name the save's folder: `zoo.load('models/mlp')`.",
    ),
    Case(
        "save-swapped",
        "zoo.save",
        "the model and the path swapped",
        lambda tmp: zoo.save(_mlp(), tmp / "model"),
        TypeError,
        r"path must be a path \(a str or pathlib\.Path\); got a MLP: the path comes first"
        r"|parameter .path.",
        "The path comes first: `zoo.save(path, model)`.",
    ),
    Case(
        "save-no-arrays",
        "zoo.save",
        "`None` as the model",
        lambda tmp: zoo.save(tmp / "model", None),
        TypeError,
        r"model must be an equinox\.Module or pytree holding arrays; got None",
        "Pass the model: `zoo.save(path, model)`.",
    ),
    Case(
        "save-overwrite-int",
        "zoo.save",
        "`overwrite=1`",
        lambda tmp: zoo.save(tmp / "model", _mlp(), overwrite=1),
        TypeError,
        r"overwrite must be True or False; got 1|parameter .overwrite.",
        "Pass `overwrite=True`.",
    ),
    Case(
        "partition-swapped",
        "zoo.sparse.partition",
        "`dense` and `embeddings` swapped",
        lambda tmp: zoo.sparse.partition(dense=zoo.sparse.sgd(0.1), embeddings=optax.adam(1e-3)),
        TypeError,
        r"dense must be an optax optimizer such as optax\.adam\(1e-3\); got a zoo\.sparse "
        r"optimizer|parameter .dense.",
        "`dense=` takes the optax optimizer, `embeddings=` the zoo.sparse one.",
    ),
    Case(
        "sparse-dense-state",
        "zoo.sparse.value_and_update",
        "an optax optimizer's state with a sparse optimizer",
        lambda tmp: zoo.sparse.value_and_update(_tied_loss, zoo.sparse.sgd(0.1))(
            _embedding(), optax.adam(1e-3).init(_embedding()), jnp.array([1])
        ),
        TypeError,
        r"opt_state of zoo\.sparse\.sgd must be its SGDState, made by its init; got tuple"
        r"|parameter .state.",
        "Make the state with the same optimizer: `opt_state = opt.init(model)`.",
    ),
    Case(
        "train-numpy-bool-batch-size",
        "zoo.train",
        "`batch_size=np.bool_(True)`",
        _train(batch_size=np.bool_(True)),
        TypeError,
        r"batch_size must be a positive int; got np\.True_|parameter .batch_size.",
        "A bool is never a count; NumPy integers such as `np.int64(32)` are accepted.",
    ),
    Case(
        "sparse-nan-learning-rate",
        "zoo.sparse",
        "a NaN learning rate",
        lambda tmp: zoo.sparse.sgd(float("nan")),
        ValueError,
        "learning_rate of zoo.sparse.sgd must be positive and finite; got nan",
        "Use a positive learning rate, e.g. `zoo.sparse.sgd(0.05)`.",
    ),
    Case(
        "lazy-adam-b1",
        "zoo.sparse.lazy_adam",
        "`b1=1.0`",
        lambda tmp: zoo.sparse.lazy_adam(1e-3, b1=1.0),
        ValueError,
        r"b1 must be a finite float in \[0, 1\); got 1\.0",
        "Use a decay rate below 1, e.g. `b1=0.9`.",
    ),
    Case(
        "early-stopping-nan-delta",
        "zoo.EarlyStopping",
        "a NaN `min_delta`",
        lambda tmp: zoo.EarlyStopping("accuracy", min_delta=float("nan")),
        ValueError,
        r"EarlyStopping's min_delta must be a finite float >= 0; got nan",
        "Use a finite improvement threshold, e.g. `min_delta=0.001`.",
    ),
    Case(
        "checkpoints-directory-none",
        "zoo.Checkpoints",
        "`None` as the folder",
        lambda tmp: zoo.Checkpoints(None),
        TypeError,
        r"directory must be a path \(a str or pathlib\.Path\); got None|parameter .directory.",
        "Name the folder: `zoo.Checkpoints('runs/x')`.",
    ),
    Case(
        "train-log-dir-int",
        "zoo.train",
        "an int as `log_dir`",
        _train(log_dir=3),
        TypeError,
        r"log_dir must be a path \(a str or pathlib\.Path\); got 3|parameter .log_dir.",
        "Name the folder: `log_dir='runs/x'`.",
    ),
    Case(
        "movielens-root-none",
        "zoo.data.movielens",
        "`None` as the folder",
        lambda tmp: zoo.data.movielens(None),
        TypeError,
        r"root must be a path \(a str or pathlib\.Path\); got None|parameter .root.",
        "Name the unzipped folder: `zoo.data.movielens('~/data/ml-1m')`.",
    ),
    Case(
        "evaluate-not-a-model",
        "zoo.evaluate",
        "`None` as the model",
        lambda tmp: zoo.evaluate(None, _classification()),
        TypeError,
        r"model must be a model \(an equinox\.Module\) mapping one input x to a prediction; "
        r"got None|parameter .model.",
        "Pass the model first: `zoo.evaluate(model, data)`.",
    ),
    Case(
        "cli-out-file",
        "zoo train mlp",
        "`--out` naming a file",
        lambda tmp: _cli("train", "mlp", "--out", str(tmp / "taken"))(tmp),
        SystemExit,
        r"exit status 2: zoo: error: --out .*taken is a file, not a folder; name a folder",
        "Name a new or existing folder.",
        setup=_write_bytes("taken", b"a file"),
    ),
    Case(
        "cli-batch-size-too-large",
        "zoo train recommender",
        "`--batch-size` larger than the data",
        lambda tmp: _cli(*_TOO_LARGE_BATCH, "--out", str(tmp / "run"))(tmp),
        SystemExit,
        r"exit status 2: zoo: error: --batch-size 100000 exceeds the \d+ training examples",
        "Use at most the number of training examples the message gives.",
    ),
]


_MESSAGE_CHARS = 200  # the docs show the start of long messages (e.g. storage-layer details)


def message_line(case: Case, error: BaseException, tmp: pathlib.Path) -> str:
    """The line of the message that the case's pattern finds (errors raised under jit come
    wrapped in tracebacks), with the temporary folder's name replaced."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    matching = [line for line in lines if re.search(case.message, line)]
    line = (matching or lines or [""])[0].strip().replace(str(tmp), "<folder>")
    line = re.sub(r"arrays-[0-9a-f]{8,}", "arrays-<id>", line)  # a save's random token
    return line if len(line) <= _MESSAGE_CHARS else line[: _MESSAGE_CHARS - 1] + "…"


def render(messages: dict[str, str]) -> str:
    """The docs page: one row per case, with the message a user sees."""
    lines = [
        "# Errors and how to fix them",
        "",
        "Generated from `tests/bad_input_cases.py` (`uv run python tests/bad_input_cases.py`),",
        "the same table `tests/test_bad_input.py` asserts, so every message below is real.",
        "Messages are shown as a user sees them, without beartype; in zoo's own tests, where",
        "jaxtyping and beartype check annotations, a type mistake may be reported by them first.",
        "",
        "One rule for arguments holds at every public entry point (`zoo._checks`):",
        "",
        "- Python and NumPy scalars are alike: `np.int64(32)` is a batch size,",
        "  `np.float32(0.1)` a learning rate.",
        "- A bool is never a number (`batch_size=True` is refused), and `nan` or `inf` never a",
        "  valid one.",
        "- A wrong type is a `TypeError`, a wrong value a `ValueError`; the message names the",
        "  argument, what it expected and the value it got, and shows a right call.",
        "- A `key` is a PRNG key (`jax.random.key(0)`), never an int seed; paths are `str` or",
        "  `pathlib.Path`; a model's `dtype` is a floating dtype; data columns are numeric.",
        "- The command line says the same in one line, naming its flags (`--batch-size`, not",
        "  `batch_size`): exit status 2 for a flag's value, 1 for a run that failed, and no folder",
        "  left behind.",
        "",
        "| where | bad input | error | message (first line) | fix |",
        "| --- | --- | --- | --- | --- |",
    ]
    for case in CASES:
        error = case.error if isinstance(case.error, type) else case.error[0]
        message = messages[case.id].replace("|", "\\|")
        lines.append(
            f"| `{case.area}` | {case.bad} | `{error.__name__}` | {message} | {case.fix} |"
        )
    return "\n".join(lines) + "\n"


def prepare(case: Case, tmp: pathlib.Path) -> None:
    """Makes the files the case's call needs."""
    if case.setup is not None:
        case.setup(tmp)


def run_case(case: Case, tmp: pathlib.Path) -> BaseException:
    """Runs the case's call in `tmp` and returns the error it raised (or raises AssertionError)."""
    try:
        case.call(tmp)
    except case.error as error:
        return error
    raise AssertionError(f"{case.id}: no {case.error} raised")


def main() -> None:
    import tempfile

    messages = {}
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            prepare(case, pathlib.Path(tmp))
            error = run_case(case, pathlib.Path(tmp))
            messages[case.id] = message_line(case, error, pathlib.Path(tmp))
    page = render(messages)
    if "--check" in sys.argv:
        sys.stdout.write(page)
    else:
        path = pathlib.Path(__file__).resolve().parents[1] / "docs" / "errors.md"
        path.write_text(page)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
