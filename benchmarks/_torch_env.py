"""The PyTorch the comparison benchmarks run: a Python 3.11 venv, `.bench-venv/`, made on first use.

torch's CPU build installs here for Python 3.11 only (for this project's Python 3.12 pip would
fetch a CUDA build of several GB), so the PyTorch side of a benchmark runs as a subprocess of
that venv's interpreter. `torch_python()` makes the venv when it is missing and says why when it
cannot, so that a benchmark prints the reason and runs without PyTorch.
"""

import glob
import os
import pathlib
import shutil
import subprocess

VENV = pathlib.Path(__file__).resolve().parent.parent / ".bench-venv"
REQUIREMENTS = ("torch==2.13.0", "numpy")
# FBGEMM's CPU build for that torch (each fbgemm-gpu-cpu release is built against one torch
# release: 1.8.0 against 2.13; 1.9.0 wants a newer one).
FBGEMM = "fbgemm-gpu-cpu==1.8.0"


def _python_3_11() -> str | None:
    # pyenv's shim for python3.11 can exist without that version being active: prefer the
    # interpreter itself.
    pyenv = os.path.expanduser("~/.pyenv/versions/3.11*/bin/python3.11")
    return next(iter(sorted(glob.glob(pyenv), reverse=True)), None) or shutil.which("python3.11")


def _works(python: pathlib.Path) -> bool:
    check = [str(python), "-c", "import torch, numpy"]
    return subprocess.run(check, capture_output=True, check=False).returncode == 0


def torch_python() -> tuple[pathlib.Path | None, str]:
    """`(interpreter, how)`: the venv's Python with torch, or `None` and why there is none."""
    python = VENV / "bin" / "python"
    if python.exists() and _works(python):
        return python, f"PyTorch from {VENV}"
    base = _python_3_11()
    if base is None:
        return None, "PyTorch skipped: no Python 3.11 here to make .bench-venv with"
    print(f"Making {VENV} with {base} and {' '.join(REQUIREMENTS)} (once)...", flush=True)
    steps = [
        [base, "-m", "venv", str(VENV)],
        [str(python), "-m", "pip", "install", "-q", *REQUIREMENTS],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return None, f"PyTorch skipped: `{' '.join(step)}` failed: {reason}"
    return (
        (python, f"PyTorch from {VENV} (made now)")
        if _works(python)
        else (
            None,
            "PyTorch skipped: torch does not import in the new .bench-venv",
        )
    )


def fbgemm_python() -> tuple[pathlib.Path | None, str]:
    """`(interpreter, how)`: the venv's Python with torch and FBGEMM (`FBGEMM` installed into
    `.bench-venv/` on first use), or `None` and why there is none."""
    python, how = torch_python()
    if python is None:
        return None, how.replace("PyTorch skipped", "FBGEMM skipped")
    check = [str(python), "-c", "import fbgemm_gpu"]
    if subprocess.run(check, capture_output=True, check=False).returncode == 0:
        return python, f"FBGEMM ({FBGEMM}) from {VENV}"
    print(f"Installing {FBGEMM} into {VENV} (once)...", flush=True)
    step = [str(python), "-m", "pip", "install", "-q", FBGEMM]
    done = subprocess.run(step, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"FBGEMM skipped: `{' '.join(step)}` failed: {reason}"
    if subprocess.run(check, capture_output=True, check=False).returncode != 0:
        return None, f"FBGEMM skipped: {FBGEMM} does not import with {' '.join(REQUIREMENTS)}"
    return python, f"FBGEMM ({FBGEMM}) from {VENV} (installed now)"
