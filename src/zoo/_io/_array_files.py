"""The Orbax `TypeHandler` through which zoo writes and reads arrays: one `.npy` file per array,
written straight from the array's memory and read straight into memory that JAX's CPU client
uses in place. Imported on first use, as Orbax is (see `_array_store.orbax`).

Why not TensorStore, Orbax's default: it copies each array into chunk buffers of its own before
writing, and reads each chunk into a buffer of its own before copying it into place. That is
twice the memory traffic of `numpy.save`/`numpy.load`, and twice the fresh memory, which is
slow to touch (figures in docs/checkpoints.md, "Measured"). A `.npy` file is
written from, and read into, the one buffer the array lives in. Orbax still does everything
else: the temporary directory renamed into place once complete, asynchronous commits, keeping
the last `k` checkpoints, the tree's metadata.

Checkpoints written before (TensorStore) still load, and with more than one process, where
arrays are sharded between hosts, writes go through Orbax's own handlers as before.
"""

import asyncio
import io
import os
import pathlib
import typing
from collections.abc import Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts

from ._host_memory import aligned_empty

# A read of a large array is split into positional reads of at most this many bytes, which run
# at once: one thread copying 1 GiB out of the page cache leaves the other core idle.
_READ_BYTES = 64 * 2**20
# A version 1.0 `.npy` header is at most this long (its length field is 16 bits).
_MAX_HEADER_BYTES = 10 + 2**16


def _descr(dtype: np.dtype) -> str:
    """The dtype as a `.npy` header gives it: NumPy's description or, for the dtypes of
    `ml_dtypes` (bfloat16, float8, int4), which NumPy describes as opaque bytes, their name,
    which `numpy.load` resolves once ml_dtypes is imported (as JAX does)."""
    descr = np.lib.format.dtype_to_descr(dtype)
    return descr if np.lib.format.descr_to_dtype(descr) == dtype else dtype.name


def _npy_header(array: np.ndarray) -> bytes:
    header = io.BytesIO()
    fields = {"descr": _descr(array.dtype), "fortran_order": False, "shape": array.shape}
    np.lib.format.write_array_header_1_0(header, fields)
    return header.getvalue()  # padded by NumPy so that the data starts 64-byte aligned


def _spans(nbytes: int) -> list[slice]:
    return [
        slice(start, min(start + _READ_BYTES, nbytes)) for start in range(0, nbytes, _READ_BYTES)
    ]


def _as_bytes(array: np.ndarray) -> memoryview:
    return memoryview(array.reshape(-1).view(np.uint8))


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _pread_all(fd: int, into: memoryview, offset: int, path: pathlib.Path) -> None:
    while into:
        count = os.preadv(fd, [into], offset)
        if count == 0:
            raise ValueError(f"{path} ends early: it is shorter than its header says.")
        into, offset = into[count:], offset + count


async def _in_parallel(calls) -> None:
    await asyncio.gather(*(asyncio.to_thread(*call) for call in calls))


def _write_npy(path: pathlib.Path, array: np.ndarray) -> None:
    """Writes a C-contiguous `array` to a new `.npy` file at `path` and syncs it to disk.

    One write, and one file at a time, not several in parallel as reads are: threads that fill
    the page cache at once made writes slower (docs/checkpoints.md, "Measured").
    """
    header = _npy_header(array)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _pwrite_all(fd, memoryview(header), 0)
        _pwrite_all(fd, _as_bytes(array), len(header))
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_header(fd: int, path: pathlib.Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """`(shape, dtype, offset of the data)` from the `.npy` header of the file open as `fd`."""
    header = io.BytesIO(os.pread(fd, _MAX_HEADER_BYTES, 0))
    try:
        version = np.lib.format.read_magic(header)
        if version != (1, 0):
            raise ValueError(f"version {version} (zoo writes 1.0)")
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(header)
    except ValueError as error:
        raise ValueError(f"{path} has no valid .npy header: {error}") from error
    if fortran_order or dtype.hasobject:
        raise ValueError(f"{path} holds a Fortran-ordered or object array; zoo writes neither.")
    return shape, dtype, header.tell()


async def read_npy(path: pathlib.Path) -> np.ndarray:
    """The array in the `.npy` file at `path`, in an `aligned_empty` buffer."""
    fd = os.open(path, os.O_RDONLY)
    try:
        shape, dtype, offset = _read_header(fd, path)
        array = aligned_empty(shape, dtype)
        data = _as_bytes(array)
        size = os.fstat(fd).st_size
        if size != offset + len(data):
            raise ValueError(
                f"{path} holds {size} bytes, but its header describes {offset + len(data)} "
                f"({dtype}{list(shape)}): the file is truncated or damaged."
            )
        await _in_parallel(
            (_pread_all, fd, data[s], offset + s.start, path) for s in _spans(len(data))
        )
        return array
    finally:
        os.close(fd)


def _file_of(info) -> pathlib.Path:
    return pathlib.Path(info.parent_dir) / f"{info.name}.npy"


def _write_files(files: list[pathlib.Path], arrays: Sequence[np.ndarray]) -> None:
    """Writes each array to its file, one after another (see `_write_npy`), then makes the
    files' directory entries durable too."""
    for file, array in zip(files, arrays, strict=True):
        _write_npy(file, array)
    for directory in {file.parent for file in files}:
        _sync_directory(directory)


def _sync_directory(directory: pathlib.Path) -> None:
    """Makes the directory's new entries durable, as the files' contents already are."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArrayFileHandler(ocp.type_handlers.NumpyHandler):
    """Orbax's handler for NumPy (and, in one process, JAX) arrays, storing each as a `.npy`
    file beside Orbax's metadata instead of through TensorStore.

    Values are not copied before an asynchronous write: zoo hands Orbax copies of anything a
    training step could overwrite (`_array_store.to_store(..., staging=...)`). A JAX array on
    CPU is written from its own buffer; on an accelerator, `numpy.asarray` copies it to the
    host before `serialize` returns, so training can go on.
    """

    # Orbax looks for this attribute on the jax.Array handler and logs a warning on every save
    # and load when it is missing; `None` is what it falls back to then (no subchunking), so the
    # `zoo` command's output stays its own.
    _array_metadata_store = None

    def __init__(self):
        super().__init__(deepcopy_host_arrays=False)

    async def serialize(self, values, infos, args=None) -> list:
        if jax.process_count() > 1:  # arrays sharded between hosts: Orbax's TensorStore path
            return await super().serialize(values, infos, args)
        arrays = [np.asarray(value, order="C") for value in values]
        return [
            ocp.future.CommitFutureAwaitingContractedSignals(
                self._write(arrays, infos), name="zoo_array_files"
            )
        ]

    async def _write(self, arrays: Sequence[np.ndarray], infos) -> None:
        for info in infos:
            await info.await_path_creation()
        await asyncio.to_thread(_write_files, [_file_of(info) for info in infos], arrays)

    async def deserialize(self, infos, args=None) -> list[np.ndarray]:
        # `args` may ask Orbax to cast; zoo never does (it checks the stored dtypes against the
        # model instead), so each array comes back in its stored dtype.
        del args
        for info in infos:
            await info.await_path_creation()
        in_files = [_file_of(info).exists() for info in infos]
        from_files = iter(
            await asyncio.gather(
                *(read_npy(_file_of(i)) for i, f in zip(infos, in_files, strict=True) if f)
            )
        )
        legacy = [info for info, in_file in zip(infos, in_files, strict=True) if not in_file]
        from_tensorstore = iter(await _read_tensorstore(legacy, self._metadata_key))
        return [next(from_files) if f else next(from_tensorstore) for f in in_files]

    async def metadata(self, infos) -> list:
        for info in infos:
            await info.await_path_creation()
        if not all(_file_of(info).exists() for info in infos):
            return await super().metadata(infos)
        return [_file_metadata(info) for info in infos]


def _file_metadata(info):
    fd = os.open(_file_of(info), os.O_RDONLY)
    try:
        shape, dtype, _ = _read_header(fd, _file_of(info))
    finally:
        os.close(fd)
    return ocp.metadata.ArrayMetadata(
        name=info.name, directory=info.parent_dir, shape=shape, dtype=dtype, sharding=None
    )


async def _read_tensorstore(infos, metadata_key: str | None) -> list[np.ndarray]:
    """Arrays that Orbax wrote through TensorStore (before zoo wrote `.npy` files, or with more
    than one process), each read into an aligned buffer of ours rather than one TensorStore
    allocates itself (16-byte aligned), so that `jax.device_put` costs nothing on CPU."""
    stores = await asyncio.gather(*(_open_tensorstore(info, metadata_key) for info in infos))
    buffers = [aligned_empty(store.shape, store.dtype.numpy_dtype) for store in stores]
    writes = [
        ts.array(buffer, copy=False, write=True).write(store)
        for buffer, store in zip(buffers, stores, strict=True)
    ]
    await asyncio.gather(*writes)
    return buffers


async def _open_tensorstore(info, metadata_key: str | None) -> ts.TensorStore:
    spec = ocp.type_handlers.get_json_tspec_read(
        info, use_ocdbt=info.is_ocdbt_checkpoint, metadata_key=metadata_key
    )
    return await ts.open(ts.Spec(spec), open=True, context=info.ts_context)


class _TreeHandler(ocp.PyTreeCheckpointHandler):
    """Orbax's pytree handler, minus the merge of per-process OCDBT files when there are none:
    in one process every array is a `.npy` file of `ArrayFileHandler`'s."""

    def __init__(self, *, one_process: bool, **kwargs):
        super().__init__(use_ocdbt=not one_process, **kwargs)
        self._one_process = one_process

    def finalize(self, directory) -> None:
        if not self._one_process:
            super().finalize(directory)


# Orbax finds a handler's arguments by the handler's exact class, so `_TreeHandler` has its own.
# (`no_type_check`: the type checker of zoo's tests would check Orbax's own hints.)
@ocp.args.register_with_handler(_TreeHandler, for_save=True)
@typing.no_type_check
class TreeSave(ocp.args.PyTreeSave):
    """`ocp.args.PyTreeSave`, for zoo's handler."""


@ocp.args.register_with_handler(_TreeHandler, for_restore=True)
@typing.no_type_check
class TreeRestore(ocp.args.PyTreeRestore):
    """`ocp.args.PyTreeRestore`, for zoo's handler."""


class JaxArrayFileHandler(ocp.type_handlers.ArrayHandler):
    """The handler for `jax.Array` values in one process: `ArrayFileHandler`'s `.npy` files.

    It is an Orbax `ArrayHandler` because Orbax asks the `jax.Array` handler for its
    ArrayMetadata store (the chunk shapes that subchunking reads back), and logs a warning on
    every save and load when that handler has none. A `.npy` file holds its own shape and is
    read whole, so there is nothing to store: `array_metadata_store=None`, Orbax's option for
    "no ArrayMetadata persistence". Everything else is the file handler's.
    """

    def __init__(self):
        super().__init__(array_metadata_store=None)
        self._files = ArrayFileHandler()

    def typestr(self) -> str:
        # As before this class existed: a checkpoint names its arrays' handler by this string.
        return self._files.typestr()

    async def serialize(self, values, infos, args=None) -> list:
        return await self._files.serialize(values, infos, args)

    async def deserialize(self, infos, args=None) -> list[np.ndarray]:
        return await self._files.deserialize(infos, args)

    async def metadata(self, infos) -> list:
        return await self._files.metadata(infos)


def tree_handler() -> ocp.PyTreeCheckpointHandler:
    """The handler for zoo's flat dict of arrays. In one process, every array goes through
    `ArrayFileHandler`. With several, JAX arrays (sharded between hosts) go through Orbax's own
    handler: TensorStore, uncompressed (zstd barely shrinks trained floats and triples the time
    to save), with each process's files merged by OCDBT."""
    one_process = jax.process_count() == 1
    for_jax = (
        JaxArrayFileHandler() if one_process else ocp.type_handlers.get_type_handler(jax.Array)
    )
    registry = ocp.type_handlers.create_type_handler_registry(
        (np.ndarray, ArrayFileHandler()), (jax.Array, for_jax)
    )
    return _TreeHandler(
        one_process=one_process, use_compression=False, type_handler_registry=registry
    )
