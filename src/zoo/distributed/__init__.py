"""`zoo.distributed`: training on many devices and processes with JAX's SPMD machinery.

Name a `jax.sharding.Mesh`'s axes `"data"` (split batches), `"fsdp"` (split batches and dense
parameters) and `"model"` (row-shard embedding tables), and pass it to
`zoo.train(..., mesh=mesh)`. See docs/scaling.md.
"""

from ._initialize import initialize as initialize
from ._mesh import data_sharding as data_sharding
from ._sharding import (
    abstract_state as abstract_state,
    shard_state as shard_state,
    state_shardings as state_shardings,
)
