"""zoo.train's runs: checked before the first step, resumed only as the run they continue, one
writer per folder, and a stopped run hands back what trained."""

import errno
import math
import os
import pathlib
import re
import socket

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zoo
import zoo._io._array_files
from zoo._training._step import Programs

from .helpers import train, tree_equal


def _data(n=64):
    rng = np.random.default_rng(0)
    return {
        "x": rng.normal(size=(n, 5)).astype(np.float32),
        "y": rng.integers(0, 3, n).astype(np.int32),
    }


def _with_nan_input(data: dict, row: int) -> dict:
    x = data["x"].copy()
    x[row, 1] = np.nan
    return data | {"x": x}


def _batches(n=64, size=16):
    data = _data(n)
    return [{k: jnp.asarray(v[i : i + size]) for k, v in data.items()} for i in range(0, n, size)]


def _model(hidden=16):
    return zoo.MLP(5, 3, (hidden,), key=jax.random.key(0))


_OPTIONS = dict(optimizer=optax.adam(1e-2), batch_size=16, key=jax.random.key(1), progress=False)


def _train(data=None, model=None, **kwargs):
    data = _data() if data is None else data
    return train(_model() if model is None else model, data, **(_OPTIONS | kwargs))


def _listing(folder: pathlib.Path) -> dict[str, bytes | None]:
    return {
        str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None
        for path in folder.rglob("*")
    }


def _without_time(history: dict) -> dict:
    return {key: value for key, value in history.items() if key != "time"}


def _count_steps(monkeypatch) -> list[int]:
    """Counts the calls of the trainer's compiled step programs."""
    calls = [0]
    original = Programs.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)

        def counted(program):
            def call(*arguments):
                calls[0] += 1
                return program(*arguments)

            return call

        self.run_steps, self.one_step = counted(self.run_steps), counted(self.one_step)

    monkeypatch.setattr(Programs, "__init__", init)
    return calls


def _custom_loss(model, batch):
    return zoo.losses.cross_entropy(model, batch, None)


# -- a resumed run is the run it continues ------------------------------------------------------

_CHANGED = {
    "data": (dict(data=_data(48)), "'64 examples'", "'48 examples'"),
    "batch_size": (dict(batch_size=32), "16", "32"),
    "last_batch": (dict(last_batch="drop"), "'keep'", "'drop'"),
    "accumulate": (dict(accumulate=2), "1", "2"),
    "precision": (dict(precision="bfloat16"), "'float32'", "'bfloat16'"),
    "loss": (dict(loss=_custom_loss), "'cross_entropy'", "'tests.test_run_integrity._custom_loss'"),
    "key": (dict(key=jax.random.key(2)), r"\[0, 1\]", r"\[0, 2\]"),
    "model": (dict(model=_model(hidden=8)), r"float32\[16,5\]", r"float32\[8,5\]"),
    "optimizer": (dict(optimizer=optax.sgd(1e-2)), r"int32\[\]", "no array"),
}


@pytest.mark.parametrize("argument", list(_CHANGED))
def test_each_recorded_run_argument_changed_on_resume_is_refused_naming_both(tmp_path, argument):
    _train(checkpoint_dir=tmp_path, epochs=1)
    before = _listing(tmp_path)
    change, recorded, given = _CHANGED[argument]
    with pytest.raises(ValueError) as error:
        _train(checkpoint_dir=tmp_path, epochs=2, resume=True, **change)
    message = str(error.value)
    assert re.search(f"recorded {recorded}, given {given}", message), message
    assert argument in message
    assert _listing(tmp_path) == before


def test_the_same_run_resumes_and_more_epochs_are_not_a_change(tmp_path):
    _train(checkpoint_dir=tmp_path, epochs=1)
    model, history = _train(checkpoint_dir=tmp_path, epochs=2, resume=True)
    expected, expected_history = _train(epochs=2)
    assert tree_equal(model, expected)
    assert _without_time(history) == _without_time(expected_history)


@pytest.mark.parametrize("resume", [True, False])
def test_a_zoo_save_folder_is_refused_untouched(tmp_path, resume):
    zoo.save(tmp_path / "model", _model())
    before = _listing(tmp_path)
    with pytest.raises(ValueError, match=r"Checkpointing directory .* is not a zoo training run"):
        _train(checkpoint_dir=tmp_path / "model", resume=resume)
    assert _listing(tmp_path) == before


def test_any_folder_without_a_run_record_is_refused_untouched(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"is not a zoo training run: it holds notes\.txt"):
        _train(checkpoint_dir=tmp_path, resume=True)
    assert _listing(tmp_path) == {"notes.txt": b"mine"}


def test_a_new_run_does_not_write_over_a_run(tmp_path):
    _train(checkpoint_dir=tmp_path)
    before = _listing(tmp_path)
    with pytest.raises(ValueError, match=r"already holds a training run .*pass resume=True"):
        _train(checkpoint_dir=tmp_path)
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("exists", [True, False])
def test_an_empty_or_missing_folder_starts_a_new_run(tmp_path, exists):
    folder = tmp_path / "run"
    if exists:
        folder.mkdir()
    model, _ = _train(checkpoint_dir=folder, resume=True)
    expected, _ = _train()
    assert tree_equal(model, expected)
    assert (folder / "zoo-run.json").is_file()


def test_a_checkpoint_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "run").write_text("x")
    with pytest.raises(
        ValueError, match=r"Checkpointing directory must be a folder, but .*run is a file"
    ):
        _train(checkpoint_dir=tmp_path / "run")


# -- two runs, one folder; a full disk ----------------------------------------------------------


def test_a_second_writer_is_refused_at_once(tmp_path, monkeypatch):
    steps = _count_steps(monkeypatch)
    in_use = rf"Checkpointing directory: .* in use .*pid {os.getpid()}"
    # Another writer holds the folder.
    with zoo.Checkpoints(tmp_path / "run"), pytest.raises(RuntimeError, match=in_use):
        _train(checkpoint_dir=tmp_path / "run")
    assert steps == [0]
    _train(checkpoint_dir=tmp_path / "other")  # released on close, as after a run
    with zoo.Checkpoints(tmp_path / "other") as checkpoints:
        assert checkpoints.latest_step() == 4


def test_a_lock_file_left_by_a_dead_process_does_not_hold_the_folder(tmp_path):
    # The kernel drops a dead process's flock; only its file, naming it, stays behind.
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".zoo-lock").write_text("999999999\n")
    _train(checkpoint_dir=folder)
    assert (folder / ".zoo-lock").read_text() == f"{os.getpid()}\n"


def test_a_full_disk_fails_the_save_naming_the_folder_and_step(tmp_path, monkeypatch):
    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(zoo._io._array_files, "_pwrite_all", full)
    with pytest.raises(OSError, match=rf"step 4 in {re.escape(str(tmp_path))} failed: no space"):
        _train(checkpoint_dir=tmp_path, checkpoint_every=4, epochs=2)
    monkeypatch.undo()
    with zoo.Checkpoints(tmp_path) as checkpoints:  # the folder is free again
        assert checkpoints.latest_step() is None


# -- nothing trained, yet it looks fine ---------------------------------------------------------


def test_an_epoch_with_every_step_skipped_records_nan_and_warns():
    data = _data() | {"x": np.full((64, 5), np.nan, np.float32)}
    with pytest.warns(RuntimeWarning, match="epoch 1: all of its 4 steps .* nothing trained"):
        model, history = _train(data, on_nonfinite="skip", grad_norm=True)
    assert math.isnan(history["train"]["loss"][0]) and math.isnan(history["train"]["grad_norm"][0])
    assert history["train"]["nonfinite_steps"] == [4]
    assert tree_equal(model, _model())


def test_a_schedule_that_returns_a_negative_learning_rate_stops_the_step():
    # 0.01 at step 0, 0 at step 4 (the first of epoch 2), negative from step 5.
    schedule = optax.linear_schedule(0.01, -0.01, transition_steps=8)
    optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)
    with pytest.raises(ValueError, match=r"^learning_rate: .* negative or non-finite") as stopped:
        _train(optimizer=optimizer, epochs=3)
    assert isinstance(stopped.value, zoo.TrainingStopped)
    expected, expected_history = _train(optimizer=optimizer, epochs=1)
    assert tree_equal(stopped.value.model, expected)
    assert _without_time(stopped.value.history) == _without_time(expected_history)


def test_a_schedule_that_decays_to_zero_is_accepted():
    schedule = optax.cosine_decay_schedule(0.01, decay_steps=4)  # 0.0 from step 4 on
    optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)
    _, history = _train(optimizer=optimizer, epochs=2)
    assert history["train"]["learning_rate"][-1] == 0.0


@pytest.mark.parametrize(
    ("returned", "error", "message"),
    [
        ([0.5], TypeError, "eval_fn must return a mapping from names to numbers; got list"),
        ({"score": "high"}, TypeError, "eval_fn must return a mapping .*'score': 'high'"),
        ({"score": float("nan")}, ValueError, "eval_fn returned 'score': nan, not a finite"),
    ],
)
def test_what_eval_fn_returns_is_checked(returned, error, message):
    with pytest.raises(error, match=message):
        _train(eval_fn=lambda model: returned)


# -- every argument checked before the first step -----------------------------------------------


@pytest.mark.parametrize(
    ("eval_data", "message"),
    [
        (_data(8) | {"x": np.zeros((8, 6), np.float32)}, r"eval_data does not fit the model"),
        ({"x": _data(8)["x"]}, r"eval_data must hold .* and no 'y'"),
        (
            _with_nan_input(_data(8), row=3),
            r"eval_data\['x'\] must be finite; 1 of 8 examples .*the first at row 3",
        ),
    ],
    ids=["features", "no-labels", "nan-inputs"],
)
def test_bad_eval_data_is_refused_before_the_first_step(monkeypatch, eval_data, message):
    steps = _count_steps(monkeypatch)
    with pytest.raises(ValueError, match=message):
        _train(eval_data=eval_data)
    assert steps == [0]


def test_a_generator_for_several_epochs_is_refused_before_the_first_step(monkeypatch):
    steps = _count_steps(monkeypatch)
    with pytest.raises(ValueError, match=r"data is a one-shot iterator .* epochs=2"):
        _train((batch for batch in _batches()), epochs=2)
    assert steps == [0]
    _, history = _train((batch for batch in _batches()), epochs=1)  # one pass is fine
    assert history["step"] == [4]


# -- a stopped run hands back the last good model -----------------------------------------------


class _Batches:
    """Clean batches; from epoch `poisoned_from` on a NaN in each, or a KeyboardInterrupt after
    the first batch of epoch `interrupt_in`."""

    def __init__(self, poisoned_from=None, interrupt_in=None):
        self._epoch, self._poisoned_from, self._interrupt_in = 0, poisoned_from, interrupt_in

    def __iter__(self):
        self._epoch += 1
        for index, batch in enumerate(_batches()):
            if self._epoch == self._interrupt_in and index == 1:
                raise KeyboardInterrupt
            if self._poisoned_from is not None and self._epoch >= self._poisoned_from:
                batch = dict(batch, x=batch["x"].at[0, 0].set(np.nan))
            yield batch


def _two_epochs():
    return _train(_batches(), epochs=2)


@pytest.mark.parametrize("checkpoints", [False, True])
def test_a_non_finite_loss_hands_back_the_last_good_model(tmp_path, checkpoints):
    folder = tmp_path / "run" if checkpoints else None
    with pytest.raises(zoo.NonFiniteLossError, match="at step 8") as stopped:
        _train(_Batches(poisoned_from=3), epochs=4, checkpoint_dir=folder)
    assert isinstance(stopped.value, FloatingPointError)
    expected, expected_history = _two_epochs()
    assert tree_equal(stopped.value.model, expected)
    assert _without_time(stopped.value.history) == _without_time(expected_history)
    assert stopped.value.epochs == 2


class _Root(eqx.Module):
    weight: jax.Array

    def __call__(self, x):
        return jnp.sqrt(jnp.abs(self.weight) * x)


def _root_loss(model, batch):
    # At x = 0 the loss is 0, and its gradient 0 / 0 = nan.
    return jnp.mean(jax.vmap(model)(batch["x"]))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("grad_norm", [True, False])
def test_a_non_finite_gradient_behind_a_finite_loss_at_the_last_step_stops_training(
    fused, grad_norm
):
    # The one step of the run has a finite loss and a nan gradient: nothing after it would
    # show a non-finite loss, so the model's check after the steps (or the gradient norm) is
    # all that stops a nan model from coming back as trained.
    model = _Root(jnp.ones(()))
    data = {"x": np.zeros(8, np.float32)}
    with pytest.raises(zoo.NonFiniteLossError, match="at step 0") as stopped:
        _train(data, model, loss=_root_loss, batch_size=8, fused=fused, grad_norm=grad_norm)
    assert tree_equal(stopped.value.model, model)


class _Masked(eqx.Module):
    weight: jax.Array
    bias: jax.Array  # -inf where an output is masked out, by design

    def __call__(self, x):
        return x @ self.weight + self.bias


def test_an_array_that_starts_non_finite_by_design_does_not_stop_training():
    # The check after each chunk looks at the arrays that were finite when training began.
    model = _Masked(jnp.ones((5, 3)), jnp.array([0.0, 0.0, -jnp.inf]))
    trained, history = _train(
        model=model, loss=lambda m, b: jnp.mean(jax.nn.logsumexp(jax.vmap(m)(b["x"]), -1))
    )
    assert np.isneginf(trained.bias[2]) and np.all(np.isfinite(trained.weight))
    assert np.isfinite(history["train"]["loss"]).all()


def test_the_gradient_norm_is_recorded_only_when_asked():
    _, history = _train()
    assert "grad_norm" not in history["train"]
    _, history = _train(grad_norm=True)
    assert history["train"]["grad_norm"][0] > 0


def test_a_non_finite_loss_in_the_first_epoch_hands_back_the_given_model():
    data = _data() | {"x": np.full((64, 5), np.nan, np.float32)}
    with pytest.raises(zoo.TrainingStopped) as stopped:
        _train(data, epochs=3)
    assert tree_equal(stopped.value.model, _model())
    assert stopped.value.history["epoch"] == []


@pytest.mark.parametrize("checkpoints", [False, True])
def test_ctrl_c_in_on_epoch_hands_back_the_last_completed_epoch(tmp_path, checkpoints):
    def on_epoch(history):
        if history["epoch"][-1] == 2:
            raise KeyboardInterrupt

    folder = tmp_path / "run" if checkpoints else None
    with pytest.raises(zoo.TrainingInterrupted) as stopped:
        _train(_batches(), epochs=4, on_epoch=on_epoch, checkpoint_dir=folder)
    assert isinstance(stopped.value, KeyboardInterrupt)
    expected, expected_history = _two_epochs()
    assert tree_equal(stopped.value.model, expected)
    assert _without_time(stopped.value.history) == _without_time(expected_history)


def test_ctrl_c_from_the_data_mid_epoch_hands_back_the_last_completed_epoch():
    with pytest.raises(KeyboardInterrupt) as stopped:
        _train(_Batches(interrupt_in=3), epochs=4)
    assert isinstance(stopped.value, zoo.TrainingStopped)
    expected, expected_history = _two_epochs()
    assert tree_equal(stopped.value.model, expected)
    assert _without_time(stopped.value.history) == _without_time(expected_history)


# -- the multi-process entry point ----------------------------------------------------------------


def test_initialize_without_a_coordinator_raises_instead_of_aborting():
    # A port nothing listens on. JAX's own wait would abort the process after the timeout.
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    address = f"127.0.0.1:{port}"
    with pytest.raises(TimeoutError, match=rf"coordinator_address='{address}': no coordinator"):
        zoo.distributed.initialize(address, num_processes=2, process_id=1, timeout=1)
