"""`zoo.Logger`: one JSON line per epoch, and TensorBoard event files when asked.

Each run's logs are its own: a new run refuses a folder that holds another run's logs (before
anything is trained), and a resumed run rewrites the file from its checkpoint's history, so
each epoch appears once and nothing of another run is touched.
"""

import json
import os
import pathlib

from .. import _checks
from ._callbacks import Callback, EpochInfo, RunInfo, epoch_figures

LOG_FILE = "history.jsonl"
_EVENTS = "events.out.tfevents"


def _summary_writer_class():
    try:
        from tensorboardX import SummaryWriter
    except ImportError as error:
        raise ImportError(
            "tensorboard=True writes event files with tensorboardX, which is not installed: "
            "`pip install 'equinox-zoo[tensorboard]'` (or `uv add tensorboardX`)."
        ) from error
    return SummaryWriter


class Logger(Callback):
    """Writes each epoch's figures to `log_dir/history.jsonl`, one JSON object a line
    (`{"epoch": 1, "step": ..., "time": ..., "train/loss": ..., "eval/accuracy": ...}`), and
    with `tensorboard=True` the same figures as TensorBoard event files (with `tensorboardX`:
    `pip install 'equinox-zoo[tensorboard]'`).

    **Arguments:**

    - `log_dir`: the run's folder for logs: a new or empty one, or one whose logs are those
      of the run being resumed. A folder with another run's logs is refused before training,
      so each run's logs stay apart.
    - `tensorboard`: also write TensorBoard event files.

    !!! example

        ```python
        model = zoo.MLP(in_size=64, out_size=10, hidden=(32,), key=jax.random.key(0))
        zoo.train(model, zoo.data.digits("train"), epochs=2,
                  callbacks=[zoo.Logger("runs/digits-1")])
        ```
    """

    log_dir: str | os.PathLike
    tensorboard: bool = False

    def __check_init__(self):
        _checks.path("log_dir", self.log_dir, example="zoo.Logger(log_dir='runs/x')")
        _checks.boolean("tensorboard", self.tensorboard, example="zoo.Logger('runs/x', True)")
        if self.tensorboard:
            _summary_writer_class()  # fail on a missing extra now, not after an epoch

    def init(self, info: RunInfo) -> dict:
        folder = pathlib.Path(self.log_dir)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"log_dir {folder} is a file; name a folder for the logs.")
        earlier = _logs_in(folder)
        if earlier and not info.resumed:
            raise ValueError(
                f"log_dir {folder} already holds the logs of another run ({earlier[0]}): a new "
                "run writes into a new or empty folder, so that no run's logs are overwritten "
                "or mixed. For example log_dir='runs/run-2'."
            )
        return {"written": False, "writer": None}

    def after_epoch(self, state: dict, info: EpochInfo) -> tuple[dict, bool]:
        folder = pathlib.Path(self.log_dir)
        if not state["written"]:  # this run's first epoch: the epochs before it come first
            folder.mkdir(parents=True, exist_ok=True)
            epochs = range(len(info.history["epoch"]) - 1)
            lines = "".join(json.dumps(epoch_figures(info.history, i)) + "\n" for i in epochs)
            (folder / LOG_FILE).write_text(lines)
            if self.tensorboard:
                # purge_step drops events of epochs past the checkpoint a resumed run starts from.
                writer = _summary_writer_class()(str(folder), purge_step=info.epoch)
                state = state | {"writer": writer}
            state = state | {"written": True}
        figures = epoch_figures(info.history)
        with (folder / LOG_FILE).open("a") as file:
            file.write(json.dumps(figures) + "\n")
        if state["writer"] is not None:
            for name, value in figures.items():
                if "/" in name:
                    state["writer"].add_scalar(name, value, info.epoch)
            state["writer"].add_scalar("time/seconds_per_epoch", figures["time"], info.epoch)
            state["writer"].flush()
        return state, False

    def close(self, state: dict) -> None:
        if state["writer"] is not None:
            state["writer"].close()


def _logs_in(folder: pathlib.Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(
        path.name for path in folder.iterdir() if path.name == LOG_FILE or _EVENTS in path.name
    )
