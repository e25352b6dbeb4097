"""Logs a person can look at: one JSON line per epoch, and TensorBoard event files when asked."""

import json
import os
import pathlib

from .. import _checks

LOG_FILE = "history.jsonl"


def check_logging(log_dir, tensorboard: bool) -> None:
    if log_dir is not None:
        _checks.path("log_dir", log_dir, example="zoo.train(..., log_dir='runs/x')")
    if tensorboard and log_dir is None:
        raise ValueError(
            "tensorboard=True needs log_dir, the folder for the event files: "
            "zoo.train(..., log_dir='runs/x', tensorboard=True)."
        )
    if tensorboard:
        _summary_writer_class()  # fail on a missing extra before training, not after an epoch


def _summary_writer_class():
    try:
        from tensorboardX import SummaryWriter
    except ImportError as error:
        raise ImportError(
            "tensorboard=True writes event files with tensorboardX, which is not installed: "
            "`pip install 'equinox-zoo[tensorboard]'` (or `uv add tensorboardX`)."
        ) from error
    return SummaryWriter


def epoch_record(history: dict, index: int) -> dict:
    """Epoch `index`'s figures, flat: `{"epoch", "step", "time", "train/loss", "eval/..."}`."""
    record = {name: history[name][index] for name in ("epoch", "step", "time")}
    for group in ("train", "eval"):
        record |= {f"{group}/{name}": values[index] for name, values in history[group].items()}
    return record


class EpochLogs:
    """Writes each recorded epoch to `log_dir`; a no-op without a directory.

    `history.jsonl` is rewritten from the history at the start (so a resumed run's file holds
    the epochs of its checkpoint, each once) and then appended one line per epoch.
    """

    def __init__(self, log_dir: str | os.PathLike | None, tensorboard: bool):
        self._folder = None if log_dir is None else pathlib.Path(log_dir)
        self._tensorboard = tensorboard
        self._writer = None

    def start(self, history: dict) -> None:
        if self._folder is None:
            return
        self._folder.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(epoch_record(history, i)) + "\n" for i in range(len(history["epoch"]))]
        (self._folder / LOG_FILE).write_text("".join(lines))
        if self._tensorboard:
            self._writer = _summary_writer_class()(str(self._folder))

    def after_epoch(self, history: dict) -> None:
        if self._folder is None:
            return
        record = epoch_record(history, -1)
        with (self._folder / LOG_FILE).open("a") as file:
            file.write(json.dumps(record) + "\n")
        if self._writer is not None:
            epoch = record["epoch"]
            for name, value in record.items():
                if "/" in name:
                    self._writer.add_scalar(name, value, epoch)
            self._writer.add_scalar("time/seconds_per_epoch", record["time"], epoch)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
