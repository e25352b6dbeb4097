"""zoo's folders form layers, and imports run one way: down.

A module may import from its own layer and the layers below it, never from a layer above. So
`distributed` (meshes, shardings, initialize) knows nothing of training, the models know
nothing of the trainer, and only the CLI sees everything. docs/architecture.md draws the same
layers.
"""

import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "zoo"

# Lowest first. Each entry is a top-level module or folder of zoo.
LAYERS = [
    {"_version", "_custom_types", "_checks"},
    {"_io"},
    {"_nn"},
    {"losses", "metrics", "sparse", "data"},
    {"distributed"},
    {"_training"},
    {"recsys"},
    {"__init__"},  # the public API
    {"_cli"},  # a user of the public API
]
_LAYER_OF = {name: index for index, names in enumerate(LAYERS) for name in names}


def _component(module: str) -> str:
    """`zoo._io._serialization` -> `_io`; `zoo` itself -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: pathlib.Path) -> str:
    parts = ("zoo", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: pathlib.Path, source: str | None = None) -> list[str]:
    """The zoo modules `path` imports, relative imports resolved; anywhere in the file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            # `from .. import sparse` imports the module `zoo.sparse`, not zoo itself.
            found += [target] if node.module else []
            found += [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return [module for module in found if module == "zoo" or module.startswith("zoo.")]


def _modules() -> list[pathlib.Path]:
    return sorted(SRC.rglob("*.py"))


def test_every_component_has_a_layer():
    components = {_component(_module_name(path)) for path in _modules()}
    assert components <= set(_LAYER_OF), components - set(_LAYER_OF)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_run_down_the_layers(path):
    own = _component(_module_name(path))
    upward = [
        module
        for module in _imported_modules(path)
        if _component(module) in _LAYER_OF and _LAYER_OF[_component(module)] > _LAYER_OF[own]
    ]
    assert not upward, f"{own} (layer {_LAYER_OF[own]}) imports from a layer above: {upward}"


def test_the_check_finds_an_upward_import():
    # The test above must be able to fail: distributed importing the trainer is caught.
    probe = SRC / "distributed" / "_probe.py"
    imported = _imported_modules(probe, source="from .._training import _train")
    assert "zoo._training._train" in imported
    assert _LAYER_OF[_component("zoo._training._train")] > _LAYER_OF["distributed"]
