"""Figures the docs state are what the code gives: a page's table is rerun here, in part, and
every figure in docs/img/ has the data it was drawn from beside it, in its generator's schema."""

import copy
import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "img"
FIGURE_FILES = sorted(IMAGES.glob("*.json"))


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_recommender_results_table_is_what_the_command_line_gives(tmp_path):
    # The quickest row of docs/recommenders.md's table (a few seconds), run as the script does;
    # benchmarks/recommender_results.py rewrites the whole table.
    results = _script("recommender_results")
    model, optimizer = "two-tower", "sparse-adagrad"
    final, baselines, _ = results.run(model, optimizer, tmp_path)
    measured = results.row_figures(model, optimizer, final, baselines["popularity"])
    assert results.page_row_figures(model, optimizer) == measured, (
        "docs/recommenders.md's results are stale: run "
        "`uv run python benchmarks/recommender_results.py`"
    )


def test_a_page_row_is_found_and_a_missing_one_is_reported():
    results = _script("recommender_results")
    page = "| `mf` | BPR | `adam` | **0.3825** | 0.2415 | 0.2154 | x2.70 | 13 s |"
    assert results.page_row_figures("mf", "adam", page) == [
        "`mf`", "BPR", "`adam`", "0.3825", "0.2415", "0.2154", "x2.70",
    ]  # fmt: skip
    with pytest.raises(LookupError, match="no results row for dlrm / adam"):
        results.page_row_figures("dlrm", "adam", page)


def _figures():
    # benchmarks/figures.py, as the benchmarks import it (by its bare name, from benchmarks/).
    return _script("figures")


def test_every_image_of_the_docs_has_its_data_beside_it():
    images = sorted(IMAGES.glob("*.png"))
    assert images and [image.with_suffix(".json") for image in images] == FIGURE_FILES


@pytest.mark.parametrize("path", FIGURE_FILES, ids=[path.stem for path in FIGURE_FILES])
def test_a_figure_file_follows_its_generators_schema_and_redraws(path, tmp_path):
    figures = _figures()
    content = json.loads(path.read_text())
    figures.check_file(content, path.name)  # raises, naming the place, if not
    assert content["command"].startswith("uv run python ")
    script = content["command"].split()[3]
    assert (ROOT / script).is_file(), f"{path.name}: its command runs {script}, which is gone"
    redrawn = figures.draw(content, tmp_path / path.with_suffix(".png").name)
    assert redrawn.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _speed_data() -> dict:
    return {
        "title": "t", "x_label": "x", "y_label": "y", "sizes": [10, 100],
        "series": {"sgd": [0.5, 0.7], "torch_sgd": [1.0, None]},
    }  # fmt: skip


@pytest.mark.parametrize(
    "change, complaint",
    [
        (lambda d: d.pop("sizes"), r"data: missing keys \['sizes'\]"),
        (lambda d: d.update(colour="red"), r"unknown keys \['colour'\]"),
        (lambda d: d["series"].update(sgd=[0.5, "fast"]), r"data\['series'\]\['sgd'\]\[1\]"),
        (lambda d: d["sizes"].append(1000), r"'sgd'\]: 2 values for 3 sizes"),
        (lambda d: d.update(sizes=[10, True]), r"data\['sizes'\]\[1\]: expected int"),
    ],
)
def test_the_schema_check_names_what_is_wrong(change, complaint):
    figures = _figures()
    content = {"figure": "speed_by_table_size", "command": "c", "source": "s"}
    figures.check_file(content | {"data": _speed_data()}, "f.json")
    data = copy.deepcopy(_speed_data())
    change(data)
    with pytest.raises(ValueError, match=complaint):
        figures.check_file(content | {"data": data}, "f.json")


def test_a_figure_of_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="no figure kind 'pie'"):
        _figures().check_file({"figure": "pie", "command": "c", "source": "s", "data": {}}, "f")
