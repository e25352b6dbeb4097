"""Training curves as a PNG, drawn with matplotlib's object API.

matplotlib is imported on the first plot, not with zoo, and `matplotlib.figure.Figure` draws
straight to a file: no global backend is chosen and no pyplot state is touched, so a notebook
user's own plots keep showing.
"""

import pathlib


def plot_history(history: dict, path: str | pathlib.Path) -> pathlib.Path:
    """Draws the training loss and each eval metric per epoch into a PNG at `path`.

    When `history["baselines"]` maps baseline names to figures (as `zoo train recommender`
    records the popularity and random baselines), each eval panel also draws the baselines'
    figure of its metric as a dashed line.

    **Arguments:**

    - `history`: the history returned by [`zoo.train`][].
    - `path`: where to write the PNG.

    **Returns:**

    The path written.
    """
    from matplotlib.figure import Figure

    path = pathlib.Path(path)
    epochs = history["epoch"]
    panels = {"train loss": history["train"]["loss"]} | {
        f"eval {name}": values for name, values in history["eval"].items()
    }
    figure = Figure(figsize=(4 * len(panels), 3.2))
    axes = figure.subplots(1, len(panels), squeeze=False)
    for axis, (title, values) in zip(axes[0], panels.items(), strict=True):
        axis.plot(epochs, values, marker="o", label="model")
        _draw_baselines(axis, history.get("baselines", {}), title.removeprefix("eval "))
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def _draw_baselines(axis, baselines: dict[str, dict[str, float]], metric: str) -> None:
    present = [(name, figures[metric]) for name, figures in baselines.items() if metric in figures]
    for colour, (name, value) in enumerate(present, start=1):
        axis.axhline(value, linestyle="--", color=f"C{colour}", label=name)
    if present:
        axis.legend(fontsize="small")
