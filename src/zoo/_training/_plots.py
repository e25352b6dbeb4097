"""Training curves as a PNG, drawn with matplotlib's object API.

matplotlib is imported on the first plot, not with zoo, and `matplotlib.figure.Figure` draws
straight to a file: no global backend is chosen and no pyplot state is touched, so a notebook
user's own plots keep showing.
"""

import math
import pathlib

from ..losses import LOSSES

# The same series, whatever their names: recall@K equals HR@K with one held-out item per user.
_SAME_TOLERANCE = 1e-12
# Losses spanning more than this factor are drawn on a log scale.
_LOG_SPAN = 20


def plot_history(history: dict, path: str | pathlib.Path) -> pathlib.Path:
    """Draws a run's history into a PNG at `path`: one panel per distinct figure, by epoch.

    The first panel holds the losses: the training loss and, on the same axis, each eval
    figure named after a loss (`cross_entropy`, `mse`, `bce` or another name of
    `zoo.losses.LOSSES`), so that over- and under-fitting show at a glance (on a log scale when
    the losses span more than a factor of 20). Every other eval metric gets a panel of its
    own, except that metrics with identical values every epoch (HR@10 and recall@10 with one
    held-out item per user) share one. Epochs are whole numbers on the x axis. With early
    stopping (`history["best_epoch"]`), a dotted line marks the epoch whose model was
    returned. When `history["baselines"]` maps baseline names to figures (as `zoo train
    recommender` records the popularity and random baselines), each metric's panel also
    draws the baselines' figure as a dashed line.

    **Arguments:**

    - `history`: the history returned by [`zoo.train`][].
    - `path`: where to write the PNG.

    **Returns:**

    The path written.

    **Example:**

    ```python
    import jax, optax, zoo
    model = zoo.MLP(in_size=64, out_size=10, hidden=(32,), key=jax.random.key(0))
    _, history = zoo.train(model, zoo.data.digits("train"), epochs=3, batch_size=64,
                           eval_data=zoo.data.digits("test"), key=jax.random.key(1))
    zoo.plot_history(history, "training_curve.png")
    ```
    """
    path = pathlib.Path(path)
    history_figure(history).savefig(path, dpi=100)
    return path


def history_figure(history: dict):
    """The `matplotlib.figure.Figure` that `plot_history` saves."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = history["epoch"]
    losses, metrics = _panels(history)
    count = 1 + len(metrics)
    columns = count if count <= 3 else (2 if count == 4 else 3)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(4.2 * columns, 3.3 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    _draw_losses(axes[0], epochs, losses)
    for axis, (names, values) in zip(axes[1:], metrics, strict=False):
        axis.plot(epochs, values, marker="o", markersize=3, label="model")
        _draw_baselines(axis, history.get("baselines", {}), names[0])
        axis.set_title("eval " + " = ".join(names))
    for axis in axes[count:]:
        axis.set_visible(False)
    for axis in axes[:count]:
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if "best_epoch" in history:
            axis.axvline(history["best_epoch"], color="0.35", linestyle=":", label="best epoch")
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize="small")
    return figure


def _panels(history: dict) -> tuple[dict[str, list], list[tuple[list[str], list]]]:
    """The loss curves by label, and the other eval metrics grouped by identical values."""
    losses = {"train loss": history["train"]["loss"]}
    metrics: list[tuple[list[str], list]] = []
    for name, values in history["eval"].items():
        if name in LOSSES or name == "loss":
            losses[f"eval {name}"] = values
            continue
        same = next((group for group in metrics if _same(group[1], values)), None)
        if same is None:
            metrics.append(([name], values))
        else:
            same[0].append(name)
    return losses, metrics


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=_SAME_TOLERANCE, abs_tol=_SAME_TOLERANCE)
        for x, y in zip(a, b, strict=True)
    )


def _draw_losses(axis, epochs: list, losses: dict[str, list]) -> None:
    for label, values in losses.items():
        axis.plot(epochs, values, marker="o", markersize=3, label=label)
    axis.set_title("loss")
    finite = [value for values in losses.values() for value in values if math.isfinite(value)]
    if finite and min(finite) > 0 and max(finite) > _LOG_SPAN * min(finite):
        axis.set_yscale("log")  # else the first epochs' loss flattens the rest into a line


def _draw_baselines(axis, baselines: dict[str, dict[str, float]], metric: str) -> None:
    present = [(name, figures[metric]) for name, figures in baselines.items() if metric in figures]
    for colour, (name, value) in enumerate(present, start=1):
        axis.axhline(value, linestyle="--", color=f"C{colour}", label=name)
