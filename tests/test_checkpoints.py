"""zoo.Checkpoints: full training states, keep-last-k, asynchronous saves beside donated steps,
and processes killed mid-save."""

import multiprocessing
import pathlib
import random
import re
import signal
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zoo
from zoo._io._host_memory import Staging

from . import checkpoint_writer, kill_points
from .helpers import scrambled, tree_equal


class _Recommender(eqx.Module):
    items: zoo.Embedding
    head: zoo.MLP

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.items = zoo.Embedding(1000, 16, key=k1)
        self.head = zoo.MLP(4, 2, (3,), key=k2)


def _train_state(optimizer, seed: int) -> zoo.TrainState:
    model = _Recommender(jax.random.key(0))
    counters = [jnp.array(n, jnp.int32) for n in (0, 0, 0)]
    state = zoo.TrainState(model, optimizer.init(model), *counters, jax.random.key(0))
    return scrambled(state, seed)


def _largest_file(directory: pathlib.Path) -> pathlib.Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


_SPARSE = zoo.sparse.partition(dense=optax.adam(1e-3), embeddings=zoo.sparse.rowwise_adagrad(0.1))


@pytest.mark.parametrize("optimizer", [optax.adam(1e-3), _SPARSE], ids=["adam", "sparse"])
def test_a_train_state_round_trips_bit_for_bit(tmp_path, optimizer):
    state = _train_state(optimizer, seed=1)
    extra = {"history": {"loss": [np.float32(0.5), 0.25]}, "order": [3, 1, 2]}
    with zoo.Checkpoints(tmp_path / "run") as checkpoints:
        assert checkpoints.save(7, state, extra)
        restored, restored_extra = checkpoints.restore(like=_train_state(optimizer, seed=2))
    assert tree_equal(restored, state)
    assert restored_extra == {"history": {"loss": [0.5, 0.25]}, "order": [3, 1, 2]}


def test_keeps_the_last_k_and_saves_when_due(tmp_path):
    state = _train_state(optax.adam(1e-3), seed=1)
    with zoo.Checkpoints(tmp_path, every_steps=10, keep=2, async_save=False) as checkpoints:
        saved = [step for step in range(0, 55, 5) if checkpoints.save(step, state)]
        assert saved == [10, 20, 30, 40, 50]
        assert checkpoints.all_steps() == [40, 50]
        assert checkpoints.save(53, state, force=True)
        assert not checkpoints.save(53, state, force=True)  # already saved
        with pytest.raises(ValueError, match="already holds a checkpoint at step 53"):
            checkpoints.save(12, state, force=True)
    reopened = zoo.Checkpoints(tmp_path, every_steps=10)  # a resumed run finds its steps
    assert reopened.latest_step() == 53 and not reopened.should_save(60)
    assert reopened.should_save(63)
    reopened.close()
    with zoo.Checkpoints(tmp_path / "all", keep=None, async_save=False) as checkpoints:
        for step in range(5):
            checkpoints.save(step, state)
        assert checkpoints.all_steps() == [0, 1, 2, 3, 4]


def test_an_async_save_is_not_changed_by_donated_steps(tmp_path):
    """The trainer donates its state to every step: XLA overwrites those very buffers while the
    save may still be writing. The save must hold its own copy; the next save copies into the
    same host memory, once the first is written."""
    step = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)
    state = step({"table": jnp.zeros((1024, 1024)), "count": jnp.zeros((), jnp.int32)})
    buffer = state["table"].unsafe_buffer_pointer()
    expected = {}
    with zoo.Checkpoints(tmp_path, async_save=True) as checkpoints:
        for saved in (1, 2):
            expected[saved] = jax.tree.map(np.array, state)
            checkpoints.save(saved, state)
            for _ in range(20):
                state = step(state)
        # The steps did overwrite the saved buffers in place: the test tests something.
        assert state["table"].unsafe_buffer_pointer() == buffer
        assert float(state["table"][0, 0]) == 41.0
        for saved in (1, 2):
            restored, _ = checkpoints.restore(like=state, step=saved)
            np.testing.assert_array_equal(restored["table"], expected[saved]["table"])
            assert int(restored["count"]) == 20 * saved - 19


def test_each_save_copies_into_the_host_memory_of_the_one_before():
    staging = Staging()
    table, counts = jnp.arange(12.0).reshape(3, 4), np.arange(3)
    first = staging.copy([table, counts])
    assert first[0].ctypes.data != table.unsafe_buffer_pointer() and first[1] is not counts
    second = staging.copy([table + 1, counts])
    assert [a.ctypes.data for a in second] == [a.ctypes.data for a in first]
    np.testing.assert_array_equal(second[0], np.arange(12.0).reshape(3, 4) + 1)
    (resized,) = staging.copy([jnp.zeros((2, 2))])  # another shape: new memory
    assert resized.shape == (2, 2) and not resized.any()


def test_restore_errors_name_the_checkpoint_and_the_leaf(tmp_path):
    state = _train_state(optax.adam(1e-3), seed=1)
    checkpoints = zoo.Checkpoints(tmp_path, async_save=False)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint in"):
        checkpoints.restore(like=state)
    checkpoints.save(3, state)
    with pytest.raises(FileNotFoundError, match=re.escape("no checkpoint of step 2 ") + ".*[3]"):
        checkpoints.restore(like=state, step=2)
    other = _train_state(optax.sgd(0.1), seed=1)
    with pytest.raises(
        ValueError, match=re.escape(f"{tmp_path / '3'} does not match the model at")
    ):
        checkpoints.restore(like=other)
    message = r"holds a zoo\.TrainState, but like= is a tests\.test_checkpoints\._Recommender"
    with pytest.raises(ValueError, match=message):
        checkpoints.restore(like=state.model)
    data_file = _largest_file(tmp_path / "3" / "state")
    content = bytearray(data_file.read_bytes())
    content[len(content) // 2] ^= 0xFF
    data_file.write_bytes(bytes(content))
    with pytest.raises(ValueError, match=r"3 is corrupted: the array at \S+ does not match"):
        checkpoints.restore(like=state)
    checkpoints.close()


def test_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="keep must be None or a positive int"):
        zoo.Checkpoints(tmp_path, keep=0)
    with pytest.raises(ValueError, match="every_steps must be None or a positive int"):
        zoo.Checkpoints(tmp_path, every_steps=-5)
    with zoo.Checkpoints(tmp_path) as checkpoints:
        with pytest.raises(TypeError, match="extra must be JSON-serialisable"):
            checkpoints.save(1, {"x": jnp.zeros(3)}, extra={"f": print})
        with pytest.raises(ValueError, match="step must be >= 0"):
            checkpoints.save(-1, {"x": jnp.zeros(3)})


# --- processes killed with SIGKILL while saving --------------------------------------------------

# First a kill at each of zoo's save steps (deterministic: `kill_points`), in the first save and
# in a later one; then a bounded soak of randomly timed kills. Each kill costs about two seconds
# (a forked writer starts, then saves).
_NTH_PASSES = (1, 4)
_SOAK_KILLS = 6
_SOAK_SECONDS = 30
_SAVE_POINTS = tuple(point for point in kill_points.POINTS if point != "chunk")


def _partial_writes(directory: pathlib.Path, model_path: pathlib.Path) -> int:
    """What a killed writer left half-done: temporary checkpoint directories, arrays no
    zoo.json names, temporary zoo.json files."""
    temporary = list(directory.glob("*.orbax-checkpoint-tmp*"))
    # One save is in flight at a time, and a writer's first save waits for the removal of what
    # the last kill left: leftovers never pile up.
    assert len(temporary) <= 1, temporary
    if (model_path / "zoo.json").exists():
        named = (model_path / "zoo.json").read_text()
        arrays = [p for p in model_path.glob("arrays-*") if p.name not in named]
        temporary += arrays + list(model_path.glob("zoo.json.tmp-*"))
    return len(temporary)


def _check_what_survived(directory: pathlib.Path, model_path: pathlib.Path) -> None:
    like = checkpoint_writer.state_at(0)
    with zoo.Checkpoints(directory, keep=2) as checkpoints:
        step = checkpoints.latest_step()
        if step is not None:  # the first asynchronous save may not have completed
            state, extra = checkpoints.restore(like=like)
            assert extra == {"step": step}
            assert tree_equal(state, checkpoint_writer.state_at(step))
    if (model_path / "zoo.json").exists():  # a kill inside the first zoo.save leaves none
        model = zoo.load(model_path, like=like)
        assert tree_equal(model, checkpoint_writer.state_at(int(model["step"])))


def _writer_context():
    # Forked from a server that has imported zoo once: a fresh interpreter per kill would
    # spend its seconds importing JAX, not saving.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests.checkpoint_writer"])
    return context


@pytest.mark.slow
def test_a_writer_killed_at_each_save_step_never_leaves_a_bad_checkpoint(tmp_path):
    context = _writer_context()
    directory, model_path = tmp_path / "run", tmp_path / "model"
    partial = 0
    for point in _SAVE_POINTS:
        for nth in _NTH_PASSES:
            started = context.Event()  # unused here, but the child unpickles it: keep it alive
            writer = context.Process(
                target=checkpoint_writer.save_until_killed,
                args=(directory, model_path, started, (point, nth)),
            )
            writer.start()
            writer.join(timeout=120)
            # It died at the point, by its own SIGKILL: the point was reached.
            assert writer.exitcode == -signal.SIGKILL, (point, nth, writer.exitcode)
            partial += _partial_writes(directory, model_path)
            _check_what_survived(directory, model_path)
    assert partial > 0, "no kill left a partial write: the kill points tested nothing"


@pytest.mark.slow
def test_a_writer_killed_at_random_moments_never_leaves_a_bad_checkpoint(tmp_path):
    context = _writer_context()
    directory, model_path = tmp_path / "run", tmp_path / "model"
    kill_after = random.Random(0)
    deadline = time.monotonic() + _SOAK_SECONDS
    kills = 0
    while kills < _SOAK_KILLS and time.monotonic() < deadline:
        started = context.Event()
        writer = context.Process(
            target=checkpoint_writer.save_until_killed, args=(directory, model_path, started)
        )
        writer.start()
        assert started.wait(timeout=60), "the writer did not save within a minute"
        time.sleep(kill_after.uniform(0.0, 0.3))
        writer.kill()
        writer.join()
        kills += 1
        _partial_writes(directory, model_path)
        _check_what_survived(directory, model_path)
    assert kills >= 3, f"only {kills} kills in {_SOAK_SECONDS} s"
