"""Collection of the Python blocks of README.md, docs/ and the docstrings (pytest-markdown-docs).

Tests proper live in tests/ (with their own conftest.py). A block runs in a fresh namespace
holding the imports the API pages assume (see their opening note), with JAX's default
promotion rules, in a temporary working directory, so that the files a block writes land there
and not in the repository. A `{.python continuation}` block runs after its page's earlier
blocks; a `{.python notest}` block is a fragment and is not run.
"""

import equinox
import jax
import numpy
import optax
import pytest
from markdown_it import MarkdownIt
from mdit_py_plugins.admon import admon_plugin

import zoo


def pytest_markdown_docs_markdown_it() -> MarkdownIt:
    # The docstrings put their examples in `!!! example` admonitions, whose indented blocks
    # CommonMark alone reads as plain indented code, not as fences.
    return MarkdownIt("commonmark").use(admon_plugin)


def pytest_markdown_docs_globals() -> dict:
    return {"eqx": equinox, "jax": jax, "jnp": jax.numpy, "np": numpy, "optax": optax, "zoo": zoo}


@pytest.fixture(autouse=True)
def _blocks_run_as_a_user_runs_them(request, tmp_path, monkeypatch):
    if request.node.get_closest_marker("markdown-docs") is None:
        yield
        return
    monkeypatch.chdir(tmp_path)
    # With JAX's default promotion rules, not the strict ones tests/conftest.py sets for zoo's
    # own tests (under which optax's schedules, for one, fail).
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield
