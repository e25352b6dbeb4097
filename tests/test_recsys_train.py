"""Recommenders trained through zoo.train beat the popularity baseline; the CLI."""

import json
import re

import equinox as eqx
import numpy as np
import optax
import pytest

import zoo
from zoo._cli import _recipes as recipes, main

from . import helpers
from .helpers import planted_split


def test_cli_matrix_factorization_with_sparse_adagrad_doubles_popularity(tmp_path, capsys):
    # zoo.train with a zoo.sparse optimizer, BPR with negatives that skip known positives;
    # early stopping on validation NDCG@10, the test split reported once, the run saved.
    args = ["train", "recommender", "--model", "mf", "--optimizer", "sparse-adagrad",
            "--data", "synthetic:500x200", "--dim", "16", "--epochs", "20",
            "--batch-size", "250", "--out", str(tmp_path), "--quiet"]  # fmt: skip
    assert main(args) == 0
    history = json.loads((tmp_path / "history.json").read_text())
    test, popularity = history["test"], history["baselines"]["popularity"]
    assert test["model"]["hr@10"] >= 2 * popularity["hr@10"]
    assert history["best_epoch"] <= len(history["epoch"]) <= 20
    assert history["stop_reason"] in ("early_stopping", "epochs")
    assert "leave-one-out test split: full ranking of all 200 items" in history["protocol"]
    assert set(history["baselines"]) == {"popularity", "random"}
    assert (tmp_path / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert re.search(r"\| model +\| [\d.]+ \(x[\d.]+\)", out) and "| popularity |" in out
    # zoo recommend reads the run: a user's top 5, in raw ids, none of them already seen.
    assert main(["recommend", str(tmp_path), "--user", "7", "-k", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "user 7:" and len(lines) == 6
    recommended = {int(line.split()[2]) for line in lines[1:]}
    _, data = recipes.load_run(tmp_path)
    seen = set(data.item_ids[data["item"][data["user"] == 7]].tolist())
    assert recommended.isdisjoint(seen) and len(recommended) == 5
    with pytest.raises(SystemExit) as exit_info:
        main(["recommend", str(tmp_path), "--user", "100000"])
    assert exit_info.value.code == 2 and "--user" in capsys.readouterr().err


def test_two_tower_with_in_batch_softmax_and_adam_doubles_popularity(getkey):
    train, test = planted_split(getkey())
    model = zoo.TwoTower(train.num_users, train.num_items, dim=16, hidden=(32,),
                         item_features=np.arange(200) % 5, similarity="cosine",
                         temperature=0.1, key=getkey())  # fmt: skip
    loss = zoo.recsys.in_batch_softmax_loss(item_counts=zoo.recsys.item_counts(train, 200))
    model, _ = helpers.train(model, train, loss=loss, optimizer=optax.adam(1e-2), epochs=20,
                                 batch_size=250, key=getkey(), progress=False)  # fmt: skip
    report = zoo.recsys.evaluate_ranking(model, train, test, k=10)
    assert report["model"]["hr@10"] >= 2 * report["popularity"]["hr@10"]


def test_cli_recipes_build_dlrm_on_interactions(getkey):
    train, _ = planted_split(getkey())
    # Shapes only: the initialisation is traced, not compiled.
    model = eqx.filter_eval_shape(recipes.build_model, "dlrm", train, 8, getkey())
    assert isinstance(model, zoo.recsys.DLRMRecommender) and model.item_counts.shape == (200,)
    assert model.dlrm.vocab_sizes == (500, 200) and model.dlrm.dim == 8
    assert callable(recipes.build_loss("bce", train))
    assert isinstance(recipes.build_optimizer("adam", 0.1), optax.GradientTransformation)


@pytest.mark.parametrize(
    "args, complaint",
    [
        ([], "the following arguments are required: --model"),
        (["--model", "ncf"], "--model: invalid choice: 'ncf'"),
        (["--model", "mf", "--data", "criteo"], "--data: expected synthetic"),
        (["--model", "mf", "--data", "synthetic:100x5"], "--data: expected synthetic"),
        (["--model", "mf", "--optimizer", "sgd"], "--optimizer: invalid choice"),
        (["--model", "mf", "--lr", "0"], "--lr: expected a positive number"),
        (["--model", "dlrm", "--loss", "softmax"], "--loss softmax needs a factorised model"),
    ],
)
def test_bad_recommender_arguments_print_usage_and_exit_2(capsys, tmp_path, args, complaint):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "recommender", *args, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: zoo") and re.search(re.escape(complaint), err), err


def test_missing_movielens_folder_is_a_clear_error(tmp_path, capsys):
    args = ["train", "recommender", "--model", "mf", "--data", f"movielens:{tmp_path / 'ml'}"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 1
    assert "u.data" in capsys.readouterr().err


def test_cli_recommender_on_ctrl_c_keeps_what_trained_and_exits_130(tmp_path, monkeypatch, capsys):
    after_epoch = zoo.Logger.after_epoch

    def interrupted_at_epoch_3(self, state, info):
        if info.epoch == 3:
            raise KeyboardInterrupt
        return after_epoch(self, state, info)

    monkeypatch.setattr(zoo.Logger, "after_epoch", interrupted_at_epoch_3)
    args = ["train", "recommender", "--model", "mf", "--data", "synthetic:200x100",
            "--epochs", "10", "--out", str(tmp_path), "--quiet"]  # fmt: skip
    assert main(args) == 130
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["epoch"][:2] == [1, 2] and len(history["epoch"]) <= 3  # not the 10 asked
    assert "hr@10" in history["test"]["model"]
    model, data = recipes.load_run(tmp_path)  # the run folder serves `zoo recommend`
    assert isinstance(model, zoo.MatrixFactorization) and model.num_items == data.num_items
    assert capsys.readouterr().err.strip().startswith("zoo: interrupted")
