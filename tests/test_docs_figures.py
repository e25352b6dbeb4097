"""Figures the docs state are what the code gives: a page's table is rerun here, in part."""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


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
