"""Host buffers for arrays on their way to and from disk: aligned so that JAX's CPU client can
use them in place, and allocated by NumPy, which asks Linux to back large ones with 2 MiB pages.

Why the pages matter: the first touch of each page of fresh memory costs a fault, so filling
memory that XLA allocated (4 KiB pages) is many times slower than filling 2 MiB pages
(docs/checkpoints.md, "Measured").
"""

import jax
import numpy as np

# XLA's CPU client aliases a NumPy array aligned to this many bytes, and copies any other.
CPU_ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a `CPU_ALIGNMENT` boundary."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + CPU_ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % CPU_ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def _is_view(host: np.ndarray, array) -> bool:
    """Whether `host` (from `numpy.asarray(array)`) is `array`'s own memory, not a copy: so it
    is for a NumPy array, and for a JAX array on one CPU device."""
    if not isinstance(array, jax.Array):
        return host is array
    return len(array.addressable_shards) == 1 and host.ctypes.data == array.unsafe_buffer_pointer()


def host_copy(array: jax.Array | np.ndarray, reuse: np.ndarray | None = None) -> np.ndarray:
    """A copy of a fully addressable `array` in host memory of its own.

    From an accelerator, or from several devices, `numpy.asarray` already copies. From one CPU
    device (or from NumPy) the copy goes into `reuse` when its shape and dtype fit, and into a
    new `aligned_empty` buffer otherwise, not into a fresh XLA allocation (`jnp.copy`), which
    is slow to touch.
    """
    host = np.asarray(array)
    if not _is_view(host, array):
        return host
    if reuse is None or (reuse.shape, reuse.dtype) != (host.shape, host.dtype):
        reuse = aligned_empty(host.shape, host.dtype)
    np.copyto(reuse, host)
    return reuse


class Staging:
    """Host copies of the arrays of successive saves, each save's copies made into the memory of
    the one before. A training run saves the same state again and again, and memory kept is
    much cheaper to fill than memory freed and allocated again (docs/checkpoints.md,
    "Measured": the time training waits for a checkpoint fell by half and more).

    The caller must make sure the previous save is no longer reading its copies.
    """

    def __init__(self):
        self._copies: list[np.ndarray] = []

    def copy(self, arrays: list) -> list[np.ndarray]:
        reuse = (self._copies + [None] * len(arrays))[: len(arrays)]
        self._copies = [host_copy(a, r) for a, r in zip(arrays, reuse, strict=True)]
        return self._copies

    def clear(self) -> None:
        """Frees the copies."""
        self._copies = []
