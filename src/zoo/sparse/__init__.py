"""`zoo.sparse`: training embedding tables in `O(batch)` per step.

Take a whole step with `value_and_update` (with `sgd`, the update lands in the table's own
`jax.Ref` during the backward pass), or take gradients with `value_and_grad` (tables get
`SparseRows`, everything else dense arrays), turn them into updates with a
`SparseGradientTransformation` (usually `partition`), and apply them with `apply_updates`.
On CPU the row gathers and in-place updates run zoo's native kernels, built at install;
`kernels()` says which path runs. See `docs/sparse.md`.
"""

from ._clipping import (
    ClipByGlobalNormState as ClipByGlobalNormState,
    chain as chain,
    clip_by_global_norm as clip_by_global_norm,
    global_norm as global_norm,
)
from ._grad import value_and_grad as value_and_grad
from ._native import Kernels as Kernels, kernels as kernels
from ._optimizers import (
    AdagradState as AdagradState,
    LazyAdamState as LazyAdamState,
    SGDState as SGDState,
    SparseGradientTransformation as SparseGradientTransformation,
    adagrad as adagrad,
    lazy_adam as lazy_adam,
    rowwise_adagrad as rowwise_adagrad,
    sgd as sgd,
)
from ._partition import (
    PartitionState as PartitionState,
    apply_updates as apply_updates,
    partition as partition,
)
from ._rows import SparseRows as SparseRows, is_sparse_rows as is_sparse_rows
from ._step import value_and_update as value_and_update
