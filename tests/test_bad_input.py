"""Every bad input in `tests/bad_input_cases.py` gets the error the table says, and leaves no
partial files; `docs/errors.md` is the table rendered with the messages users see."""

import pathlib
import re
import subprocess
import sys

import pytest

from .bad_input_cases import CASES, prepare, run_case

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _listing(folder: pathlib.Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its content (`None` for a folder)."""
    return {
        str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None
        for path in folder.rglob("*")
    }


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case, tmp_path):
    prepare(case, tmp_path)
    before = _listing(tmp_path)
    error = run_case(case, tmp_path)
    assert re.search(case.message, str(error), flags=re.DOTALL), str(error)
    assert _listing(tmp_path) == before, "the failed call changed files on disk"


def test_there_are_at_least_25_distinct_cases():
    assert len({case.id for case in CASES}) == len(CASES) >= 25


def test_errors_page_is_generated_from_the_table():
    # A separate process: the page shows messages as users see them, without beartype.
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "bad_input_cases.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert (ROOT / "docs" / "errors.md").read_text() == result.stdout, (
        "docs/errors.md is stale: run `uv run python tests/bad_input_cases.py`"
    )
