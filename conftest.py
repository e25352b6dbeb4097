"""Collection of the Python blocks of README.md, docs/ and the docstrings (pytest-markdown-docs).

Tests proper live in tests/ (with their own conftest.py); this file only tells the Markdown
parser about the `!!! example` admonitions the docstrings put their examples in, whose indented
blocks CommonMark alone would read as plain indented code, not as fences.
"""

from markdown_it import MarkdownIt
from mdit_py_plugins.admon import admon_plugin


def pytest_markdown_docs_markdown_it() -> MarkdownIt:
    return MarkdownIt("commonmark").use(admon_plugin)
