"""The Orbax API that zoo's serialization builds on, checked by name and signature.

zoo writes arrays through an Orbax `TypeHandler` of its own (`zoo._io._array_files`) and manages
checkpoints with Orbax's `CheckpointManager`. If an Orbax release renames or reshapes any piece
listed here, this test fails and names it, before any save or restore misbehaves. The range of
orbax-checkpoint versions zoo is tested with is pinned in pyproject.toml.
"""

import inspect
from importlib import metadata

import pytest

ocp = pytest.importorskip("orbax.checkpoint")

# Every Orbax name zoo uses, as an attribute path from `orbax.checkpoint`.
NAMES = [
    "Checkpointer",
    "CheckpointManager",
    "CheckpointManagerOptions",
    "JsonCheckpointHandler",
    "PyTreeCheckpointHandler",
    "RestoreArgs",
    "SaveArgs",
    "args.Composite",
    "args.JsonRestore",
    "args.JsonSave",
    "args.PyTreeRestore",
    "args.PyTreeSave",
    "args.register_with_handler",
    "checkpoint_managers.LatestN",
    "future.CommitFutureAwaitingContractedSignals",
    "metadata.ArrayMetadata",
    "type_handlers.ArrayHandler",
    "type_handlers.NumpyHandler",
    "type_handlers.create_type_handler_registry",
    "type_handlers.get_json_tspec_read",
    "type_handlers.get_type_handler",
]

# Methods zoo overrides or calls, with the parameters it passes (by name).
SIGNATURES = {
    "type_handlers.ArrayHandler.__init__": {"array_metadata_store"},
    "type_handlers.NumpyHandler.__init__": {"deepcopy_host_arrays"},
    "type_handlers.NumpyHandler.serialize": {"values", "infos", "args"},
    "type_handlers.NumpyHandler.deserialize": {"infos", "args"},
    "type_handlers.NumpyHandler.metadata": {"infos"},
    "type_handlers.get_json_tspec_read": {"info", "use_ocdbt", "metadata_key"},
    "PyTreeCheckpointHandler.__init__": {"use_ocdbt", "use_compression", "type_handler_registry"},
    "PyTreeCheckpointHandler.finalize": {"directory"},
    "SaveArgs": {"chunk_byte_size"},
    "RestoreArgs": {"restore_type"},
    "metadata.ArrayMetadata": {"name", "directory", "shape", "dtype", "sharding"},
}

VERSION = metadata.version("orbax-checkpoint")


def _resolve(path: str):
    value = ocp
    for part in path.split("."):
        value = getattr(value, part, None)
        if value is None:
            pytest.fail(f"orbax-checkpoint {VERSION} has no orbax.checkpoint.{path}: zoo needs it")
    return value


@pytest.mark.parametrize("path", NAMES)
def test_orbax_has_every_name_zoo_uses(path):
    _resolve(path)


@pytest.mark.parametrize("path", sorted(SIGNATURES))
def test_orbax_takes_the_arguments_zoo_passes(path):
    parameters = inspect.signature(_resolve(path)).parameters
    missing = SIGNATURES[path] - set(parameters)
    assert not missing, f"orbax-checkpoint {VERSION}: {path} no longer takes {sorted(missing)}"


def test_the_numpy_handler_keeps_the_attribute_zoo_reads():
    """zoo's handler reads `_metadata_key`, to read saves that Orbax wrote through TensorStore."""
    handler = ocp.type_handlers.NumpyHandler()
    assert hasattr(handler, "_metadata_key"), f"orbax-checkpoint {VERSION}: _metadata_key is gone"
