"""Every `examples/*.py` runs, at a small size: each takes `--smoke` (see examples/README.md)."""

import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # each example runs as a subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
TIMEOUT = 300  # seconds; a smoke run takes a few on two busy cores


def _run(example: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {
        "JAX_PLATFORMS": "cpu"
    }
    return subprocess.run(
        [sys.executable, str(example), *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_there_are_examples():
    assert EXAMPLES, "examples/*.py found nothing"


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_an_example_runs_at_a_small_size(example):
    result = _run(example, "--smoke")
    if "unrecognized arguments: --smoke" in result.stderr:
        pytest.fail(
            f"examples/{example.name} takes no --smoke flag. Every example must: with it, the "
            "example runs in seconds on shipped or synthetic data (see examples/README.md)."
        )
    assert result.returncode == 0, (
        f"examples/{example.name} --smoke failed; the end of its output:\n"
        f"{(result.stdout + result.stderr)[-6000:]}"
    )
