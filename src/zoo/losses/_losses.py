"""Losses: per-example functions of (prediction, target), and the registry of loss names.

A training loss has the signature `loss(model, batch, key) -> scalar`. The supervised ones are built
from a per-example function by `supervised`, which batches the model with `jax.vmap`.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

from .._custom_types import Batch, LossFn
from ._signature import keyed_loss

PerExample = Callable[[Array, Array], Array]


def cross_entropy(logits: Float[Array, "*b classes"], labels: Array) -> Float[Array, "*b"]:
    """Softmax cross-entropy of `logits` against integer class `labels`, per example."""
    labels = _class_labels(logits, labels)
    num_classes = logits.shape[-1]
    labels = eqx.error_if(
        labels, (labels < 0) | (labels >= num_classes), f"labels must lie in [0, {num_classes})"
    )
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _cross_entropy_of_labels_in_range(
    logits: Float[Array, "*b classes"], labels: Array
) -> Float[Array, "*b"]:
    # `zoo.train` checks a dataset's labels on the host before training; the check inside the
    # step (a conditional per step) then costs about 5% of a small model's step at batch 32.
    return optax.softmax_cross_entropy_with_integer_labels(logits, _class_labels(logits, labels))


def _class_labels(logits: Array, labels: Array) -> Array:
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(
            f"cross_entropy needs integer class labels (the dataset's 'y'); got dtype "
            f"{labels.dtype}. Convert with y.astype(numpy.int32), or use loss='mse' for "
            "real-valued targets."
        )
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"cross_entropy needs one label per example: labels of shape {logits.shape[:-1]} "
            f"for logits of shape {logits.shape}; got labels of shape {labels.shape}."
        )
    return labels


def mse(predictions: Float[Array, " batch *rest"], targets: Array) -> Float[Array, " batch"]:
    """Squared error, averaged over an example's outputs."""
    targets = _matching_targets("mse", predictions, targets)
    return jnp.mean(jnp.square(predictions - targets).reshape(predictions.shape[0], -1), axis=-1)


def bce(logits: Float[Array, " batch *rest"], targets: Array) -> Float[Array, " batch"]:
    """Binary cross-entropy of `logits` against 0/1 `targets`, averaged over outputs."""
    targets = _matching_targets("bce", logits, targets)
    losses = optax.sigmoid_binary_cross_entropy(logits, targets)
    return jnp.mean(losses.reshape(logits.shape[0], -1), axis=-1)


def _matching_targets(name: str, predictions: Array, targets: Array) -> Array:
    # A model with one output per example gives (batch, 1); accept targets of shape (batch,).
    if targets.shape != predictions.shape and (*targets.shape, 1) == predictions.shape:
        targets = targets[..., None]
    if targets.shape != predictions.shape:
        raise ValueError(
            f"{name} needs targets shaped like the predictions {predictions.shape}; "
            f"got targets of shape {targets.shape}."
        )
    return targets.astype(predictions.dtype)


def batched_predictions(model: eqx.Module, x: Array, key: PRNGKeyArray | None) -> Array:
    """`jax.vmap(model)(x)`, giving each example its own key when one is passed (e.g. dropout)."""
    if key is None:
        return jax.vmap(model)(x)
    keys = jax.random.split(key, x.shape[0])
    return jax.vmap(lambda example, k: model(example, key=k))(x, keys)


def supervised(per_example: PerExample) -> LossFn:
    """Turns a per-example `loss(prediction, target)` into `loss(model, batch, key)`.

    The batch is a mapping with inputs under `"x"` and targets under `"y"`; the result is the mean
    over the batch.

    **Example:**

    ```python
    train = zoo.data.digits("train")
    data = {"x": train["x"], "y": np.eye(10, dtype=np.float32)[train["y"]]}  # one-hot targets
    model = zoo.MLP(in_size=64, out_size=10, hidden=(32,), key=jax.random.key(0))
    huber = zoo.losses.supervised(lambda p, t: optax.huber_loss(p, t).mean(-1))
    model, history = zoo.train(model, data, loss=huber, epochs=2)
    ```
    """

    def loss(model: eqx.Module, batch: Batch, key: PRNGKeyArray | None = None) -> Scalar:
        predictions = batched_predictions(model, batch["x"], key)
        return jnp.mean(per_example(predictions, batch["y"]))

    loss.__name__ = getattr(per_example, "__name__", "supervised_loss")
    return loss


LOSSES: dict[str, LossFn] = {
    "cross_entropy": supervised(cross_entropy),
    "mse": supervised(mse),
    "bce": supervised(bce),
}

# The built-in losses that check their labels inside the step, and the same without the check.
_WITH_LABELS_IN_RANGE = {LOSSES["cross_entropy"]: supervised(_cross_entropy_of_labels_in_range)}


def with_labels_in_range(loss: LossFn) -> LossFn:
    """`loss`, without its check of the labels' range inside the step where it has one: for
    data whose labels were all checked beforehand (a user's loss, or one registered over a
    built-in name, is returned as it is)."""
    return _WITH_LABELS_IN_RANGE.get(loss, loss)


def resolve_loss(loss: str | LossFn) -> LossFn:
    """The loss named `loss` in the registry, or `loss` itself when it is a callable."""
    if callable(loss):
        return keyed_loss(loss)
    if isinstance(loss, str) and loss in LOSSES:
        return LOSSES[loss]
    known = ", ".join(repr(name) for name in LOSSES)
    raise ValueError(
        f"loss must be a callable loss(model, batch, key) -> scalar (or loss(model, batch)) "
        f"or one of {known}; got {loss!r}."
    )


def register_loss(name: str, loss: LossFn) -> None:
    """Adds `loss` to the registry under `name`, so `zoo.train(..., loss=name)` finds it."""
    if not callable(loss):
        raise TypeError(f"loss must be callable as loss(model, batch, key); got {loss!r}.")
    LOSSES[name] = keyed_loss(loss)
