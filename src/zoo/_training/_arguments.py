"""`zoo.train`'s argument checks: every one runs before the first step, and names its argument."""

import math
from collections.abc import Iterator, Mapping

import equinox as eqx
import jax
import numpy as np

from .. import _checks
from ..losses._losses import batched_predictions
from ._dataset import inputs_not_finite
from ._early_stopping import EarlyStopping
from ._rules import DENSE, UpdateRule

_EXAMPLE = "zoo.train(model, data, epochs=10, batch_size=128)"


def check_hyperparameters(
    epochs, batch_size, eval_batch_size, last_batch, steps_per_chunk, on_nonfinite
) -> tuple[int, int, int, int | None]:
    """Checks the loop's counts and modes; returns the counts as Python ints (a NumPy scalar
    such as `np.int64(32)` is accepted, and recorded as the int it is)."""
    epochs = _checks.integer("epochs", epochs, minimum=0, example=_EXAMPLE)
    batch_size = _checks.positive_int("batch_size", batch_size, example=_EXAMPLE)
    eval_batch_size = _checks.positive_int(
        "eval_batch_size", eval_batch_size, example="zoo.train(..., eval_batch_size=1024)"
    )
    steps_per_chunk = _checks.optional_positive_int(
        "steps_per_chunk", steps_per_chunk, example="zoo.train(..., steps_per_chunk=100)"
    )
    _checks.one_of(
        "last_batch", last_batch, ("keep", "drop"), example="zoo.train(..., last_batch='drop')"
    )
    _checks.one_of(
        "on_nonfinite",
        on_nonfinite,
        ("raise", "skip"),
        example="zoo.train(..., on_nonfinite='skip')",
    )
    return epochs, batch_size, eval_batch_size, steps_per_chunk


def check_model(model) -> None:
    """A model with no floating array has nothing to train (`None`, data passed as the model)."""
    if not isinstance(model, eqx.Module) or not jax.tree.leaves(
        eqx.filter(model, eqx.is_inexact_array)
    ):
        raise TypeError(
            f"model must be an equinox.Module holding floating arrays to train; got "
            f"{_checks.describe(model)}. For example: zoo.train(zoo.MLP(64, 10, "
            "key=jax.random.key(0)), data)"
        )


def check_flags(**flags) -> None:
    """Each flag is `True` or `False`; `fused` and `progress` may also be `None` (decide)."""
    for name, value in flags.items():
        if value is not None or name not in ("fused", "progress"):
            _checks.boolean(name, value, example=f"zoo.train(..., {name}=True)")


def training_key(key):
    """The key of the run: `key`, checked, or `jax.random.key(0)` when it is `None`."""
    if key is None:
        return jax.random.key(0)
    return _checks.key("key", key, example="zoo.train(model, data, key=jax.random.key(0))")


def check_checkpointing(
    checkpoint_dir, checkpoint_every, keep, resume
) -> tuple[int | None, int | None]:
    """Checks the checkpointing arguments; returns `checkpoint_every` and `keep` as ints."""
    example = "zoo.train(..., checkpoint_dir='runs/x', checkpoint_every=500, resume=True)"
    if checkpoint_dir is not None:
        directory = _checks.path("checkpoint_dir", checkpoint_dir, example=example)
        if directory.exists() and not directory.is_dir():
            raise ValueError(
                f"checkpoint_dir must be a folder, but {checkpoint_dir} is a file. Pass a new or "
                f"empty folder for the checkpoints: {example}"
            )
    checkpoint_every = _checks.optional_positive_int(
        "checkpoint_every", checkpoint_every, example=example
    )
    keep = _checks.optional_positive_int(
        "keep", keep, example="zoo.train(..., checkpoint_dir='runs/x', keep=3)"
    )
    _checks.boolean("resume", resume, example=example)
    if checkpoint_every is not None and checkpoint_dir is None:
        raise ValueError(f"checkpoint_every needs checkpoint_dir: where should they go? {example}")
    if resume and checkpoint_dir is None:
        raise ValueError(
            "resume=True needs checkpoint_dir, the folder of the run to continue: "
            "zoo.train(..., checkpoint_dir='runs/x', resume=True)."
        )
    return checkpoint_every, keep


def check_optimizer(optimizer) -> None:
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise TypeError(
            "optimizer must be an optax GradientTransformation such as optax.adam(1e-3) (or a "
            f"zoo.sparse optimizer); got {optimizer!r}."
        )


def check_learning_rate(learning_rate: float | None) -> None:
    if learning_rate is not None and not 0 < learning_rate < float("inf"):
        raise ValueError(
            f"the optimizer's learning rate must be positive and finite; got {learning_rate:.6g}. "
            "For example optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)."
        )


def check_early_stopping(early_stopping) -> None:
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise TypeError(
            "early_stopping must be a zoo.EarlyStopping, such as "
            f"zoo.EarlyStopping(monitor='accuracy', patience=3); got {early_stopping!r}."
        )


def check_monitored_name(model, early_stopping, eval_arrays, metric_names, eval_fn) -> None:
    """The monitored figure is one the per-epoch evaluation records, known before training.

    `eval_fn`'s names are known only by calling it: it runs once on the untrained model, and
    only when the monitored name is not among the metrics.
    """
    if early_stopping is None:
        return
    names = metric_names if eval_arrays is not None else []
    if early_stopping.monitor not in names and eval_fn is not None:
        names = [*names, *eval_fn(model)]
    early_stopping.check_monitor(names)


def check_precision_for(rule: UpdateRule, precision: str) -> None:
    if precision != "float32" and rule is not DENSE:
        raise ValueError(
            f"precision={precision!r} does not work with zoo.sparse optimizers yet (their "
            "embedding lookups read the float32 tables); use precision='float32' with them."
        )


def check_callbacks(on_epoch, eval_fn) -> None:
    for name, callback, example in (
        ("on_epoch", on_epoch, "on_epoch=lambda history: print(history['train']['loss'][-1])"),
        ("eval_fn", eval_fn, "eval_fn=lambda model: {'score': float(score(model))}"),
    ):
        if callback is not None and not callable(callback):
            raise TypeError(
                f"{name} must be callable or None; got {callback!r}. For example {example}"
            )


def check_reiterable(data, epochs: int) -> None:
    """An iterator (a generator, say) is spent after one pass: refused for several epochs now,
    rather than found empty after the first epoch has trained."""
    if isinstance(data, Iterator) and epochs > 1:
        raise ValueError(
            f"data is a one-shot iterator ({type(data).__name__}), which epochs={epochs} would "
            "exhaust after epoch 1 (a generator can be iterated only once): pass a list of "
            "batches, or an object whose __iter__ starts a new pass each epoch (data must be "
            "re-iterable when epochs > 1)."
        )


def check_eval_data_fits(model: eqx.Module, eval_arrays: dict | None, metrics: dict) -> None:
    """The per-epoch evaluation traced once on one example of `eval_data`, before training, so
    that a wrong shape or a missing array is an error naming `eval_data`, not one after an
    epoch has trained."""
    if eval_arrays is None or not metrics:
        return
    for field in ("x", "y"):
        if field not in eval_arrays:
            raise ValueError(
                f"eval_data must hold inputs under 'x' and targets under 'y' for the metrics "
                f"{list(metrics)}; it has {sorted(eval_arrays)} and no {field!r}. For example "
                "eval_data={'x': test_features, 'y': test_labels}."
            )

    def figures(model, x, y):
        predictions = batched_predictions(model, x, None)
        return [fn(predictions, y) for fn in metrics.values()]

    try:
        eqx.filter_eval_shape(figures, model, eval_arrays["x"][:1], eval_arrays["y"][:1])
    except Exception as error:
        raise ValueError(
            f"eval_data does not fit the model and metrics {list(metrics)}: {error}"
        ) from error
    _check_finite_inputs(eval_arrays["x"])


def _check_finite_inputs(x) -> None:
    """Non-finite eval inputs would stop the run after its first epoch: refused before it."""
    if not np.issubdtype(x.dtype, np.inexact):
        return
    finite = np.isfinite(np.asarray(x)).reshape(len(x), -1).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise inputs_not_finite("eval_data", len(bad), len(x), int(bad[0]))


def checked_eval_figures(figures) -> dict[str, float]:
    """What `eval_fn` returned, as a dict of finite floats; otherwise an error naming it."""
    example = "eval_fn=lambda model: {'recall@10': 0.31}"
    if not isinstance(figures, Mapping):
        raise TypeError(
            f"eval_fn must return a mapping from names to numbers; got "
            f"{type(figures).__name__}. For example {example}"
        )
    checked = {}
    for name, value in figures.items():
        if not isinstance(name, str) or np.ndim(value) != 0 or not _is_number(value):
            raise TypeError(
                f"eval_fn must return a mapping from names (str) to numbers; got "
                f"{name!r}: {value!r}. For example {example}"
            )
        if not math.isfinite(float(value)):
            raise ValueError(
                f"eval_fn returned {name!r}: {float(value)}, not a finite number: a figure "
                "recorded in the history must be finite. Check the evaluation (non-finite "
                f"scores, an empty split). For example {example}"
            )
        checked[name] = float(value)
    return checked


def _is_number(value) -> bool:
    dtype = np.asarray(value).dtype
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
