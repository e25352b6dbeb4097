"""Per-example gradients: `jax.vmap` of `jax.grad`, the seed lesson exercise, as a call."""

import equinox as eqx
import jax
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from .._custom_types import Batch, LossFn, PyTree
from ..losses._losses import resolve_loss


def per_example_grads(
    loss: str | LossFn, model: eqx.Module, batch: Batch, *, key: PRNGKeyArray | None = None
) -> PyTree:
    """The gradient of the loss of each example of `batch` separately.

    Each example is made a batch of one and differentiated, with `jax.vmap` over the examples:
    one compiled program, not a Python loop.

    **Arguments:**

    - `loss`: a loss name (`"cross_entropy"`, `"mse"`, `"bce"`) or a callable
      `loss(model, batch, key) -> scalar` or `loss(model, batch) -> scalar` (see
      [Write your own loss](../training.md#write-your-own-loss)).
    - `model`: the model.
    - `batch`: a mapping of arrays whose leading axis indexes the examples.
    - `key`: passed to the loss for every example (e.g. dropout); `None` for none.

    **Returns:**

    A pytree shaped like `model` whose array leaves gain a leading axis of length batch size.

    **Example:**

    ```python
    model = zoo.MLP(in_size=784, out_size=10, hidden=(256,), key=jax.random.key(0))
    x, y = jnp.ones((64, 784)), jnp.zeros(64, "int32")
    grads = zoo.per_example_grads("cross_entropy", model, {"x": x[:32], "y": y[:32]})
    assert grads.layers[0].weight.shape == (32, 256, 784)
    ```
    """
    loss_fn = resolve_loss(loss)

    def example_grad(example):
        as_batch = jax.tree.map(lambda leaf: leaf[None], example)
        return eqx.filter_grad(loss_fn)(model, as_batch, key)

    return eqx.filter_vmap(example_grad)(dict(batch))


def per_example_grad_norms(
    loss: str | LossFn, model: eqx.Module, batch: Batch, *, key: PRNGKeyArray | None = None
) -> Float[Array, " batch"]:
    """The global (all-parameter) L2 norm of each example's gradient, as in DP-SGD clipping.

    **Arguments:** as [`zoo.per_example_grads`][].

    **Returns:**

    A vector with one norm per example.

    **Example:**

    ```python
    model = zoo.MLP(in_size=64, out_size=10, hidden=(32,), key=jax.random.key(0))
    batch = {"x": jnp.ones((16, 64)), "y": jnp.zeros(16, "int32")}
    norms = zoo.per_example_grad_norms("cross_entropy", model, batch)  # shape (batch,)
    ```
    """
    grads = per_example_grads(loss, model, batch, key=key)
    return jax.vmap(optax.tree.norm)(eqx.filter(grads, eqx.is_array))
