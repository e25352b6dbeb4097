"""A multilayer perceptron with selectable widths, activations, dropout and initialisation."""

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .. import _checks
from .._custom_types import DTypeLike, IntLike, RealLike
from .._io._rebuild import Rebuildable
from ._activations import activation_argument, resolve_activation

_WEIGHT_INITIALIZERS = {
    # He/Kaiming for ReLU-family activations, LeCun for SELU/tanh-like ones, Glorot for symmetry.
    "he": jax.nn.initializers.he_normal(in_axis=1, out_axis=0),
    "lecun": jax.nn.initializers.lecun_normal(in_axis=1, out_axis=0),
    "glorot": jax.nn.initializers.glorot_normal(in_axis=1, out_axis=0),
}


_EXAMPLE = "zoo.MLP(in_size=784, out_size=10, hidden=(256, 128), key=jax.random.key(0))"


def _check_arguments(
    in_size: IntLike,
    out_size: IntLike,
    hidden: Sequence[IntLike],
    dropout: RealLike,
    init: str,
    dtype,
    key,
) -> tuple[int, int, tuple[int, ...], float]:
    in_size = _checks.positive_int("in_size", in_size, example=_EXAMPLE)
    out_size = _checks.positive_int("out_size", out_size, example=_EXAMPLE)
    if isinstance(hidden, int | str) or not all(_checks.is_int(width) for width in hidden):
        raise TypeError(
            f"hidden must be a sequence of ints, one width per hidden layer; "
            f"got {hidden!r}. Example: {_EXAMPLE}"
        )
    if not all(width >= 1 for width in hidden):
        raise ValueError(
            f"hidden must hold positive widths, one per hidden layer; "
            f"got {hidden!r}. Example: {_EXAMPLE}"
        )
    if _checks.is_real(dropout) and not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a probability in [0, 1); got {dropout!r}.")
    dropout = _checks.real("dropout", dropout, low=0.0, high=1.0, high_open=True, example=_EXAMPLE)
    _checks.one_of("init", init, tuple(_WEIGHT_INITIALIZERS), example=_EXAMPLE)
    _checks.float_dtype("dtype", dtype, example="zoo.MLP(784, 10, dtype=jnp.bfloat16, key=key)")
    _checks.key("key", key, example=_EXAMPLE)
    return in_size, out_size, tuple(int(width) for width in hidden), dropout


class MLP(Rebuildable, saved_as="zoo.MLP"):
    """A multilayer perceptron: `Linear -> activation -> dropout` per hidden layer, then `Linear`.

    A callable pytree whose leaves are its weights and biases; it maps one example, and callers
    batch it with `jax.vmap`. Dropout is active only when a `key` is passed to `__call__`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, zoo
    images, key = jnp.ones((4, 784)), jax.random.key(1)
    model = zoo.MLP(in_size=784, out_size=10, hidden=(256, 128), dropout=0.1,
                    key=jax.random.key(0))
    logits = jax.vmap(model)(images)                       # inference: no key, no dropout
    logits = jax.vmap(lambda x, k: model(x, key=k))(images, jax.random.split(key, len(images)))
    ```
    """

    layers: tuple[eqx.nn.Linear, ...]
    in_size: int = eqx.field(static=True)
    out_size: int = eqx.field(static=True)
    hidden: tuple[int, ...] = eqx.field(static=True)
    activation: Callable[[Array], Array] = eqx.field(static=True)
    final_activation: Callable[[Array], Array] = eqx.field(static=True)
    dropout: float = eqx.field(static=True)

    def __init__(
        self,
        in_size: IntLike,
        out_size: IntLike,
        hidden: Sequence[IntLike] = (256, 128),
        *,
        activation: str | Callable[[Array], Array] = "relu",
        final_activation: str | Callable[[Array], Array] = "identity",
        dropout: RealLike = 0.0,
        init: str = "he",
        use_bias: bool = True,
        dtype: DTypeLike | None = None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_size`: the number of input features.
        - `out_size`: the number of outputs (e.g. classes, as logits).
        - `hidden`: the width of each hidden layer, in order; `()` gives a linear model.
        - `activation`: applied after each hidden layer; a name (`"relu"`, `"gelu"`, `"tanh"`,
          ...) or any callable.
        - `final_activation`: applied to the output; `"identity"` by default (logits).
        - `dropout`: the probability of zeroing a hidden activation during training.
        - `init`: the weight initialisation: `"he"` (Kaiming normal, for ReLU-like
          activations), `"lecun"` or `"glorot"`. Biases start at zero.
        - `use_bias`: whether the linear layers have biases.
        - `dtype`: the parameters' dtype; `None` means JAX's default float.
        - `key`: a `jax.random.key` for the initialisation.
        """
        hidden = tuple(hidden) if not isinstance(hidden, int | str) else hidden
        in_size, out_size, hidden, dropout = _check_arguments(
            in_size, out_size, hidden, dropout, init, dtype, key
        )
        sizes = (in_size, *hidden, out_size)
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple(
            _initialised_linear(fan_in, fan_out, use_bias, dtype, init, layer_key)
            for fan_in, fan_out, layer_key in zip(sizes[:-1], sizes[1:], keys, strict=True)
        )
        self.in_size = in_size
        self.out_size = out_size
        self.hidden = hidden
        self.activation = resolve_activation(activation, argument="activation")
        self.final_activation = resolve_activation(final_activation, argument="final_activation")
        self.dropout = float(dropout)

    def rebuild_arguments(self) -> dict:
        """The arguments this MLP was built with (see `zoo.Rebuildable`), with a `jax.nn`
        activation given by name, and the dtype it resolved to (`None` means JAX's default,
        which depends on `jax_enable_x64`)."""
        return super().rebuild_arguments() | {
            "activation": activation_argument(self.activation),
            "final_activation": activation_argument(self.final_activation),
            "dtype": self.layers[0].weight.dtype,
        }

    def __call__(
        self, x: Float[Array, " in_size"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " out_size"]:
        """**Arguments:**

        - `x`: one example, a vector of `in_size` features. Batch with `jax.vmap`.
        - `key`: a PRNG key for dropout; `None` (the default) means inference: no dropout.

        **Returns:**

        A vector of `out_size` outputs.
        """
        if x.shape != (self.in_size,):
            raise ValueError(
                f"x must be one example of shape ({self.in_size},); got shape {x.shape}. "
                "Batch with jax.vmap(model)(xs) rather than calling model(xs) on a batch."
            )
        keys = (
            (None,) * len(self.layers) if key is None else jax.random.split(key, len(self.layers))
        )
        for layer, layer_key in zip(self.layers[:-1], keys[:-1], strict=True):
            x = self.activation(layer(x))
            x = self._drop(x, layer_key)
        return self.final_activation(self.layers[-1](x))

    def _drop(self, x: Array, key: PRNGKeyArray | None) -> Array:
        if key is None or self.dropout == 0.0:
            return x
        keep = jax.random.bernoulli(key, 1.0 - self.dropout, x.shape)
        return jnp.where(keep, x / (1.0 - self.dropout), jnp.zeros((), x.dtype))


def _initialised_linear(
    fan_in: IntLike, fan_out: IntLike, use_bias: bool, dtype, init: str, key: PRNGKeyArray
) -> eqx.nn.Linear:
    linear_key, weight_key = jax.random.split(key)
    linear = eqx.nn.Linear(fan_in, fan_out, use_bias=use_bias, dtype=dtype, key=linear_key)
    weight = _WEIGHT_INITIALIZERS[init](weight_key, linear.weight.shape, linear.weight.dtype)
    linear = eqx.tree_at(lambda lin: lin.weight, linear, weight)
    if use_bias:
        linear = eqx.tree_at(lambda lin: lin.bias, linear, jnp.zeros_like(linear.bias))
    return linear
