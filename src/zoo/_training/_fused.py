"""Whether `zoo.train` runs its epochs fused on device: the dataset must fit beside the model.

Every process of a multi-process run must decide alike, or their programs (and the collectives
in them) differ and the processes wait on each other for ever.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

# Datasets up to this size run fused on device when the device does not report its memory.
FUSED_BYTES_WITHOUT_STATS = 4 * 2**30


def fits_on_devices(dataset_bytes: int, mesh: Mesh | None) -> bool:
    """Whether a dataset of `dataset_bytes` fits on every device that trains (on `mesh`, or on
    the default device), the same answer in every process."""
    fits = dataset_bytes <= min(_budget_bytes(device) for device in _local_devices(mesh))
    if mesh is None or len({device.process_index for device in mesh.devices.flat}) == 1:
        return fits
    # Fused only if every process's devices have room.
    return bool(np.all(multihost_utils.process_allgather(np.array(fits))))


def _local_devices(mesh: Mesh | None) -> list[jax.Device]:
    # Only this process's devices report their memory: another's raise INVALID_ARGUMENT.
    if mesh is None:
        return jax.local_devices()[:1]
    return [d for d in mesh.devices.flat if d.process_index == jax.process_index()]


def _budget_bytes(device: jax.Device) -> int:
    stats = device.memory_stats() or {}
    # Leave room for the model, the optimizer state and activations beside the dataset.
    return stats["bytes_limit"] // 4 if "bytes_limit" in stats else FUSED_BYTES_WITHOUT_STATS
