"""The package as a whole: importing zoo changes nothing global."""

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_importing_zoo_imports_no_plotting_library_and_sets_no_backend():
    code = (
        "import sys, os; import zoo; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'pylab'))); "
        "print(os.environ.get('MPLBACKEND'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["[]", "None"]


def test_plot_history_leaves_pyplot_alone(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    import zoo

    backend, figures = matplotlib.get_backend(), plt.get_fignums()
    history = {"epoch": [1, 2], "train": {"loss": [1.0, 0.5]}, "eval": {"accuracy": [0.5, 0.8]}}
    path = zoo.plot_history(history, tmp_path / "curve.png")
    assert path.stat().st_size > 0
    assert (matplotlib.get_backend(), plt.get_fignums()) == (backend, figures)


def test_the_distribution_equinox_zoo_provides_zoo_at_its_version():
    from importlib import metadata

    import zoo

    assert metadata.version("equinox-zoo") == zoo.__version__
    assert "zoo = zoo._cli:main" in metadata.distribution("equinox-zoo").read_text(
        "entry_points.txt"
    )
