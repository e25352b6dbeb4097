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

# Inside `_training`, lowest first; a module imports only from layers below its own, so the
# modules of one layer import none of each other. docs/architecture.md lists them in this order.
TRAINING_LAYERS = [
    {"_data"},  # datasets and the validation split
    {"_step"},  # the training state and the compiled step
    {"_strategy", "_evaluate", "_callbacks", "_checkpointing"},
    {"_epochs"},  # the epoch runners
    {"_train"},  # the loop
]
_TRAINING_LAYER_OF = {name: index for index, names in enumerate(TRAINING_LAYERS) for name in names}
_TRAINING = SRC / "_training"


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


def _training_modules_imported(path: pathlib.Path, source: str | None = None) -> set[str]:
    """The modules of `_training` that `path` imports (`_step` for `zoo._training._step.X`)."""
    return {
        module.split(".")[2]
        for module in _imported_modules(path, source)
        if module.startswith("zoo._training.")
    }


def test_every_training_module_has_a_layer():
    modules = {path.stem for path in _TRAINING.glob("*.py") if path.stem != "__init__"}
    assert modules == set(_TRAINING_LAYER_OF), modules ^ set(_TRAINING_LAYER_OF)


@pytest.mark.parametrize(
    "path",
    sorted(path for path in _TRAINING.glob("*.py") if path.stem != "__init__"),
    ids=lambda p: p.name,
)
def test_training_modules_import_only_the_layers_below(path):
    own = _TRAINING_LAYER_OF[path.stem]
    not_below = sorted(
        module
        for module in _training_modules_imported(path)
        if _TRAINING_LAYER_OF.get(module, own) >= own
    )
    assert not not_below, f"_training/{path.name} imports {not_below}, not from a layer below"


def test_the_check_finds_a_training_import_sideways():
    # A module importing one of its own layer is caught, as one importing the loop is.
    probe = _TRAINING / "_callbacks.py"
    source = "from ._checkpointing import Saver\nfrom ._train import train"
    imported = _training_modules_imported(probe, source=source)
    assert imported == {"_checkpointing", "_train"}
    assert all(_TRAINING_LAYER_OF[m] >= _TRAINING_LAYER_OF["_callbacks"] for m in imported)
