"""The model both embedding benchmarks train: one table and a linear head (imported by workers)."""

import equinox as eqx
import jax

import zoo


class TableRegressor(eqx.Module):
    """`ids -> head(table[ids])`: a `rows x dim` table and a linear head to one output."""

    table: zoo.Embedding
    head: eqx.nn.Linear

    def __init__(self, rows: int, dim: int, key):
        k1, k2 = jax.random.split(key)
        self.table = zoo.Embedding(rows, dim, key=k1)
        self.head = eqx.nn.Linear(dim, 1, key=k2)

    def __call__(self, ids):
        return self.head(self.table(ids))[0]
