import json
import re
import subprocess
import sys

import pytest

from zoo._cli import main


def _zoo(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "zoo._cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.slow
def test_train_mlp_on_digits_writes_history_and_plot(tmp_path):
    result = _zoo("train", "mlp", "--epochs", "3", "--hidden", "64", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "epoch   3" in result.stdout and "final test accuracy" in result.stdout
    assert "warning" not in (result.stdout + result.stderr).lower()
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["epoch"] == [1, 2, 3]
    assert history["eval"]["accuracy"][-1] > 0.8
    assert (tmp_path / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["eval/accuracy"] for line in lines] == history["eval"]["accuracy"]
    assert list(tmp_path.glob("events.out.tfevents.*"))  # TensorBoard's


def _ranking_history(epochs: int = 4) -> dict:
    """A recommender's history as `zoo train recommender` writes it (HR@10 = recall@10)."""
    hr = [0.1 * epoch for epoch in range(1, epochs + 1)]
    history = {
        "epoch": list(range(1, epochs + 1)),
        "train": {"loss": [1.0 / epoch for epoch in range(1, epochs + 1)]},
        "eval": {"hr@10": hr, "ndcg@10": [x / 2 for x in hr], "recall@10": list(hr)},
        "baselines": {"popularity": {"hr@10": 0.08, "ndcg@10": 0.04, "recall@10": 0.08}},
    }
    history["eval"]["mrr"] = [x / 3 for x in hr]
    return history


def _lines(axis) -> list[str]:
    return [line.get_label() for line in axis.get_lines()]


def test_plot_overlays_train_and_eval_loss_and_marks_the_best_epoch():
    from zoo._training._evaluate import history_figure

    history = {"epoch": [1, 2, 3], "train": {"loss": [0.9, 0.5, 0.4]},
               "eval": {"cross_entropy": [0.8, 0.6, 0.7], "accuracy": [0.7, 0.8, 0.75]},
               "best_epoch": 2}  # fmt: skip
    losses, accuracy = history_figure(history).get_axes()
    assert _lines(losses) == ["train loss", "eval cross_entropy", "best epoch"]
    assert (accuracy.get_title(), _lines(accuracy)) == ("eval accuracy", ["model", "best epoch"])
    assert all(tick == int(tick) for tick in losses.get_xticks())
    assert losses.get_yscale() == "linear"
    history["train"]["loss"][0] = 90.0  # a first epoch that would flatten the rest
    assert history_figure(history).get_axes()[0].get_yscale() == "log"


def test_plot_draws_a_panel_per_distinct_metric_in_a_grid(tmp_path):
    from zoo._training._evaluate import history_figure

    figure = history_figure(_ranking_history())
    visible = [axis for axis in figure.get_axes() if axis.get_visible()]
    titles = [axis.get_title() for axis in visible]
    assert titles == ["loss", "eval hr@10 = recall@10", "eval ndcg@10", "eval mrr"]
    assert _lines(visible[1]) == ["model", "popularity"]  # its baseline, dashed
    assert _lines(visible[3]) == ["model"]  # no baseline figure for mrr
    width, height = figure.get_size_inches()
    assert width / height < 1.5  # two by two, not a strip


@pytest.mark.parametrize(
    "args, complaint",
    [
        (["train", "mlp", "--epochs", "0"], "--epochs: expected a positive integer"),
        (["train", "mlp", "--batch-size", "-4"], "--batch-size: expected a positive integer"),
        (["train", "mlp", "--lr", "nan"], "--lr: expected a positive number"),
        (["train", "mlp", "--hidden", "256,x"], "--hidden: expected comma-separated"),
        (["train", "mlp", "--dataset", "cifar"], "--dataset: invalid choice: 'cifar'"),
        (["train", "mlp", "--dropout", "1.5"], r"--dropout: expected a number in \[0, 1\)"),
        (["train", "resnet"], "invalid choice: 'resnet'"),
        ([], "required: COMMAND"),
    ],
)
def test_bad_arguments_print_usage_and_exit_2(capsys, args, complaint):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: zoo")
    assert re.search(complaint, err), err


@pytest.mark.slow
def test_missing_mnist_files_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_MNIST_MIRROR", "http://127.0.0.1:9/")  # closed port: offline
    result = _zoo(
        "train",
        "mlp",
        "--dataset",
        "mnist",
        "--data-dir",
        str(tmp_path / "none"),
        "--out",
        str(tmp_path / "run"),
    )
    assert result.returncode == 1
    assert "train-images-idx3-ubyte.gz" in result.stderr and str(tmp_path / "none") in result.stderr


def test_help_is_useful(capsys):
    with pytest.raises(SystemExit):
        main(["train", "mlp", "--help"])
    text = capsys.readouterr().out
    for option in ("--dataset", "--epochs", "--batch-size", "--lr", "--hidden", "--seed", "--out"):
        assert option in text


@pytest.mark.parametrize("model", ["mlp", "recommender"])
def test_help_states_each_default_once(model, capsys):
    with pytest.raises(SystemExit):
        main(["train", model, "--help"])
    # Join argparse's wrapped lines back into one line per option.
    text = " ".join(capsys.readouterr().out.split())
    options = text.split(" --")[1:]
    assert options
    for option in options:
        assert option.count("(default") <= 1, option
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: 0)" in text  # --seed's default is still shown


# -- mistakes: one line naming the flag, exit 2 for a flag's value and 1 for a failed run, and no
# folder left behind --------------------------------------------------------------------------


def _one_line_error(capsys, args, status):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == status
    err = capsys.readouterr().err.strip()
    assert err.startswith("zoo: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    return err


def test_out_that_is_a_file_is_one_line_exit_2(capsys, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    err = _one_line_error(capsys, ["train", "mlp", "--out", str(taken / "run")], 2)
    assert re.search(r"--out .*taken is a file, not a folder", err), err
    assert taken.read_text() == "not a folder" and sorted(tmp_path.iterdir()) == [taken]


def test_batch_size_larger_than_the_data_names_the_flag(capsys, tmp_path):
    args = ["train", "recommender", "--model", "mf", "--data", "synthetic:20x30"]
    args += ["--batch-size", "100000", "--quiet", "--out", str(tmp_path / "runs" / "x")]
    err = _one_line_error(capsys, args, 2)
    assert re.search(r"--batch-size 100000 exceeds the \d+ training examples", err), err
    assert "batch_size" not in err and list(tmp_path.iterdir()) == []


def test_a_missing_dataset_folder_is_one_line_exit_1(capsys, tmp_path):
    args = ["train", "recommender", "--model", "mf", "--data", f"movielens:{tmp_path / 'none'}"]
    err = _one_line_error(capsys, [*args, "--out", str(tmp_path / "run")], 1)
    assert "MovieLens folder" in err and "--data movielens:PATH" in err and "root=" not in err
    assert list(tmp_path.iterdir()) == []


def test_missing_mnist_names_the_flag_and_leaves_no_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_MNIST_MIRROR", "http://127.0.0.1:9/")  # closed port: offline
    args = ["train", "mlp", "--dataset", "mnist", "--data-dir", str(tmp_path / "none")]
    err = _one_line_error(capsys, [*args, "--out", str(tmp_path / "run")], 1)
    assert "train-images-idx3-ubyte.gz" in err and "pass --data-dir a folder" in err
    assert list(tmp_path.iterdir()) == []  # neither the run folder nor the data folder


def test_zoo_messages_are_put_in_flags():
    from zoo._cli._main import _MLP_FLAGS, _in_flags

    message = "batch_size must be a positive int; got 0. For example: zoo.train(..., batch_size=1)"
    assert _in_flags(message, _MLP_FLAGS) == ("--batch-size must be a positive int; got 0.", True)
    message = "put the files in /d, or pass root= a folder that holds them"
    assert _in_flags(message, _MLP_FLAGS) == (
        "put the files in /d, or pass --data-dir a folder that holds them",
        True,
    )
    # Prose that merely contains a name is left alone, and does not count as naming a flag.
    assert _in_flags("one width per hidden layer", _MLP_FLAGS) == (
        "one width per hidden layer",
        False,
    )
