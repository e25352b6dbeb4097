"""Collection of the Python blocks of README.md, docs/ and the docstrings (pytest-markdown-docs).

Tests proper live in tests/ (with their own conftest.py). A block runs in a fresh namespace
holding the imports the API reference assumes (see docs/api/index.md's note), in a temporary
working directory, so that the files a block writes land there and not in the repository. A
`{.python continuation}` block runs after its page's earlier blocks; a `{.python notest}` block
is a fragment and is not run.
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
def _blocks_run_in_a_temporary_directory(request, tmp_path, monkeypatch):
    if request.node.get_closest_marker("markdown-docs") is not None:
        monkeypatch.chdir(tmp_path)
