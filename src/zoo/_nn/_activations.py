"""Named activation functions, so models and the CLI can take `"relu"` as well as a callable."""

from collections.abc import Callable

import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
    "elu": jax.nn.elu,
    "leaky_relu": jax.nn.leaky_relu,
    "identity": lambda x: x,
}


def activation_argument(
    function: Callable[[jax.Array], jax.Array],
) -> str | Callable[[jax.Array], jax.Array]:
    """The name `function` goes by in `ACTIVATIONS`, or `function` itself if it has none."""
    return next((name for name, f in ACTIVATIONS.items() if f is function), function)


def resolve_activation(
    activation: str | Callable[[jax.Array], jax.Array], *, argument: str
) -> Callable[[jax.Array], jax.Array]:
    """Returns the activation function named by `activation`, or `activation` itself if callable."""
    if callable(activation):
        return activation
    if activation in ACTIVATIONS:
        return ACTIVATIONS[activation]
    known = ", ".join(repr(name) for name in ACTIVATIONS)
    raise ValueError(f"{argument} must be a callable or one of {known}; got {activation!r}.")
