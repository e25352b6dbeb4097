"""A process that saves until it is killed: the other side of the SIGKILL test.

Every state it saves is a pure function of its step, so whatever survives a kill can be checked
bit for bit against `state_at(step)`.
"""

import pathlib

import jax
import jax.numpy as jnp

import zoo

from . import kill_points

# Large enough that a write takes a while, so that kills land inside writes, not between them.
_ROWS, _DIM = 4096, 256  # 4 MiB


def state_at(step: int) -> dict:
    return {
        "table": jnp.full((_ROWS, _DIM), step, jnp.float32),
        "accumulator": jnp.arange(_ROWS, dtype=jnp.float32) * step,
        "step": jnp.array(step, jnp.int32),
        "key": jax.random.key(step),
    }


def save_until_killed(
    directory: pathlib.Path, model_path: pathlib.Path, started, kill_at=None
) -> None:
    """Saves checkpoints (asynchronously, keeping 2) and a `zoo.save` per step, forever; with
    `kill_at=(point, nth)`, until it kills itself there (see `kill_points`)."""
    if kill_at is not None:
        kill_points.arm(*kill_at)
    with zoo.Checkpoints(directory, keep=2) as checkpoints:
        step = (checkpoints.latest_step() or 0) + 1
        while True:
            state = state_at(step)
            checkpoints.save(step, state, {"step": step})
            zoo.save(model_path, state, overwrite=True)
            started.set()
            step += 1
