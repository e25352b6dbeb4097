"""Semantics of `zoo.train` that hold across its options (issue 24): each test here failed on
the trainer before the callback protocol."""

import inspect
import io
import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zoo
import zoo._cli._main as cli

from .helpers import tree_allclose, tree_equal

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return {"x": x, "y": (x[:, 0] > 0).astype(np.int32)}


def _balanced(n=64):
    """`_data(n)` with exactly half of each class."""
    data = _data(n)
    return data | {"y": (np.arange(n) % 2).astype(np.int32)}


def _mlp(seed=0):
    return zoo.MLP(4, 2, (8,), key=jax.random.key(seed))


def _train(model=None, data=None, **options):
    options = {"batch_size": 16, "key": jax.random.key(1), "callbacks": []} | options
    return zoo.train(
        _mlp() if model is None else model, _data() if data is None else data, **options
    )


def test_train_has_at_most_16_parameters():
    assert len(inspect.signature(zoo.train).parameters) <= 16


@pytest.mark.parametrize(
    ("first", "second", "named"),
    [
        (
            dict(validation_split=0.25, callbacks=[zoo.EarlyStopping("accuracy")]),
            dict(validation_split=0.25, callbacks=[zoo.EarlyStopping("cross_entropy")]),
            "EarlyStopping.monitor",
        ),
        (  # balanced classes: both splits hold out 16 rows, so only the rows differ
            dict(data=_balanced(), validation_split=0.25),
            dict(data=_balanced(), validation_split=zoo.ValidationSplit(0.25, stratify=True)),
            "stratify",
        ),
        (dict(validation_split=0.25), dict(validation_split=0.5), "validation_split"),
        (dict(), dict(loop=zoo.Loop(on_nonfinite="skip")), "on_nonfinite"),
    ],
)
def test_resume_refuses_a_change_of_what_training_computes(tmp_path, first, second, named):
    _train(epochs=1, checkpoint=zoo.Checkpointing(tmp_path), **first)
    checkpoint = zoo.Checkpointing(tmp_path, resume=True)
    with pytest.raises(ValueError, match=rf"resume=True with {named}="):
        _train(epochs=2, checkpoint=checkpoint, **second)


def test_a_figure_without_a_known_direction_needs_mode():
    with pytest.raises(ValueError, match="mode"):
        zoo.EarlyStopping("score")
    with pytest.raises(ValueError, match="mode"):
        zoo.ModelCheckpoint("unused", monitor="score")


def test_a_rising_user_score_with_mode_max_is_never_an_early_stop():
    scores = iter(range(100))
    stopping = zoo.EarlyStopping("score", mode="max", patience=1)
    model, history = _train(
        epochs=4, eval_fn=lambda model: {"score": next(scores)}, callbacks=[stopping]
    )
    assert history["stop_reason"] == "epochs" and history["best_epoch"] == 4
    assert tree_equal(model, _train(epochs=4)[0])


def test_zoo_figures_carry_their_direction():
    assert zoo.metrics.direction("accuracy") == "max" and zoo.metrics.direction("loss") == "min"
    assert zoo.metrics.direction("ndcg@10") == "max" and zoo.metrics.direction("score") is None
    with pytest.raises(ValueError, match="mode"):
        zoo.EarlyStopping("accuracy", mode="min")


def _nan_after_flagged(model, batch, key):
    logits = jax.vmap(model)(batch["x"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    return jnp.where(jnp.any(batch["bad"] > 0), jnp.nan, loss)


def test_checkpoints_hold_only_finite_states(tmp_path):
    data = _data(n=256) | {"bad": np.zeros(256, np.int32)}
    data["bad"][200] = 1
    checkpoint = zoo.Checkpointing(tmp_path, every=1, keep=2)
    with pytest.raises(zoo.NonFiniteLossError, match=r"at step (\d+)") as stop:
        _train(data=data, loss=_nan_after_flagged, epochs=1, checkpoint=checkpoint,
               loop=zoo.Loop(fused=True, steps_per_chunk=4))  # fmt: skip
    bad_step = int(str(stop.value).split("at step ")[1].split(".")[0])
    checkpoints = zoo.Checkpoints(tmp_path)
    try:
        steps = checkpoints.all_steps()
    finally:
        checkpoints.close()
    assert steps and max(steps) <= bad_step  # step s's checkpoint is the state before step s


def test_each_runs_logs_are_kept_apart(tmp_path):
    _train(epochs=2, callbacks=[zoo.Logger(tmp_path)])
    before = (tmp_path / "history.jsonl").read_text()
    with pytest.raises(ValueError, match="log_dir"):
        _train(epochs=1, callbacks=[zoo.Logger(tmp_path)])
    assert (tmp_path / "history.jsonl").read_text() == before


def _sequences(n=16, length=6, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, length + 1, n)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.float32)
    return {"x": rng.normal(size=(n, length, 3)).astype(np.float32), "mask": mask}


class _PerPosition(zoo.Rebuildable):
    weight: jax.Array

    def __init__(self, *, key):
        self.weight = jax.random.normal(key, (3,))

    def __call__(self, x, *, key=None):
        return x @ self.weight


def _masked_mse(model, batch):
    errors = jnp.square(jax.vmap(model)(batch["x"]) - 1.0)
    return jnp.sum(errors * batch["mask"]) / jnp.maximum(jnp.sum(batch["mask"]), 1.0)


_masked_mse.count_terms = lambda model, batch: jnp.sum(batch["mask"])


def test_accumulate_gives_the_whole_batchs_step_for_uneven_sequences():
    model = _PerPosition(key=jax.random.key(0))
    options = dict(loss=_masked_mse, optimizer=optax.sgd(0.5), epochs=1, batch_size=16,
                   callbacks=[], key=jax.random.key(1))  # fmt: skip
    whole, _ = zoo.train(model, _sequences(), **options)
    accumulated, _ = zoo.train(model, _sequences(), loop=zoo.Loop(accumulate=4), **options)
    assert not tree_allclose(whole, model)
    assert tree_allclose(accumulated, whole, rtol=1e-5, atol=1e-6)


def test_accumulate_is_refused_with_negatives_from_the_batch():
    def in_batch(model, batch):
        return _masked_mse(model, batch)

    in_batch.negatives_from_batch = True
    with pytest.raises(ValueError, match=r"accumulate=2 .*negatives_from_batch"):
        zoo.train(_PerPosition(key=jax.random.key(0)), _sequences(), loss=in_batch,
                  batch_size=8, loop=zoo.Loop(accumulate=2), callbacks=[])  # fmt: skip


def test_eval_data_reports_a_custom_loss():
    def loss(model, batch):
        logits = jax.vmap(model)(batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    model, history = _train(loss=loss, epochs=1, eval_data=_data(n=40, seed=3))
    expected = zoo.evaluate(model, _data(n=40, seed=3), ["cross_entropy"])["cross_entropy"]
    assert history["eval"]["loss"] == [pytest.approx(expected, rel=1e-5)]
    _, history = _train(loss=loss, epochs=1, validation_split=0.25)
    assert list(history["eval"]) == ["loss"]


def test_a_user_metric_may_not_shadow_a_built_in_one():
    with pytest.raises(ValueError, match="eval_fn returns 'accuracy'"):
        _train(eval_data=_data(n=16), eval_fn=lambda model: {"accuracy": 1.0})


def test_the_best_model_checkpoint_loads_alone(tmp_path):
    callbacks = [
        zoo.EarlyStopping("accuracy", patience=10),
        zoo.ModelCheckpoint(tmp_path / "best", monitor="accuracy"),
    ]
    model, history = _train(epochs=4, validation_split=0.25, callbacks=callbacks)
    assert history["best_epoch"] >= 1
    assert tree_equal(zoo.load(tmp_path / "best"), model)


def test_a_user_callback_stops_training_cleanly():
    class StopAfter(zoo.Callback):
        epochs: int

        def after_epoch(self, state, info):
            return state, info.epoch >= self.epochs

    model, history = _train(epochs=5, callbacks=[StopAfter(2)])
    assert history["epoch"] == [1, 2] and history["stop_reason"] == "StopAfter"
    assert tree_equal(model, _train(epochs=2)[0])


def test_progress_prints_a_line_per_epoch_off_a_terminal(capsys):
    _train(epochs=3, callbacks=[zoo.ProgressBar()])
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split()[:2] for line in lines] == [["epoch", f"{e}/3"] for e in (1, 2, 3)]


def test_a_bar_gives_way_to_the_epochs_own_line():
    out = io.StringIO()
    line = lambda history: f"done {history['epoch'][-1]}"  # noqa: E731
    _train(epochs=2, callbacks=[zoo.ProgressBar(bar=True, file=out, line=line)])
    text = out.getvalue()
    assert "epoch 1/2" in text and "epoch 2/2" in text  # the bars
    assert [row for row in text.splitlines() if row.startswith("done")] == ["done 1", "done 2"]


def test_the_cli_on_ctrl_c_writes_the_run_and_exits_130(tmp_path, monkeypatch, capsys):
    after_epoch = zoo.Logger.after_epoch

    def interrupted_at_epoch_2(self, state, info):
        if info.epoch == 2:
            raise KeyboardInterrupt
        return after_epoch(self, state, info)

    monkeypatch.setattr(zoo.Logger, "after_epoch", interrupted_at_epoch_2)
    status = cli.main(["train", "mlp", "--epochs", "4", "--hidden", "16", "--out", str(tmp_path)])
    assert status == 130
    assert json.loads((tmp_path / "history.json").read_text())["epoch"] == [1, 2]
    assert (tmp_path / "training_curve.png").exists()
    assert isinstance(zoo.load(tmp_path / "model"), zoo.MLP)
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.slow
def test_the_cli_on_sigint_writes_the_run_and_exits_130(tmp_path):
    # A shell's background job ignores SIGINT, and its children inherit that: the command
    # first restores Python's Ctrl-C handler, as in a terminal. (Not by `preexec_fn`, which
    # forks this process, where JAX's threads already run.)
    run_cli = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from zoo._cli._main import main; sys.exit(main(sys.argv[1:]))"
    )
    command = [sys.executable, "-c", run_cli, "train", "mlp", "--epochs", "1000",
               "--hidden", "16", "--out", str(tmp_path)]  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=environment | {"JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    try:
        lines = iter(process.stdout.readline, "")
        assert any(line.startswith("epoch") for line in lines), "no epoch line before the end"
        process.send_signal(signal.SIGINT)  # as Ctrl-C does
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("zoo: interrupted"), stderr
    epochs = json.loads((tmp_path / "history.json").read_text())["epoch"]
    assert 1 <= len(epochs) < 1000 and epochs == list(range(1, len(epochs) + 1))
    assert (tmp_path / "training_curve.png").exists()
    assert isinstance(zoo.load(tmp_path / "model"), zoo.MLP)


def _listed_modules() -> dict[str, set[str]]:
    """docs/architecture.md's tables of modules: each folder (`./`, `_io/`, ...) to the
    modules listed under its heading."""
    listed, folder = {}, None
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        if line.startswith("## "):
            folder = None
        elif heading := re.fullmatch(r"### `(.+/)`", line):
            folder = heading[1]
            listed[folder] = set()
        elif folder is not None and (row := re.match(r"\| `([^`]+\.py)` \|", line)):
            listed[folder].add(row[1])
    return listed


def test_architecture_lists_every_module():
    # Under its own folder's heading, and nothing that is gone: a module moved to another
    # folder, or merged into another module, must move in the map too.
    src = ROOT / "src" / "zoo"
    modules: dict[str, set[str]] = {}
    for path in src.rglob("*.py"):
        folder = path.parent.relative_to(src).as_posix()
        modules.setdefault("./" if folder == "." else f"{folder}/", set()).add(path.name)
    listed = _listed_modules()
    missing = {
        folder: sorted(unlisted)
        for folder, names in modules.items()
        if (unlisted := names - listed.get(folder, set()) - {"__init__.py"})
    }
    stale = {
        folder: sorted(gone)
        for folder, names in listed.items()
        if (gone := names - modules.get(folder, set()))
    }
    assert not missing, f"docs/architecture.md does not list {missing}"
    assert not stale, f"docs/architecture.md lists modules that are gone: {stale}"
