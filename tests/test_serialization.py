"""zoo.save and zoo.load: bit-exact round trips, template-free zoo models, and clear errors."""

import json
import pathlib
import re
import zlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import zoo

from .helpers import scrambled, tree_equal


class _UserModel(eqx.Module):
    """Not a zoo model: it loads only with like=."""

    linear: eqx.nn.Linear
    table: zoo.Embedding
    scale: jax.Array
    counts: np.ndarray
    name: str = eqx.field(static=True)

    def __init__(self, width: int, *, key):
        k1, k2 = jax.random.split(key)
        self.linear = eqx.nn.Linear(width, 3, key=k1)
        self.table = zoo.Embedding(10, width, key=k2)
        self.scale = jnp.ones((), jnp.bfloat16)
        self.counts = np.arange(4, dtype=np.int64)
        self.name = "user"


def _largest_file(directory: pathlib.Path) -> pathlib.Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _arrays_dir(path: pathlib.Path) -> pathlib.Path:
    (arrays,) = path.glob("arrays-*")
    return arrays


def _assert_round_trip(path, model, **load_kwargs):
    zoo.save(path, model)
    loaded = zoo.load(path, **load_kwargs)
    assert tree_equal(loaded, model)
    return loaded


# Few distinct shapes: on a busy CPU each new shape costs seconds of eager-op compilation.
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"hidden": [3], "activation": "gelu", "final_activation": "sigmoid", "dropout": 0.25},
        {"hidden": (), "use_bias": False, "init": "glorot", "dtype": jnp.bfloat16},
        {"activation": "tanh", "init": "lecun", "dtype": "float32"},
    ],
)
def test_mlp_loads_without_a_template(tmp_path, getkey, options):
    model = zoo.MLP(4, 2, **{"hidden": (3,), **options}, key=getkey())
    loaded = _assert_round_trip(tmp_path / "mlp", model)
    assert loaded.rebuild_arguments() == model.rebuild_arguments()
    x = jnp.linspace(-1, 1, 4, dtype=model.layers[0].weight.dtype)
    np.testing.assert_array_equal(loaded(x), model(x))
    info = json.loads((tmp_path / "mlp" / "zoo.json").read_text())
    assert info["model"]["class"] == "zoo.MLP"
    assert set(info["versions"]) == {"zoo", "jax", "orbax-checkpoint"}


def test_embedding_loads_without_a_template(tmp_path, getkey):
    init = jax.nn.initializers.uniform(0.5)  # a callable: not recorded, not needed to rebuild
    model = zoo.Embedding(
        1000, 16, padding_idx=3, combiner="mean", init=init, dtype=jnp.bfloat16, key=getkey()
    )
    loaded = _assert_round_trip(tmp_path / "emb", model)
    ids = jnp.array([[1, 3, 7]])
    np.testing.assert_array_equal(jax.vmap(loaded)(ids), jax.vmap(model)(ids))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (zoo.MLP, lambda *a, key: zoo.MLP(*a, init="lecun", key=key)),
        (zoo.MLP, lambda *a, key: zoo.MLP(*a, dtype=jnp.float32, init="glorot", key=key)),
        (
            lambda *a, key: zoo.Embedding(9, 4, key=key),
            lambda *a, key: zoo.Embedding(9, 4, init=jax.nn.initializers.uniform(), key=key),
        ),
    ],
    ids=["mlp-init", "mlp-dtype-and-init", "embedding-init"],
)
def test_one_architecture_is_one_pytree_structure_however_it_was_built(
    tmp_path, getkey, first, second
):
    """Model averaging, EMA and ensembles map over two models: their structures must agree."""
    a, b = first(4, 2, (3,), key=getkey()), second(4, 2, (3,), key=getkey())
    assert jax.tree.structure(a) == jax.tree.structure(b)
    average = jax.tree.map(lambda x, y: (x + y) / 2, a, b)
    assert len(jax.tree.leaves(average)) == len(jax.tree.leaves(a))
    for name, model in (("a", a), ("b", b), ("average", average)):
        _assert_round_trip(tmp_path / name, model)  # and each still loads without a template


def test_a_user_module_loads_with_like(tmp_path, getkey):
    model = _UserModel(6, key=getkey())
    zoo.save(tmp_path / "user", model)
    with pytest.raises(TypeError, match=r"_UserModel.*cannot be rebuilt.*like="):
        zoo.load(tmp_path / "user")
    loaded = zoo.load(tmp_path / "user", like=_UserModel(6, key=getkey()))
    assert tree_equal(loaded, model)
    assert isinstance(loaded.counts, np.ndarray) and loaded.counts.dtype == np.int64
    # eval_shape turns NumPy's int64 into JAX's int32, which the check catches.
    skeleton = eqx.filter_eval_shape(_UserModel, 6, key=jax.random.key(0))
    with pytest.raises(ValueError, match=re.escape("at .counts: saved int64[4], expected int32")):
        zoo.load(tmp_path / "user", like=skeleton)
    skeleton = eqx.tree_at(lambda m: m.counts, skeleton, model.counts)
    assert tree_equal(zoo.load(tmp_path / "user", like=skeleton), model)


def test_a_train_state_with_adam_round_trips(tmp_path, getkey):
    model = zoo.MLP(4, 2, (3,), key=getkey())
    opt_state = optax.adam(1e-3).init(eqx.filter(model, eqx.is_array))
    steps = (jnp.array(7, jnp.int32), jnp.array(2, jnp.int32), jnp.array(3, jnp.int32))
    state = scrambled(zoo.TrainState(model, opt_state, *steps, getkey()))
    zoo.save(tmp_path / "state", state)
    loaded = zoo.load(tmp_path / "state", like=zoo.TrainState(model, opt_state, *steps, getkey()))
    assert tree_equal(loaded, state)
    assert jnp.array_equal(jax.random.key_data(loaded.key), jax.random.key_data(state.key))


@pytest.mark.parametrize("embeddings", ["rowwise_adagrad", "lazy_adam"])  # lazy Adam's is complex
def test_a_train_state_with_a_sparse_partition_round_trips(tmp_path, getkey, embeddings):
    model = _UserModel(6, key=getkey())
    optimizer = zoo.sparse.partition(
        dense=optax.adam(1e-3), embeddings=getattr(zoo.sparse, embeddings)(0.1)
    )
    counters = [jnp.array(n, jnp.int32) for n in (5, 1, 2)]
    state = zoo.TrainState(model, optimizer.init(model), *counters, getkey())
    state = scrambled(state)
    zoo.save(tmp_path / "state", state)
    assert tree_equal(zoo.load(tmp_path / "state", like=state), state)


def test_a_callable_activation_needs_like(tmp_path, getkey):
    def doubled_relu(x):
        return 2 * jax.nn.relu(x)

    model = zoo.MLP(4, 2, (3,), activation=doubled_relu, key=getkey())
    zoo.save(tmp_path / "mlp", model)
    with pytest.raises(TypeError, match=r"activation=.*like="):
        zoo.load(tmp_path / "mlp")
    assert tree_equal(zoo.load(tmp_path / "mlp", like=model), model)


def test_a_named_activation_passed_as_a_function_is_recorded_by_name(tmp_path, getkey):
    model = zoo.MLP(4, 2, (3,), activation=jax.nn.gelu, key=getkey())
    loaded = _assert_round_trip(tmp_path / "mlp", model)
    assert loaded.activation is jax.nn.gelu


def test_a_model_changed_after_construction_is_refused_before_anything_is_written(tmp_path, getkey):
    model = zoo.MLP(4, 2, (3,), key=getkey())
    model = eqx.tree_at(lambda m: m.layers[0].bias, model, jnp.zeros(5))
    with pytest.raises(ValueError, match=r"zoo\.MLP.*\.layers\[0\]\.bias would be float32\[3\]"):
        zoo.save(tmp_path / "mlp", model)
    assert not (tmp_path / "mlp").exists()
    # The way out the error gives: a pytree holding it, loaded with like=.
    zoo.save(tmp_path / "held", {"model": model})
    assert tree_equal(zoo.load(tmp_path / "held", like={"model": model}), {"model": model})


def test_a_mismatch_names_the_first_differing_leaf(tmp_path, getkey):
    model = zoo.MLP(4, 2, (3, 3), key=getkey())
    zoo.save(tmp_path / "mlp", model)
    like = eqx.filter_eval_shape(zoo.MLP, 4, 2, (3, 5), key=jax.random.key(0))
    message = (
        "does not match the model at .layers[1].weight: saved float32[3,3], expected float32[5,3]"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        zoo.load(tmp_path / "mlp", like=like)


def test_a_missing_or_extra_leaf_is_named(tmp_path, getkey):
    zoo.save(tmp_path / "mlp", zoo.MLP(4, 2, (3,), key=getkey()))
    like = eqx.filter_eval_shape(zoo.MLP, 4, 2, (3,), key=jax.random.key(0))
    deeper = eqx.tree_at(lambda m: m.layers, like, (*like.layers, like.layers[-1]))
    with pytest.raises(ValueError, match=re.escape("at .layers[2].weight: the model has")):
        zoo.load(tmp_path / "mlp", like=deeper)
    unbiased = eqx.filter_eval_shape(zoo.MLP, 4, 2, (3,), use_bias=False, key=jax.random.key(0))
    with pytest.raises(ValueError, match=re.escape("at .layers[0].bias: the checkpoint has")):
        zoo.load(tmp_path / "mlp", like=unbiased)


def test_a_wrong_dtype_is_an_error(tmp_path, getkey):
    zoo.save(tmp_path / "mlp", zoo.MLP(4, 2, (3,), key=getkey()))
    like = eqx.filter_eval_shape(zoo.MLP, 4, 2, (3,), dtype=jnp.bfloat16, key=jax.random.key(0))
    with pytest.raises(ValueError, match=re.escape("saved float32[3,4], expected bfloat16[3,4]")):
        zoo.load(tmp_path / "mlp", like=like)


def test_a_checkpoint_of_another_class_is_an_error(tmp_path, getkey):
    zoo.save(tmp_path / "mlp", zoo.MLP(4, 2, (3,), key=getkey()))
    with pytest.raises(ValueError, match=r"holds a zoo\.MLP, but like= is a zoo\.Embedding"):
        zoo.load(tmp_path / "mlp", like=eqx.filter_eval_shape(zoo.Embedding, 4, 3, key=getkey()))


def test_no_save_at_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no zoo save at .*nowhere: the directory does"):
        zoo.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no zoo\.json"):
        zoo.load(tmp_path / "empty")


def test_a_corrupted_array_file_is_detected(tmp_path, getkey):
    path = tmp_path / "emb"
    zoo.save(path, zoo.Embedding(1000, 16, key=getkey()))
    data_file = _largest_file(_arrays_dir(path))
    content = bytearray(data_file.read_bytes())
    content[len(content) // 2 : len(content) // 2 + 8] = bytes(8 * [0xFF])
    data_file.write_bytes(bytes(content))
    with pytest.raises(ValueError, match=r"is corrupted: the array at \.weight"):
        zoo.load(path)


def test_a_truncated_array_file_is_detected(tmp_path, getkey):
    path = tmp_path / "emb"
    zoo.save(path, zoo.Embedding(1000, 16, key=getkey()))
    data_file = _largest_file(_arrays_dir(path))
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 3])
    with pytest.raises(ValueError, match=r"is (damaged|corrupted)"):
        zoo.load(path)


def test_each_array_is_an_npy_file(tmp_path, getkey):
    # Written from and read into the array's own memory, as numpy.save and numpy.load do.
    path = tmp_path / "user"
    model = _UserModel(6, key=getkey())
    zoo.save(path, model)
    manifest = json.loads((path / "zoo.json").read_text())["manifest"]
    files = sorted(_arrays_dir(path).glob("*.npy"), key=lambda f: int(f.stem[1:]))
    assert len(files) == len(manifest) == len(jax.tree.leaves(model))
    for file, entry in zip(files, manifest, strict=True):
        array = np.load(file)  # bfloat16 too: its header names it
        assert (str(array.dtype), list(array.shape)) == (entry["dtype"], entry["shape"])
        assert zoo._io._array_store.checksum(array) == entry["xxh3_64"]
    handler = zoo._io._array_store.array_handler()
    metadata = ocp.Checkpointer(handler).metadata(_arrays_dir(path)).item_metadata.tree
    assert (metadata["a0"].shape, metadata["a0"].dtype) == (np.load(files[0]).shape, np.float32)


def test_save_load_and_a_checkpointed_run_log_no_warnings(tmp_path, getkey, caplog):
    # Orbax logs (through absl, not `warnings`) whenever the handler for jax.Array keeps no
    # ArrayMetadata store; zoo's says it needs none, so a save and a load are silent.
    model, key = zoo.MLP(4, 2, (8,), key=getkey()), getkey()
    data = {"x": np.zeros((16, 4), np.float32), "y": np.zeros(16, np.int32)}
    run, directory = dict(batch_size=8, key=key), tmp_path / "run"
    with caplog.at_level("WARNING"):
        zoo.save(tmp_path / "mlp", model)
        zoo.load(tmp_path / "mlp")
        zoo.train(model, data, epochs=2, checkpoint=zoo.Checkpointing(directory), **run)
        resumed = zoo.Checkpointing(directory, resume=True)
        zoo.train(model, data, epochs=3, checkpoint=resumed, **run)
    assert [record.getMessage() for record in caplog.records] == []


def _save_through_tensorstore(monkeypatch, chunk_bytes: int) -> None:
    """Makes zoo.save write as it did before `.npy` files (and still does with several
    processes): through Orbax's own handlers, into TensorStore chunks of `chunk_bytes`."""
    monkeypatch.setattr("zoo._io._array_store._CHUNK_BYTES", chunk_bytes)
    handler = ocp.PyTreeCheckpointHandler(use_compression=False)
    monkeypatch.setattr("zoo._io._array_store.array_handler", lambda: handler)
    chunked = ocp.SaveArgs(chunk_byte_size=chunk_bytes)
    save = lambda item: ocp.args.PyTreeSave(item, save_args={k: chunked for k in item})  # noqa: E731
    monkeypatch.setattr("zoo._io._array_store.save_args", save)


def test_saves_through_tensorstore_still_load(tmp_path, getkey, monkeypatch):
    path = tmp_path / "user"
    model = _UserModel(6, key=getkey())
    table = zoo.Embedding(1000, 16, key=getkey())
    with monkeypatch.context() as patch:
        _save_through_tensorstore(patch, chunk_bytes=4096)
        zoo.save(path, model)
        zoo.save(tmp_path / "emb", table)
    assert not list(_arrays_dir(path).glob("*.npy"))
    assert tree_equal(zoo.load(path, like=model), model)
    loaded = zoo.load(tmp_path / "emb")
    assert tree_equal(loaded, table)
    assert loaded.weight.unsafe_buffer_pointer() % 64 == 0  # read into an aligned buffer
    # Chunked, and a flipped bit in one chunk is still caught.
    metadata = ocp.PyTreeCheckpointer().metadata(_arrays_dir(tmp_path / "emb")).item_metadata
    rows, width = metadata.tree["a0"].storage.chunk_shape
    assert rows * width * 4 <= 4096 and rows < 1000
    data_file = _largest_file(_arrays_dir(tmp_path / "emb"))
    content = bytearray(data_file.read_bytes())
    content[len(content) // 2] ^= 0x01
    data_file.write_bytes(bytes(content))
    with pytest.raises(ValueError, match=r"is corrupted: the array at \.weight"):
        zoo.load(tmp_path / "emb")


def test_restored_arrays_are_aligned_for_use_in_place(tmp_path, getkey):
    # XLA's CPU client uses a 64-byte-aligned NumPy buffer in place instead of copying it.
    path = tmp_path / "emb"
    loaded = _assert_round_trip(path, zoo.Embedding(5000, 64, key=getkey()))
    assert loaded.weight.unsafe_buffer_pointer() % 64 == 0


def test_saves_with_crc32_checksums_still_load(tmp_path, getkey):
    # Saves made before checksums became XXH3-64 recorded CRC-32s.
    path = tmp_path / "mlp"
    model = zoo.MLP(4, 2, (3,), key=getkey())
    zoo.save(path, model)
    info = json.loads((path / "zoo.json").read_text())
    for entry, leaf in zip(info["manifest"], jax.tree.leaves(model), strict=True):
        del entry["xxh3_64"]
        entry["crc32"] = zlib.crc32(np.asarray(leaf).tobytes())
    (path / "zoo.json").write_text(json.dumps(info))
    assert tree_equal(zoo.load(path), model)
    info["manifest"][0]["crc32"] ^= 1
    (path / "zoo.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"is corrupted"):
        zoo.load(path)


def test_a_damaged_zoo_json_is_detected(tmp_path, getkey):
    path = tmp_path / "mlp"
    zoo.save(path, zoo.MLP(4, 2, (3,), key=getkey()))
    (path / "zoo.json").write_text((path / "zoo.json").read_text()[:100])
    with pytest.raises(ValueError, match=r"zoo\.json is damaged"):
        zoo.load(path)


def test_overwriting_needs_overwrite_true(tmp_path, getkey):
    path = tmp_path / "mlp"
    first, second = (zoo.MLP(4, 2, (3,), key=getkey()) for _ in range(2))
    zoo.save(path, first)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        zoo.save(path, second)
    zoo.save(path, second, overwrite=True)
    assert tree_equal(zoo.load(path), second)
    assert len(list(path.glob("arrays-*"))) == 1  # the old arrays are gone


def test_a_failed_overwrite_keeps_the_previous_save(tmp_path, getkey, monkeypatch):
    path = tmp_path / "mlp"
    first = zoo.MLP(4, 2, (3,), key=getkey())
    zoo.save(path, first)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    # The new arrays are written in full, then the failure comes before zoo.json is replaced.
    monkeypatch.setattr("zoo._io._serialization._write_json_atomically", fail)
    with pytest.raises(OSError, match="disk full"):
        zoo.save(path, zoo.MLP(4, 2, (3,), key=getkey()), overwrite=True)
    monkeypatch.undo()
    assert tree_equal(zoo.load(path), first)
    zoo.save(path, first, overwrite=True)  # and the next save clears the leftovers
    assert len(list(path.glob("arrays-*"))) == 1


def test_save_refuses_a_directory_that_is_not_a_save(tmp_path, getkey):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="does not hold a zoo save"):
        zoo.save(tmp_path, zoo.MLP(4, 2, (3,), key=getkey()), overwrite=True)


def test_save_refuses_abstract_arrays(tmp_path):
    skeleton = eqx.filter_eval_shape(zoo.MLP, 4, 2, (3,), key=jax.random.key(0))
    with pytest.raises(TypeError, match=r"model must hold concrete arrays.*\.layers\[0\]\.weight"):
        zoo.save(tmp_path / "mlp", skeleton)


class _WiderMLP(zoo.MLP):
    """A subclass registers itself too (under its module and name), so it rebuilds by itself."""

    def __init__(self, in_size: int, *, key):
        super().__init__(in_size, 2, (3,), key=key)


def test_a_subclass_of_a_zoo_model_loads_without_a_template(tmp_path, getkey):
    model = _WiderMLP(4, key=getkey())
    loaded = _assert_round_trip(tmp_path / "wider", model)
    assert type(loaded) is _WiderMLP


def test_a_saved_as_name_belongs_to_one_class():
    class First(zoo.Rebuildable, saved_as="tests.one-name"):
        pass

    with pytest.raises(TypeError, match=r"saved_as='tests\.one-name' is taken by .*First"):

        class Second(zoo.Rebuildable, saved_as="tests.one-name"):
            pass


@pytest.mark.parametrize(
    "build",
    [
        lambda key: zoo.MatrixFactorization(30, 20, 8, item_bias=False, key=key),
        lambda key: zoo.TwoTower(30, 20, 8, hidden=(16,), similarity="cosine", key=key),
        lambda key: zoo.DLRM(3, (10, 7), 8, bottom=(16,), top=(16, 8), key=key),
    ],
    ids=["mf", "two-tower", "dlrm"],
)
def test_recommenders_load_without_a_template(tmp_path, getkey, build):
    model = build(getkey())
    zoo.save(tmp_path / "model", model)
    loaded = zoo.load(tmp_path / "model")
    assert type(loaded) is type(model)
    assert tree_equal(loaded, model)


def test_save_refuses_a_model_holding_a_ref_and_writes_nothing(tmp_path):
    model = zoo.Embedding(5, 2, key=jax.random.key(0))
    with_ref = eqx.tree_at(lambda e: e.weight, model, jax.new_ref(model.weight))
    with pytest.raises(TypeError, match=r"zoo.save .*jax.Ref at \.weight.*jax.freeze"):
        zoo.save(tmp_path / "model", with_ref)
    assert not (tmp_path / "model").exists()
