"""A user's loss, called as `loss(model, batch, key)` whichever accepted form it was written in.

Accepted: `loss(model, batch, key)`, `loss(model, batch, *, key)` and `loss(model, batch)` (a loss
that takes no key gets none). The form is read once, from `inspect.signature`, before training:
`functools.partial`, bound methods, callable objects and `*args` are all read as Python calls
them.
"""

import functools
import inspect
from collections.abc import Callable

from .._custom_types import LossFn

ACCEPTED_FORMS = "loss(model, batch, key), loss(model, batch, *, key) or loss(model, batch)"
EXAMPLE = (
    "For example:\n"
    "    def loss(model, batch):\n"
    "        return zoo.losses.cross_entropy(jax.vmap(model)(batch['x']), batch['y']).mean()"
)


def keyed_loss(loss: Callable) -> LossFn:
    """`loss` as a callable `(model, batch, key) -> scalar`; a TypeError for any other form."""
    try:
        signature = inspect.signature(loss)
    except (TypeError, ValueError):
        return loss  # not introspectable (some builtins): trusted to take the documented form
    if _accepts(signature, "model", "batch", "key"):
        return loss
    if _accepts(signature, "model", "batch", key="key"):
        return _with_key_as_keyword(loss)
    if _accepts(signature, "model", "batch"):
        return _without_key(loss)
    raise TypeError(
        f"loss must be callable as {ACCEPTED_FORMS}, returning a scalar; got {_name(loss)} "
        f"with signature {signature}.\n{EXAMPLE}"
    )


def _accepts(signature: inspect.Signature, *args, **kwargs) -> bool:
    try:
        signature.bind(*args, **kwargs)
    except TypeError:
        return False
    return True


def _with_key_as_keyword(loss: Callable) -> LossFn:
    @functools.wraps(loss)
    def loss_with_keyword_key(model, batch, key):
        return loss(model, batch, key=key)

    return loss_with_keyword_key


def _without_key(loss: Callable) -> LossFn:
    @functools.wraps(loss)
    def loss_without_key(model, batch, key):
        del key  # this loss is deterministic
        return loss(model, batch)

    return loss_without_key


def _name(loss: Callable) -> str:
    return getattr(loss, "__qualname__", None) or type(loss).__name__
