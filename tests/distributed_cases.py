"""Training runs shared by tests/test_distributed.py and the worker processes it starts.

The test runs each on one device in-process; the workers run the same on a mesh of simulated
CPU devices, so the two must see exactly the same models, data, optimizers and keys.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import zoo

from .helpers import train

USERS, ITEMS, DIM = 64, 48, 8


class Scorer(eqx.Module):
    """A recommender in miniature: two embedding tables and an MLP head."""

    users: zoo.Embedding
    items: zoo.Embedding
    head: zoo.MLP

    def __init__(self, key, users: int = USERS):
        k1, k2, k3 = jax.random.split(key, 3)
        self.users = zoo.Embedding(users, DIM, key=k1)
        self.items = zoo.Embedding(ITEMS, DIM, key=k2)
        self.head = zoo.MLP(2 * DIM, 1, (8,), key=k3)

    def __call__(self, user, item):
        return self.head(jnp.concatenate([self.users(user), self.items(item)]))[0]


def mse(model, batch, key):
    del key
    scores = jax.vmap(model)(batch["user"], batch["item"])
    return jnp.mean((scores - batch["rating"]) ** 2)


def taking_mse(model, batch, key):
    """`mse` with the rows read from the weights as from arrays: `weight[ids]` and
    `jnp.take(weight, ids, axis=0)` (on a mesh a table is split, and the ids are global)."""
    del key
    items = jnp.take(model.items.weight, batch["item"], axis=0)
    hidden = jnp.concatenate([model.users.weight[batch["user"]], items], axis=-1)
    scores = jax.vmap(model.head)(hidden)[:, 0]
    return jnp.mean((scores - batch["rating"]) ** 2)


def ratings(n: int = 96, users: int = USERS, out_of_range: bool = False) -> dict[str, np.ndarray]:
    """`n` ratings by the first `users` users; with `out_of_range`, the sixth rating's user
    is `USERS + 2` (past the table) and the 40th's `-1`."""
    rng = np.random.default_rng(0)
    data = {
        "user": rng.integers(0, users, n).astype(np.int32),
        "item": rng.integers(0, ITEMS, n).astype(np.int32),
        "rating": rng.uniform(size=n).astype(np.float32),
    }
    if out_of_range:
        data["user"][[5, 39]] = USERS + 2, -1
    return data


def balanced_batches(batches: int = 3, size: int = 32) -> list[dict[str, np.ndarray]]:
    """Batches in which every 4 consecutive examples have users (and items) from 4 different
    quarters of the table: on a mesh with a 4-way `"model"` axis and 4 examples per device,
    each device then looks up one row of each shard per table, well within the routed step's
    slots, so that step never falls back to its skew path."""
    rng = np.random.default_rng(2)
    quarter = np.arange(batches * size) % 4
    users = quarter * (USERS // 4) + rng.integers(0, USERS // 4, quarter.size)
    items = quarter * (ITEMS // 4) + rng.integers(0, ITEMS // 4, quarter.size)
    ratings = rng.uniform(size=quarter.size).astype(np.float32)
    return [
        {"user": u.astype(np.int32), "item": i.astype(np.int32), "rating": r}
        for u, i, r in zip(*(np.split(x, batches) for x in (users, items, ratings)), strict=True)
    ]


def blobs(n: int = 50) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, n).astype(np.int32)
    x = (3 * rng.normal(size=(4, 8)))[y] + rng.normal(size=(n, 8))
    return {"x": x.astype(np.float32), "y": y}


def sparse_optimizer():
    return zoo.sparse.partition(dense=optax.adam(1e-2), embeddings=zoo.sparse.rowwise_adagrad(0.1))


def train_mlp(mesh=None):
    """2 epochs of 50 examples in batches of 16: 3 full steps and a last one of 2 examples
    (which does not split over 8 devices, so it runs replicated), then an evaluation.

    Returns the trained model and the evaluation's figures.
    """
    model = zoo.MLP(8, 4, (16,), key=jax.random.key(1))
    kwargs = dict(optimizer=optax.adam(1e-2), epochs=2, batch_size=16, progress=False)
    trained, history = train(
        model, blobs(), eval_data=blobs(), key=jax.random.key(2), mesh=mesh, **kwargs
    )
    return trained, history["eval"]


def train_recommender(mesh=None, data=None, **kwargs):
    """2 epochs of 96 ratings (by default `ratings()`) in batches of 32: 3 steps each."""
    kwargs = {"loss": mse, "optimizer": sparse_optimizer(), "epochs": 2, "batch_size": 32} | kwargs
    model = Scorer(jax.random.key(3))
    data = ratings() if data is None else data
    trained, _ = train(model, data, key=jax.random.key(4), progress=False, mesh=mesh, **kwargs)
    return trained


def _host(leaf) -> np.ndarray:
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    return np.asarray(leaf)


def arrays(tree) -> list[np.ndarray]:
    """The array leaves of `tree` as NumPy arrays (keys as their data), in tree order."""
    return [_host(leaf) for leaf in jax.tree.leaves(eqx.filter(tree, eqx.is_array))]
