"""A strict reader for gzip-compressed IDX files, the format of MNIST and its relatives.

An IDX file is a big-endian header, a 4-byte magic `0x0000TTDD` (`TT` the element type,
`0x08` for uint8; `DD` the number of dimensions), one uint32 per dimension, then the elements
in row-major order.
"""

import gzip
import math
import pathlib
import struct
import zlib

import numpy as np
from jaxtyping import UInt8

_MAGIC_BYTES = 4
_DIM_BYTES = 4
_UINT8_TYPE_CODE = 0x08


def read_idx(
    path: pathlib.Path, *, magic: int, item_shape: tuple[int, ...]
) -> UInt8[np.ndarray, " n *item"]:
    """Reads a gzip-compressed uint8 IDX file into an array of shape `(n, *item_shape)`.

    Checks the magic (which fixes the element type and the number of dimensions), the item
    shape and that the payload holds exactly as many bytes as the header promises.

    **Raises:**

    `ValueError` naming `path` and what was expected, for a file that is not gzip, is
    truncated or has an unexpected header.
    """
    if magic >> 8 != _UINT8_TYPE_CODE:
        raise ValueError(f"read_idx reads uint8 IDX files only; got magic 0x{magic:08x}")
    raw = _decompress(path)
    dims = _parse_header(raw, path=path, magic=magic)
    if dims[1:] != item_shape:
        raise ValueError(
            f"{path}: expected IDX items of shape {item_shape}, the header says {dims[1:]}"
        )
    header_bytes = _MAGIC_BYTES + _DIM_BYTES * len(dims)
    expected_bytes = math.prod(dims)
    found_bytes = len(raw) - header_bytes
    if found_bytes != expected_bytes:
        raise ValueError(
            f"{path}: the IDX header promises {dims[0]} items of shape {item_shape}, "
            f"that is {expected_bytes} bytes after the header, but {found_bytes} bytes follow it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_bytes).reshape(dims)


def _decompress(path: pathlib.Path) -> bytes:
    try:
        with gzip.open(path, "rb") as file:
            return file.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        # A missing or unreadable file stays an OSError; only bad content becomes ValueError.
        raise ValueError(f"{path}: not a complete gzip file ({error})") from error


def _parse_header(raw: bytes, *, path: pathlib.Path, magic: int) -> tuple[int, ...]:
    """Checks the magic and returns the dimensions that the header declares."""
    if len(raw) < _MAGIC_BYTES:
        raise ValueError(
            f"{path}: expected an IDX file starting with magic 0x{magic:08x}, "
            f"but it holds only {len(raw)} bytes"
        )
    (found_magic,) = struct.unpack_from(">I", raw)
    ndim = magic & 0xFF
    if found_magic != magic:
        raise ValueError(
            f"{path}: expected IDX magic 0x{magic:08x} (uint8, {ndim} dimensions), "
            f"found 0x{found_magic:08x}"
        )
    header_bytes = _MAGIC_BYTES + _DIM_BYTES * ndim
    if len(raw) < header_bytes:
        raise ValueError(
            f"{path}: truncated IDX header: expected {header_bytes} bytes, found {len(raw)}"
        )
    return struct.unpack_from(f">{ndim}I", raw, offset=_MAGIC_BYTES)
