"""zoo.train with checkpoints: a run stopped at any point and resumed equals an uninterrupted
one, bit for bit."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import optax
import pytest

import zoo
from zoo._training._step import Programs

from .helpers import train, tree_equal

ROOT = pathlib.Path(__file__).resolve().parents[1]


class Crash(Exception):
    pass


def _crash_after(monkeypatch, calls: int) -> None:
    """Makes the trainer's compiled programs raise after `calls` calls, like a killed process."""
    original = Programs.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        count = [0]

        def counted(program):
            def call(*arguments):
                count[0] += 1
                if count[0] > calls:
                    raise Crash
                return program(*arguments)

            return call

        self.run_steps, self.one_step = counted(self.run_steps), counted(self.one_step)

    monkeypatch.setattr(Programs, "__init__", init)


def _data(n=100):
    rng = np.random.default_rng(0)
    return {
        "x": rng.normal(size=(n, 5)).astype(np.float32),
        "y": rng.integers(0, 3, n).astype(np.int32),
    }


def _run(directory, resume=False, **kwargs):
    model = zoo.MLP(5, 3, (16,), dropout=0.1, key=jax.random.key(0))
    options = dict(
        optimizer=optax.adam(1e-2),
        epochs=3,
        batch_size=16,
        key=jax.random.key(1),
        checkpoint_dir=directory,
        checkpoint_every=4,
        eval_data=_data(30),
        progress=False,
    )
    return train(model, _data(), resume=resume, **(options | kwargs))


def _without_time(history):
    return {key: value for key, value in history.items() if key != "time"}


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("crash_after", [1, 3, 6])
def test_resumed_training_equals_uninterrupted_training(tmp_path, monkeypatch, fused, crash_after):
    # 100 examples in batches of 16: 6 full batches and one of 4 per epoch, 21 steps in all;
    # checkpoints every 4 steps and at each epoch's end.
    expected_model, expected_history = _run(tmp_path / "whole", fused=fused)
    with monkeypatch.context() as patch:
        _crash_after(patch, crash_after)
        with pytest.raises(Crash):
            _run(tmp_path / "stopped", fused=fused)
    model, history = _run(tmp_path / "stopped", resume=True, fused=fused)
    assert tree_equal(model, expected_model)
    assert _without_time(history) == _without_time(expected_history)


def test_resume_without_a_checkpoint_starts_afresh(tmp_path):
    model, history = _run(tmp_path / "new", resume=True, epochs=1)
    expected, expected_history = _run(tmp_path / "other", epochs=1)
    assert tree_equal(model, expected)
    assert history["step"] == expected_history["step"] == [7]


def test_keep_the_last_checkpoints(tmp_path):
    _run(tmp_path, keep=2)
    with zoo.Checkpoints(tmp_path) as checkpoints:
        assert checkpoints.all_steps() == [20, 21]


_KILLED_RUN = textwrap.dedent("""
    import sys, jax, numpy as np, optax, zoo
    if len(sys.argv) > 2:  # a kill point and the pass to die at
        from tests import kill_points
        kill_points.arm(sys.argv[2], int(sys.argv[3]))
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(400, 5)).astype(np.float32),
            "y": rng.integers(0, 3, 400).astype(np.int32)}
    model = zoo.MLP(5, 3, (16,), key=jax.random.key(0))
    zoo.train(model, data, optimizer=optax.adam(1e-2), epochs=4, batch_size=8,
              key=jax.random.key(1), loop=zoo.Loop(steps_per_chunk=5), callbacks=[],
              checkpoint=zoo.Checkpointing(sys.argv[1], every=5, resume=True))
""")

# Where a training run is killed, in order: inside a compiled chunk, halfway through a
# checkpoint's array file, after a checkpoint's arrays but before Orbax commits it, and between
# two array files. Each restart resumes from what the last one left.
_WITH_TESTS = {**os.environ, "PYTHONPATH": str(ROOT)}  # the script imports tests.kill_points
_TRAINING_KILLS = (("chunk", 13), ("array-torn", 30), ("finalize", 4), ("array-written", 50))


def _run_script(script, directory, *kill_at, timeout=300):
    return subprocess.run(
        [sys.executable, str(script), str(directory), *map(str, kill_at)],
        timeout=timeout,
        capture_output=True,
        text=True,
        env=_WITH_TESTS,
    )


@pytest.mark.slow
def test_a_run_killed_at_each_kind_of_moment_resumes_to_the_same_model(tmp_path):
    """SIGKILL at deterministic points of training and saving, then once at a random moment
    (a bounded soak); each restart resumes; the end is as if never killed."""
    directory = tmp_path / "killed"
    script = tmp_path / "run.py"
    script.write_text(_KILLED_RUN)
    for point, nth in _TRAINING_KILLS:
        killed = _run_script(script, directory, point, nth)
        assert killed.returncode == -signal.SIGKILL, (point, nth, killed.stderr[-2000:])
    soak = subprocess.Popen(
        [sys.executable, str(script), str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_WITH_TESTS,
    )
    time.sleep(float(np.random.default_rng(1).uniform(2.0, 6.0)))
    os.kill(soak.pid, signal.SIGKILL)
    soak.wait(timeout=30)
    finished = _run_script(script, directory)
    assert finished.returncode == 0, finished.stderr
    uninterrupted = tmp_path / "whole"
    assert _run_script(script, uninterrupted).returncode == 0
    with zoo.Checkpoints(uninterrupted) as whole, zoo.Checkpoints(directory) as killed:
        assert whole.latest_step() == killed.latest_step() == 200
        expected, expected_extra = whole.restore(_snapshot_like())
        got, extra = killed.restore(_snapshot_like())
    assert tree_equal(got, expected)
    assert _without_time(extra["history"]) == _without_time(expected_extra["history"])


def _snapshot_like():
    import equinox as eqx

    from zoo._training._step import StepTotals, initial_state

    model = zoo.MLP(5, 3, (16,), key=jax.random.key(0))
    optimizer = optax.adam(1e-2)
    state = initial_state(model, optimizer.init(eqx.filter(model, eqx.is_array)), jax.random.key(1))
    return {"state": eqx.filter(state, eqx.is_array), "epoch_totals": StepTotals.zeros()}


class _PoisonedFromEpoch:
    """Clean batches in the first epoch, a NaN in every batch from the second on."""

    def __init__(self, batches):
        self._batches, self._epoch = batches, 0

    def __len__(self):
        return len(self._batches)

    def __iter__(self):
        self._epoch += 1
        for batch in self._batches:
            if self._epoch >= 2:
                batch = dict(batch, x=batch["x"].at[0, 0].set(np.nan))
            yield batch


def test_a_non_finite_loss_keeps_the_last_good_checkpoint(tmp_path):
    data = _data(64)
    batches = [{k: jax.numpy.asarray(v[i : i + 32]) for k, v in data.items()} for i in (0, 32)]
    model = zoo.MLP(5, 3, (16,), key=jax.random.key(0))
    options = dict(optimizer=optax.adam(1e-2), key=jax.random.key(1), progress=False)
    with pytest.raises(FloatingPointError, match="at step 2"):
        train(model, _PoisonedFromEpoch(batches), epochs=3, checkpoint_dir=tmp_path, **options)
    one_epoch, _ = train(model, batches, epochs=1, **options)
    with zoo.Checkpoints(tmp_path) as checkpoints:
        assert checkpoints.all_steps() == [2]  # the end of epoch 1, and nothing after it
    resumed, history = train(
        model, batches, epochs=1, checkpoint_dir=tmp_path, resume=True, **options
    )
    assert tree_equal(resumed, one_epoch)
    assert history["epoch"] == [1]


def test_a_resumed_run_stops_early_at_the_same_epoch_with_the_same_model(tmp_path, monkeypatch):
    options = dict(
        epochs=8,
        early_stopping=zoo.EarlyStopping("cross_entropy", patience=1),
        steps_per_chunk=1,  # a compiled run per step, so that the crash below lands in epoch 6
    )
    expected_model, expected_history = _run(tmp_path / "whole", **options)
    assert expected_history["stop_reason"] == "early_stopping"
    assert expected_history["best_epoch"] < expected_history["epoch"][-1] < 8
    logs = tmp_path / "stopped" / "logs"
    with monkeypatch.context() as patch:
        _crash_after(patch, 38)  # a compiled run per step: in epoch 6, after the best (5th)
        with pytest.raises(Crash):
            _run(tmp_path / "stopped", log_dir=logs, **options)
    model, history = _run(tmp_path / "stopped", resume=True, log_dir=logs, **options)
    assert tree_equal(model, expected_model)
    assert _without_time(history) == _without_time(expected_history)
    lines = (logs / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == history["epoch"]  # each once
    # Resuming a run that has stopped takes no step and returns the same best model.
    again, _ = _run(tmp_path / "stopped", resume=True, **options)
    assert tree_equal(again, expected_model)


def test_float16_with_accumulation_resumes_bit_for_bit(tmp_path, monkeypatch):
    # The loss scale lives in the optimizer state, so the checkpoint carries it.
    options = dict(precision="float16", accumulate=2)
    expected_model, expected_history = _run(tmp_path / "whole", **options)
    with monkeypatch.context() as patch:
        _crash_after(patch, 9)
        with pytest.raises(Crash):
            _run(tmp_path / "stopped", **options)
    model, history = _run(tmp_path / "stopped", resume=True, **options)
    assert tree_equal(model, expected_model)
    assert _without_time(history) == _without_time(expected_history)
    assert "loss_scale" in history["train"]
