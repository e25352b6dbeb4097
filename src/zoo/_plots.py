"""Training curves as a PNG, with matplotlib's file-only backend (no display needed)."""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_history(history: dict, path: str | pathlib.Path) -> pathlib.Path:
    """Draws the training loss and each eval metric per epoch into a PNG at `path`.

    **Arguments:**

    - `history`: the history returned by [`zoo.train`][].
    - `path`: where to write the PNG.

    **Returns:**

    The path written.
    """
    path = pathlib.Path(path)
    epochs = history["epoch"]
    panels = {"train loss": history["train"]["loss"]} | {
        f"eval {name}": values for name, values in history["eval"].items()
    }
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for axis, (title, values) in zip(axes[0], panels.items(), strict=True):
        axis.plot(epochs, values, marker="o")
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
