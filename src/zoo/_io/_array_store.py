"""A pytree's arrays as a flat, described, checksummed list: what `zoo.save` and `zoo.Checkpoints`
both write through Orbax and check on the way back.

Arrays are stored through Orbax; `zoo.save` also records the scalar leaves (Python numbers,
strings and bytes, NumPy scalars) with `scalar_leaves` and restores them exactly with
`with_scalars`. Everything else about a pytree (its structure, static fields, other leaves such
as functions) comes back from the template it is loaded into, which is checked against the
*manifest* saved beside the arrays: one entry per array with its path, dtype, shape and
checksum. Orbax sees a flat dict `{"a0": ..., "a1": ...}`, so any pytree (modules, NamedTuple
optimizer states, typed PRNG keys) stores the same way; typed keys are stored as their
`jax.random.key_data`.
"""

import numbers
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import xxhash

from .._custom_types import PyTree
from ._host_memory import Staging
from ._json_values import Unrecordable, decode, encode
from ._rebuild import name_of

_ORBAX_KEY = "a{}"
# With more than one process, arrays go through TensorStore, in chunks of at most this many
# bytes, which it reads in parallel; stored whole, a large table comes back several times
# slower (docs/checkpoints.md, "Measured").
_CHUNK_BYTES = 16 * 2**20


def orbax():
    """`orbax.checkpoint`, imported on first use: it adds about a second to `import zoo`."""
    import orbax.checkpoint as ocp

    return ocp


def array_handler():
    """Orbax's handler for the flat dict of arrays (see `_array_files.tree_handler`)."""
    from ._array_files import tree_handler

    return tree_handler()


def save_args(item: dict):
    """Orbax's arguments to save `item` (from `to_store`); chunked where TensorStore writes."""
    from ._array_files import TreeSave

    chunked = orbax().SaveArgs(chunk_byte_size=_CHUNK_BYTES)
    return TreeSave(item, save_args={key: chunked for key in item})


def restore_args(item: dict, args: dict):
    """Orbax's arguments to read `item`, with `args` from `from_store`'s `read` call."""
    from ._array_files import TreeRestore

    return TreeRestore(item, restore_args=args)


class Leaf(NamedTuple):
    """An array-like leaf of a pytree and where it sits."""

    path: str
    value: Any  # a jax.Array, np.ndarray or jax.ShapeDtypeStruct


def _is_array_like(x) -> bool:
    return isinstance(x, jax.Array | np.ndarray | jax.ShapeDtypeStruct)


def _is_key(x) -> bool:
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _format_path(path: Sequence) -> str:
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(f".{key.name}")
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(f"[{key.idx}]")
        elif isinstance(key, jax.tree_util.DictKey):
            parts.append(f"[{key.key!r}]")
        else:
            parts.append(f"[{key}]")
    return "".join(parts) or "<root>"


def leaves(tree: PyTree) -> list[Leaf]:
    """The array-like leaves of `tree`, in flattening order, with their paths."""
    with_paths = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_array_like)[0]
    return [Leaf(_format_path(path), x) for path, x in with_paths if _is_array_like(x)]


def leaf_paths(tree: PyTree) -> list[str]:
    """The path of every leaf of `tree`, arrays, scalars and others (functions) alike."""
    with_paths = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_array_like)[0]
    return [_format_path(path) for path, _ in with_paths]


def check_no_extra_leaves(saved_paths: list[str], like: PyTree, where: str) -> None:
    """A `ValueError` naming the first non-array leaf of `like` where the save had none (a
    `None`, say): the template's value there would come back as if it had been saved. (Arrays
    are checked against the manifest, by `check_match`.)"""
    saved = set(saved_paths)
    with_paths = jax.tree_util.tree_flatten_with_path(like, is_leaf=_is_array_like)[0]
    for path, x in with_paths:
        if not _is_array_like(x) and _format_path(path) not in saved:
            raise ValueError(
                f"{where} does not match the model at {_format_path(path)}: like= has {x!r} "
                "there and the saved model had no leaf there (a None?)."
            )


def describe(dtype, shape: Sequence[int]) -> str:
    """`float32[128,256]`: how a leaf is named in errors and manifests."""
    return f"{dtype}[{','.join(str(n) for n in shape)}]"


def _spec_of(leaf: Leaf) -> dict:
    """A manifest entry without its checksum: path, dtype and shape."""
    return {"path": leaf.path, "dtype": str(leaf.value.dtype), "shape": list(leaf.value.shape)}


def _check_concrete(tree_leaves: list[Leaf], argument: str) -> None:
    """Refuses abstract arrays and arrays of Python objects, before anything is written."""
    for leaf in tree_leaves:
        if getattr(leaf.value.dtype, "hasobject", False):
            raise TypeError(
                f"{argument} must hold arrays of numbers, but its leaf at {leaf.path} is an "
                "array of Python objects, which a save cannot store: make it a static field."
            )
        if isinstance(leaf.value, jax.ShapeDtypeStruct | jax.core.Tracer):
            raise TypeError(
                f"{argument} must hold concrete arrays, but its leaf at {leaf.path} is "
                f"{type(leaf.value).__name__}: save outside jax.jit and with real arrays, not "
                "the shapes from eqx.filter_eval_shape."
            )


def _stored(value) -> jax.Array | np.ndarray:
    """What Orbax writes for a leaf: the leaf itself, or for a typed key its raw key data. (NumPy
    arrays stay NumPy: as JAX arrays, int64 and float64 would lose half their bits.)"""
    return jax.random.key_data(value) if _is_key(value) else value


def _copies(arrays: list, staging: Staging) -> list:
    if jax.process_count() > 1:  # sharded between hosts: Orbax writes them from the devices
        return [jax.numpy.copy(a) if isinstance(a, jax.Array) else np.array(a) for a in arrays]
    return staging.copy(arrays)


def _bytes_of(value) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(value)).reshape(-1).view(np.uint8)


def checksum(value) -> int:
    """XXH3-64 of an array's bytes: zlib's CRC-32, several times slower, made checking a
    restored table cost more than reading it (docs/checkpoints.md, "Measured")."""
    return xxhash.xxh3_64_intdigest(_bytes_of(value))


def _matches(array, entry: dict) -> bool:
    """Whether `array` has the checksum of its manifest `entry` (saves before XXH3 have CRC-32s)."""
    if "crc32" in entry:
        return zlib.crc32(_bytes_of(array)) == entry["crc32"]
    return checksum(array) == entry["xxh3_64"]


def _manifest(tree_leaves: list[Leaf], arrays: list) -> list[dict]:
    """One entry per leaf: its spec, the checksum of its stored array and, for keys, the impl."""
    entries = []
    for leaf, array in zip(tree_leaves, arrays, strict=True):
        entry = _spec_of(leaf) | {"xxh3_64": checksum(array)}
        if _is_key(leaf.value):
            entry["key_impl"] = str(jax.random.key_impl(leaf.value))
        entries.append(entry)
    return entries


def _orbax_item(arrays: list) -> dict:
    return {_ORBAX_KEY.format(i): array for i, array in enumerate(arrays)}


def to_store(
    tree: PyTree, *, argument: str, staging: Staging | None = None
) -> tuple[dict, list[dict]]:
    """`(item, manifest)`: what Orbax writes for `tree`'s arrays, and the JSON that describes it.

    With `staging`, the item holds copies made there (in host memory; on the devices when
    sharded between hosts), so that an asynchronous write cannot see the caller's buffers
    change (a training step donates and overwrites them).
    """
    tree_leaves = leaves(tree)
    _check_concrete(tree_leaves, argument)
    arrays = [_stored(leaf.value) for leaf in tree_leaves]
    if staging is not None:
        arrays = _copies(arrays, staging)
    return _orbax_item(arrays), _manifest(tree_leaves, arrays)


def check_class(saved: str, like: PyTree, where: str) -> None:
    if name_of(type(like)) != saved:
        raise ValueError(f"{where} holds a {saved}, but like= is a {name_of(type(like))}.")


def check_match(saved: list[dict], expected: list[Leaf], where: str) -> list[int]:
    """The index in `saved` of each expected leaf; a `ValueError` naming the first leaf where a
    checkpoint and a model differ. Leaves match by path, so reordered fields still load."""
    index = {entry["path"]: i for i, entry in enumerate(saved)}
    for leaf in expected:
        if leaf.path not in index:
            raise ValueError(
                f"{where} does not match the model at {leaf.path}: the model has an array "
                f"there ({_describe_leaf(leaf)}) and the checkpoint has none."
            )
        entry = saved[index[leaf.path]]
        if (entry["dtype"], entry["shape"]) != (str(leaf.value.dtype), list(leaf.value.shape)):
            raise ValueError(
                f"{where} does not match the model at {leaf.path}: saved "
                f"{describe(entry['dtype'], entry['shape'])}, expected {_describe_leaf(leaf)}."
            )
    expected_paths = {leaf.path for leaf in expected}
    for entry in saved:
        if entry["path"] not in expected_paths:
            raise ValueError(
                f"{where} does not match the model at {entry['path']}: the checkpoint has an "
                f"array there ({describe(entry['dtype'], entry['shape'])}) and the model has none."
            )
    return [index[leaf.path] for leaf in expected]


def _describe_leaf(leaf: Leaf) -> str:
    return describe(leaf.value.dtype, leaf.value.shape)


def from_store(skeleton: PyTree, saved: list[dict], read, where: str) -> PyTree:
    """`skeleton` filled with the arrays that `read(item, restore_args)` returns from Orbax,
    after checking the manifest `saved` against `skeleton` and each array against its checksum.

    `where` names the checkpoint in errors, e.g. `"the checkpoint at runs/x/100"`.
    """
    expected = leaves(skeleton)
    order = check_match(saved, expected, where)
    item, args = _restore_args(expected, order)
    try:
        restored = read(item, args)
    except Exception as error:  # TensorStore and Orbax raise many kinds; all mean the same here
        raise ValueError(
            f"{where} is damaged: reading its arrays failed (a truncated or corrupted file?): "
            f"{error}"
        ) from error
    arrays = _verified(restored, saved, order, where)
    return _fill(skeleton, arrays, [saved[i] for i in order])


def _restore_args(expected: list[Leaf], order: list[int]) -> tuple[dict, dict]:
    """`(item, restore_args)` for Orbax: the stored shapes and dtypes, read as NumPy arrays."""
    pairs = zip(order, expected, strict=True)
    item = {_ORBAX_KEY.format(i): _stored_shape(leaf.value) for i, leaf in pairs}
    return item, {key: orbax().RestoreArgs(restore_type=np.ndarray) for key in item}


def _stored_shape(value) -> jax.ShapeDtypeStruct:
    if _is_key(value):
        return jax.eval_shape(jax.random.key_data, value)
    return jax.ShapeDtypeStruct(value.shape, value.dtype)  # NumPy's int64 stays int64


def _verified(restored: dict, saved: list[dict], order: list[int], where: str) -> list[np.ndarray]:
    """The restored arrays in the model's leaf order, each checked against its saved checksum."""
    arrays = []
    for i in order:
        array, entry = restored[_ORBAX_KEY.format(i)], saved[i]
        if not _matches(array, entry):
            raise ValueError(
                f"{where} is corrupted: the array at {entry['path']} does not match the checksum "
                "recorded when it was saved (its files changed or were damaged since)."
            )
        arrays.append(array)
    return arrays


def _fill(skeleton: PyTree, arrays: list[np.ndarray], entries: list[dict]) -> PyTree:
    """`skeleton` with its array-like leaves replaced by `arrays`, each as the leaf's kind."""
    flat, treedef = jax.tree.flatten(skeleton, is_leaf=_is_array_like)
    restored = iter(zip(arrays, entries, strict=True))
    out = [_as_leaf(*next(restored), x) if _is_array_like(x) else x for x in flat]
    return jax.tree.unflatten(treedef, out)


def _as_leaf(array: np.ndarray, entry: dict, like) -> Any:
    if "key_impl" in entry:
        return jax.random.wrap_key_data(jax.numpy.asarray(array), impl=entry["key_impl"])
    if isinstance(like, np.ndarray):
        return array
    return jax.device_put(array, getattr(like, "sharding", None))


def _is_scalar(x) -> bool:
    """A leaf that a save records in JSON: a number, a string, bytes, a NumPy scalar. (Those
    that cannot come back exactly, an IntEnum or a Decimal say, are refused.)"""
    return isinstance(x, numbers.Number | str | bytes | np.generic)


def scalar_leaves(tree: PyTree, *, argument: str) -> list[dict]:
    """The scalar leaves of `tree` as JSON that gives each back exactly: its path and value.

    Orbax stores only arrays: without this a Python int inside a model (a step count, a
    hyperparameter that is not a static field) would come back as whatever the template holds.

    **Raises:** `TypeError` naming the first scalar leaf that JSON cannot give back exactly.
    """
    entries = []
    for path, x in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_array_like)[0]:
        if _is_array_like(x) or not _is_scalar(x):
            continue
        where = _format_path(path)
        try:
            entries.append({"path": where, "value": encode(x, where)})
        except Unrecordable as why:
            raise TypeError(
                f"{argument} has a leaf that zoo.save refuses: {why}. Make it a "
                "static field (eqx.field(static=True)) or an array, or convert it to one of those."
            ) from None
    return entries


def with_scalars(skeleton: PyTree, saved: list[dict], where: str) -> PyTree:
    """`skeleton` with the scalar leaves recorded by `scalar_leaves` put back at their paths; a
    `ValueError` when the skeleton has no leaf for a recorded one there."""
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(skeleton, is_leaf=_is_array_like)
    position = {_format_path(path): i for i, (path, _) in enumerate(with_paths)}
    flat = [x for _, x in with_paths]
    for entry in saved:
        value = _scalar(entry)
        if entry["path"] not in position or not _takes_scalar(flat[position[entry["path"]]]):
            raise ValueError(
                f"{where} does not match the model at {entry['path']}: the save holds the value "
                f"{value!r} there and the model has no such non-array leaf."
            )
        flat[position[entry["path"]]] = value
    return jax.tree.unflatten(treedef, flat)


def _takes_scalar(x) -> bool:
    """A leaf a saved scalar replaces: not an array, but the 0-d shape that
    `eqx.filter_eval_shape` makes of a NumPy scalar."""
    return not _is_array_like(x) or (isinstance(x, jax.ShapeDtypeStruct) and x.shape == ())


_OLD_SCALARS = {"bool": bool, "int": int, "float": float, "str": str}


def _scalar(entry: dict):
    if "type" not in entry:
        return decode(entry["value"])
    # Format 1: {"type": "int", "value": 3} or {"type": "numpy", "dtype": ..., "value": ...}.
    if entry["type"] == "numpy":
        return np.dtype(entry["dtype"]).type(entry["value"])
    return _OLD_SCALARS[entry["type"]](entry["value"])
