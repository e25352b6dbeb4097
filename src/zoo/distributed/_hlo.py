"""Reading a compiled program's communication: what the collectives deliver to each device."""

import re

import jax
import numpy as np

_COLLECTIVE = re.compile(
    r"= (.*?) (all-gather|all-reduce|all-to-all|reduce-scatter|collective-permute)(-start)?\("
)
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "f64": 8, "s64": 8, "u64": 8}


def _dims(text: str) -> list[int]:
    return [int(d) for d in text.split(",") if d]


def collectives(hlo: str) -> list[tuple[str, list[tuple[str, list[int]]]]]:
    """`(op, [(dtype, dims), ...])` of every collective in the HLO text of one device's program."""
    found = []
    for result, op, _ in _COLLECTIVE.findall(hlo):
        shapes = re.findall(r"(\w+)\[([\d,]*)\]", result)
        found.append((op, [(dtype, _dims(dims)) for dtype, dims in shapes]))
    return found


def bytes_per_device(compiled: jax.stages.Compiled) -> int:
    """The bytes that the collectives of one run of `compiled` deliver to each device (the
    sizes of their results: what arrives, not how a ring or a tree gets it there)."""
    hlo = compiled.as_text()
    return sum(
        int(np.prod(dims, dtype=np.int64)) * _BYTES.get(dtype, 4)
        for _, shapes in collectives(hlo)
        for dtype, dims in shapes
    )
