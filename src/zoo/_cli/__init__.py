"""The `zoo` command line: `zoo train mlp`, `zoo train mf`, ... (see docs/cli.md)."""

from ._main import main as main
