"""The docs' figures: each drawn from a JSON file of the data that a benchmark or an example
measured, saved beside its PNG in docs/img/, so that any figure can be redrawn (or restyled)
without measuring again.

A figure file is `{"figure": KIND, "command": ..., "data": {...}}`: `command` is what measured
the data, and `data` follows the schema of its kind here, which tests/test_docs_figures.py
checks for every file in docs/img/. The benchmarks call `save`; to redraw every PNG:

    uv run python benchmarks/figures.py             # every docs/img/*.json
    uv run python benchmarks/figures.py docs/img/embedding_step.json
"""

import argparse
import dataclasses
import json
import pathlib
import re
import sys
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "img"
DPI = 110


# --- Schemas: a type, [item schema], {str: value schema} (any names), {"key": schema, ...}
# (exactly those keys) or a tuple of alternatives (None for null).


def check(value, schema, where: str = "data") -> None:
    """Raises a `ValueError` naming the first place where `value` does not follow `schema`."""
    if isinstance(schema, tuple):
        errors = []
        for alternative in schema:
            try:
                return check(value, alternative, where)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(" or ".join(errors))
    if schema is None:
        if value is not None:
            raise ValueError(f"{where}: expected null, got {value!r}")
    elif isinstance(schema, list):
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        for index, item in enumerate(value):
            check(item, schema[0], f"{where}[{index}]")
    elif isinstance(schema, dict):
        _check_mapping(value, schema, where)
    elif not _is_instance(value, schema):
        raise ValueError(f"{where}: expected {schema.__name__}, got {value!r}")


def _check_mapping(value, schema: dict, where: str) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
    if list(schema) == [str]:
        for key, item in value.items():
            check(item, schema[str], f"{where}[{key!r}]")
        return
    missing, extra = set(schema) - set(value), set(value) - set(schema)
    if missing or extra:
        raise ValueError(f"{where}: missing keys {sorted(missing)}, unknown keys {sorted(extra)}")
    for key, item_schema in schema.items():
        check(value[key], item_schema, f"{where}[{key!r}]")


def _is_instance(value, kind: type) -> bool:
    if isinstance(value, bool) and kind is not bool:
        return False
    return isinstance(value, (int, float) if kind is float else kind)


@dataclasses.dataclass(frozen=True)
class Figure:
    """A kind of figure: the schema of its data, a check across fields, and how to draw it."""

    schema: dict
    draw: Callable  # (data, png path) -> None
    consistent: Callable[[dict], None] = lambda data: None


def check_file(content: dict, where: str) -> Figure:
    """Checks a figure file's envelope and data; returns its kind."""
    check(content, {"figure": str, "command": str, "source": str, "data": dict}, where)
    if content["figure"] not in FIGURES:
        raise ValueError(f"{where}: no figure kind {content['figure']!r}; known: {list(FIGURES)}")
    figure = FIGURES[content["figure"]]
    check(content["data"], figure.schema, f"{where}: data")
    figure.consistent(content["data"])
    return figure


def draw(content: dict, png: pathlib.Path) -> pathlib.Path:
    """Draws a figure file's content (checked first) into `png`."""
    kind = check_file(content, str(png.with_suffix(".json")))
    kind.draw(content["data"], png)
    return png


def _drawn(size: tuple[float, float]):
    """A decorator: `draw(data, figure)` becomes `draw(data, png)`, on a figure of `size`
    inches, drawn with matplotlib's object API (no pyplot state)."""

    def decorator(draw_into: Callable) -> Callable:
        def draw_png(data: dict, png: pathlib.Path) -> None:
            from matplotlib.figure import Figure as MatplotlibFigure

            figure = MatplotlibFigure(figsize=size, layout="constrained")
            draw_into(data, figure)
            figure.savefig(png, dpi=DPI)

        return draw_png

    return decorator


def dumps(content: dict) -> str:
    """JSON with one line per list of numbers or names, for readable diffs."""
    text = json.dumps(content, indent=1)
    flat = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: f"[{' '.join(m[1].split())}]", text)
    return flat + "\n"


def this_command() -> str:
    """The command line that is running, as a figure file records it."""
    return " ".join(["uv run python", *sys.argv])


def save(
    png: pathlib.Path, kind: str, data: dict, command: str, source: str = "measured by command"
) -> pathlib.Path:
    """Draws the PNG `png` from `data`, a figure of `kind`, and writes the data beside it
    (`png` with the suffix `.json`), with the command that measured it."""
    content = {"figure": kind, "command": command, "source": source, "data": data}
    png = pathlib.Path(png)
    draw(content, png)  # checks the data first
    png.with_suffix(".json").write_text(dumps(content))
    print(f"wrote {png} and {png.with_suffix('.json')}")
    return png


# --- Speed against table size (benchmarks/embedding_step.py) ----------------------------------

# Every configuration its own colour; zoo's solid, the hand-written JAX floors dotted, PyTorch
# dashed. Configurations without an entry (new benchmark columns) take the spare colours.
_SERIES_STYLE = {
    "sgd": ("zoo SGD (in place, native kernels)", "#1f77b4", "-"),
    "sgd_jax": ("zoo SGD, pure JAX", "#1f77b4", (0, (5, 1))),
    "rowwise_adagrad_jax": ("zoo row-wise Adagrad, pure JAX", "#2ca02c", (0, (5, 1))),
    "lazy_adam_jax": ("zoo lazy Adam, pure JAX", "#9467bd", (0, (5, 1))),
    "limit_sgd": ("machine limit, SGD (C)", "#1f77b4", ":"),
    "limit_rowwise_adagrad": ("machine limit, row-wise Adagrad (C)", "#2ca02c", ":"),
    "limit_lazy_adam": ("machine limit, lazy Adam (C)", "#9467bd", ":"),
    "fbgemm_sgd": ("FBGEMM SGD", "#ff7f0e", "-."),
    "fbgemm_rowwise_adagrad": ("FBGEMM row-wise Adagrad", "#d62728", "-."),
    "fbgemm_lazy_adam": ("FBGEMM Adam", "#e377c2", "-."),
    "sgd_unbatched_loss": ("zoo SGD, unbatched loss", "#17becf", "-"),
    "sgd_coalesced": ("zoo SGD, coalesced", "#aec7e8", "-"),
    "rowwise_adagrad": ("zoo row-wise Adagrad", "#2ca02c", "-"),
    "rowwise_adagrad_coalesced": ("zoo row-wise Adagrad, coalesced", "#98df8a", "-"),
    "lazy_adam": ("zoo lazy Adam", "#9467bd", "-"),
    "lazy_adam_coalesced": ("zoo lazy Adam, coalesced", "#c5b0d5", "-"),
    "jax_floor": ("JAX floor: gather + scatter-add", "#000000", ":"),
    "jax_floor_sorted": ("JAX floor, ids sorted", "#7f7f7f", ":"),
    "jax_lazy_adam_by_hand": ("lazy Adam by hand (JAX)", "#bcbd22", ":"),
    "dense_adam": ("dense optax Adam", "#8c564b", "-."),
    "torch_sgd": ("PyTorch SGD", "#ff7f0e", "--"),
    "torch_adagrad": ("PyTorch Adagrad", "#d62728", "--"),
    "torch_sparse_adam": ("PyTorch SparseAdam", "#e377c2", "--"),
}
_SPARE_COLOURS = ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d"]

SPEED_BY_TABLE_SIZE = {
    "title": str,
    "x_label": str,
    "y_label": str,
    "sizes": [int],
    "series": {str: [(float, None)]},  # ms per step at each size; null where it did not run
}


def _speed_consistent(data: dict) -> None:
    for name, values in data["series"].items():
        if len(values) != len(data["sizes"]):
            raise ValueError(
                f"data['series'][{name!r}]: {len(values)} values for {len(data['sizes'])} sizes"
            )


def _series_style(name: str, index: int) -> tuple[str, str, str | tuple]:
    spare = _SPARE_COLOURS[index % len(_SPARE_COLOURS)]
    return _SERIES_STYLE.get(name, (name, spare, "-"))


@_drawn((9.5, 4.6))
def _draw_speed_by_table_size(data: dict, figure) -> None:
    axis = figure.subplots()
    unknown = 0
    for name, values in data["series"].items():
        label, colour, style = _series_style(name, unknown)
        unknown += name not in _SERIES_STYLE
        points = [(v, ms) for v, ms in zip(data["sizes"], values, strict=True) if ms is not None]
        if points:
            axis.plot(
                *zip(*points, strict=True), linestyle=style, color=colour, marker="o", label=label
            )
    axis.set(xscale="log", yscale="log", xlabel=data["x_label"], ylabel=data["y_label"])
    axis.set_title(data["title"])
    axis.grid(alpha=0.3, which="both")
    axis.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)


# --- Seconds per epoch, grouped by batch size (benchmarks/train_epoch.py) ---------------------

EPOCH_TIMES = {
    "title": str,
    "y_label": str,
    "batch_sizes": [int],
    "seconds": {str: [(float, None)]},  # method -> median s/epoch at each batch size
}

_METHOD_COLOURS = ["#1f77b4", "#aec7e8", "#2ca02c", "#98df8a", "#ff7f0e", "#d62728", "#9467bd"]


def _epoch_consistent(data: dict) -> None:
    for name, values in data["seconds"].items():
        if len(values) != len(data["batch_sizes"]):
            raise ValueError(
                f"data['seconds'][{name!r}]: {len(values)} values for "
                f"{len(data['batch_sizes'])} batch sizes"
            )


@_drawn((8.0, 4.2))
def _draw_epoch_times(data: dict, figure) -> None:
    axis = figure.subplots()
    methods = list(data["seconds"])
    width = 0.8 / len(methods)
    for index, method in enumerate(methods):
        for group, seconds in enumerate(data["seconds"][method]):
            if seconds is None:
                continue
            x = group + (index - (len(methods) - 1) / 2) * width
            bar = axis.bar(x, seconds, width, color=_METHOD_COLOURS[index % 7], label=method)
            axis.bar_label(bar, fmt="%.2f", fontsize=7, padding=1)
    axis.set_xticks(range(len(data["batch_sizes"])), [f"batch {b}" for b in data["batch_sizes"]])
    axis.set_ylabel(data["y_label"])
    axis.set_title(data["title"])
    axis.grid(alpha=0.3, axis="y")
    handles, labels = axis.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    axis.legend(unique.values(), unique.keys(), loc="upper right", fontsize="small")


# --- Ranking figures of recommenders beside the baselines (benchmarks/recommender_results.py,
# examples/sasrec_movielens.py) -----------------------------------------------------------------

RANKING = {
    "title": str,
    "metrics": [str],  # a panel each
    "runs": [{"label": str, "figures": {str: float}}],
    "baselines": {str: {str: float}},
}

_LABEL_BOX = {"facecolor": "white", "edgecolor": "none", "pad": 0.5}
_BASELINE_STYLE = {"popularity": ("#ff7f0e", "--"), "random": ("#7f7f7f", ":")}


def _ranking_consistent(data: dict) -> None:
    for where, figures in [
        *((f"run {run['label']!r}", run["figures"]) for run in data["runs"]),
        *((f"baseline {name!r}", figures) for name, figures in data["baselines"].items()),
    ]:
        missing = set(data["metrics"]) - set(figures)
        if missing:
            raise ValueError(f"data: {where} lacks {sorted(missing)}")


@_drawn((9.6, 4.4))
def _draw_ranking(data: dict, figure) -> None:
    axes = figure.subplots(1, len(data["metrics"]), sharey=True, squeeze=False)[0]
    labels = [run["label"] for run in data["runs"]]
    rows = range(len(labels))[::-1]  # the first run on top
    for axis, metric in zip(axes, data["metrics"], strict=True):
        values = [run["figures"][metric] for run in data["runs"]]
        bars = axis.barh(rows, values, color="#1f77b4", height=0.6)
        axis.bar_label(bars, fmt="%.3f", fontsize=7, padding=2, bbox=_LABEL_BOX)
        for name, figures in data["baselines"].items():
            colour, style = _BASELINE_STYLE.get(name, ("#2ca02c", "-."))
            axis.axvline(figures[metric], color=colour, linestyle=style, label=f"{name} baseline")
        axis.set_title(metric)
        baselines = [figures[metric] for figures in data["baselines"].values()]
        axis.set_xlim(0, max(values + baselines) * 1.2)  # every bar and baseline in view
        axis.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(list(rows), labels)
    handles, names = axes[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="outside lower center", ncols=len(names), frameon=False)
    figure.suptitle(data["title"])


# --- A training history (zoo.plot_history; examples/early_stopping.py) ------------------------

HISTORY = {
    "epoch": [int],
    "step": [int],
    "time": [float],
    "train": {str: [float]},
    "eval": {str: [float]},
    "best_epoch": int,
    "stop_reason": str,
}


def _history_consistent(data: dict) -> None:
    epochs = len(data["epoch"])
    for part in ("train", "eval"):
        for name, values in data[part].items():
            if len(values) != epochs:
                raise ValueError(f"data[{part!r}][{name!r}]: {len(values)} values, {epochs} epochs")
    if data["best_epoch"] not in data["epoch"]:
        raise ValueError(f"data['best_epoch']: {data['best_epoch']} is not a recorded epoch")


def _draw_history(data: dict, png: pathlib.Path) -> None:
    import zoo

    zoo.plot_history(data, png)  # zoo's own drawing, as the command line's runs get it


FIGURES = {
    "speed_by_table_size": Figure(
        SPEED_BY_TABLE_SIZE, _draw_speed_by_table_size, _speed_consistent
    ),
    "epoch_times": Figure(EPOCH_TIMES, _draw_epoch_times, _epoch_consistent),
    "ranking": Figure(RANKING, _draw_ranking, _ranking_consistent),
    "history": Figure(HISTORY, _draw_history, _history_consistent),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=pathlib.Path, help="default: docs/img/*.json")
    args = parser.parse_args()
    for file in args.files or sorted(IMAGES.glob("*.json")):
        print(f"wrote {draw(json.loads(file.read_text()), file.with_suffix('.png'))}")


if __name__ == "__main__":
    sys.exit(main())
