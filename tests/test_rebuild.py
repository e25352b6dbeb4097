"""zoo.load gives back exactly what was saved: models rebuilt from the arguments they were built
with, static fields included; every scalar leaf of every type, or a refusal before anything is
written."""

import decimal
import enum
import json
import math
import struct

import equinox as eqx
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jaxtyping import Array, Float

import zoo
from zoo._io import _rebuild

from .helpers import tree_equal

# -- a model is rebuilt from the arguments it was built with ----------------------------------


class _Signed(zoo.Rebuildable, saved_as="tests.Signed"):
    """A static field set from another argument: `sign` from `negate`."""

    weight: Float[Array, " size"]
    sign: float = eqx.field(static=True)

    def __init__(self, size: int, *, negate: bool = False, key):
        self.weight = jax.random.normal(key, (size,))
        self.sign = -1.0 if negate else 1.0

    def __call__(self, x):
        return self.sign * (self.weight @ x)


class _ScaledMLP(zoo.MLP):
    """A user's subclass of a zoo model, with a static field of its own from a flag."""

    scale: float = eqx.field(static=True, default=1.0)

    def __init__(self, in_size: int, *, double: bool = False, key):
        super().__init__(in_size, 2, (3,), key=key)
        self.scale = 2.0 if double else 1.0

    def __call__(self, x, *, key=None):
        return self.scale * super().__call__(x, key=key)


@pytest.mark.parametrize(
    ("build", "field", "value"),
    [
        (lambda key: _Signed(3, negate=True, key=key), "sign", -1.0),
        (lambda key: _ScaledMLP(3, double=True, key=key), "scale", 2.0),
    ],
    ids=["user-model", "subclass-of-a-zoo-model"],
)
def test_a_static_field_set_from_another_argument_loads_without_a_template(
    tmp_path, getkey, build, field, value
):
    model = build(getkey())
    zoo.save(tmp_path / "model", model)
    loaded = zoo.load(tmp_path / "model")
    assert type(loaded) is type(model)
    assert getattr(loaded, field) == value
    assert tree_equal(loaded, model)
    x = jnp.linspace(-1.0, 1.0, 3)
    np.testing.assert_array_equal(loaded(x), model(x))


_GLOBAL_SIGN = {"sign": 1.0}


class _ReadsAGlobal(zoo.Rebuildable, saved_as="tests.ReadsAGlobal"):
    """Its static field depends on more than its arguments: it cannot be rebuilt from them."""

    weight: Float[Array, " size"]
    sign: float = eqx.field(static=True)

    def __init__(self, size: int, *, key):
        self.weight = jax.random.normal(key, (size,))
        self.sign = _GLOBAL_SIGN["sign"]


def test_a_model_its_arguments_do_not_rebuild_is_refused_before_anything_is_written(
    tmp_path, getkey, monkeypatch
):
    with monkeypatch.context() as patch:
        patch.setitem(_GLOBAL_SIGN, "sign", -1.0)
        model = _ReadsAGlobal(3, key=getkey())
    path = tmp_path / "model"
    with pytest.raises(ValueError, match=r"tests\.ReadsAGlobal.*static field \.sign would be 1\.0"):
        zoo.save(path, model)
    assert not path.exists()
    # The way out the error names: a pytree that holds it, loaded into a template.
    zoo.save(path, {"model": model})
    assert zoo.load(path, like={"model": model})["model"].sign == -1.0


def test_arguments_that_cannot_be_recorded_are_named_and_need_like(tmp_path, getkey):
    model = zoo.MLP(3, 2, (4,), activation=lambda x: 2 * x, key=getkey())
    zoo.save(tmp_path / "model", model)
    info = json.loads((tmp_path / "model" / "zoo.json").read_text())["model"]
    assert info["arguments"] is None
    assert "activation=" in info["not_rebuildable"]
    with pytest.raises(TypeError, match=r"zoo\.MLP.*activation=.*like="):
        zoo.load(tmp_path / "model")


def test_the_record_changes_no_pytree_structure(getkey):
    a, b = _Signed(3, key=getkey()), _Signed(3, negate=False, key=getkey())
    c = zoo.MLP(3, 2, (4,), init="glorot", key=getkey())
    d = zoo.MLP(3, 2, (4,), key=getkey())
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert jax.tree.structure(c) == jax.tree.structure(d)
    assert len(jax.tree.leaves(c)) == 4  # weights and biases only
    assert "_construction" not in repr(c)


def test_saved_as_must_be_a_string():
    with pytest.raises(TypeError, match="saved_as"):

        class _Named(zoo.Rebuildable, saved_as=3):
            pass


# -- every model of the zoo loads without a template, bit for bit -----------------------------

_USERS, _ITEMS = jnp.array([0, 5, 29]), jnp.array([1, 19, 7])
_ZOO_MODELS = {
    "zoo.MLP": (
        lambda key: zoo.MLP(4, 2, (3,), activation="gelu", dropout=0.1, key=key),
        lambda m: jax.vmap(m)(jnp.linspace(-1.0, 1.0, 8).reshape(2, 4)),
    ),
    "zoo.Embedding": (
        lambda key: zoo.Embedding(
            10, 4, padding_idx=0, combiner="mean", dtype=jnp.bfloat16, key=key
        ),
        lambda m: m(jnp.array([1, 0, 3])),
    ),
    "zoo.MatrixFactorization": (
        lambda key: zoo.MatrixFactorization(30, 20, 8, item_bias=False, key=key),
        lambda m: jax.vmap(m)(_USERS, _ITEMS),
    ),
    "zoo.TwoTower": (
        lambda key: zoo.TwoTower(
            30,
            20,
            8,
            hidden=(16,),
            item_features=np.arange(20) % 5,
            similarity="cosine",
            temperature=0.1,
            key=key,
        ),
        lambda m: jax.vmap(m)(_USERS, _ITEMS),
    ),
    "zoo.DLRM": (
        lambda key: zoo.DLRM(3, (10, 7), 8, bottom=(16,), top=(16, 8), key=key),
        lambda m: m(jnp.linspace(0.0, 1.0, 3), jnp.array([4, 6])),
    ),
    "zoo.recsys.DLRMRecommender": (
        lambda key: zoo.recsys.DLRMRecommender(
            30, 20, np.arange(20) % 7, dim=8, bottom=(8,), top=(8,), key=key
        ),
        lambda m: jax.vmap(m)(_USERS, _ITEMS),
    ),
    "zoo.SASRec": (
        lambda key: zoo.SASRec(20, dim=8, num_blocks=1, num_heads=2, max_len=5, key=key),
        lambda m: m.scores(jnp.array([20, 3, 1, 4])),
    ),
}


def test_the_list_of_zoo_models_below_is_complete():
    """A model added to the zoo must join the template-free test below."""
    registered = {name for name in _rebuild._REGISTRY if name.startswith("zoo.")}
    assert registered == set(_ZOO_MODELS)


def test_every_model_zoo_exports_is_rebuildable_and_listed():
    """A public model that is not `zoo.Rebuildable` would not join the list above by itself."""
    # The trainer's callbacks and options are modules too (they check themselves when built),
    # but they are never saved as models.
    not_models = (zoo.Rebuildable, zoo.TrainState, zoo.Checkpointing, zoo.Loop, zoo.ValidationSplit)
    exported = {
        _rebuild.name_of(cls)
        for cls in vars(zoo).values()
        if isinstance(cls, type)
        and issubclass(cls, eqx.Module)
        and cls not in not_models
        and not issubclass(cls, zoo.Callback)
    }
    assert exported == {name for name in _ZOO_MODELS if name.count(".") == 1}
    assert all(issubclass(_rebuild._REGISTRY[name], zoo.Rebuildable) for name in exported)


@pytest.mark.parametrize("name", sorted(_ZOO_MODELS))
def test_every_zoo_model_loads_without_a_template_bit_for_bit(tmp_path, getkey, name):
    build, outputs = _ZOO_MODELS[name]
    model = build(getkey())
    zoo.save(tmp_path / "model", model)
    info = json.loads((tmp_path / "model" / "zoo.json").read_text())["model"]
    assert info["class"] == name and info["arguments"] is not None, info.get("not_rebuildable")
    loaded = zoo.load(tmp_path / "model")
    assert type(loaded) is type(model)
    assert tree_equal(loaded, model)  # arrays bit for bit, and every static field
    expected, got = outputs(model), outputs(loaded)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


# -- scalar leaves: every type comes back exactly, or the save is refused ---------------------

_NUMPY_SCALARS = [
    np.bool_(True),
    np.int8(-128),
    np.int16(-3),
    np.int32(2**31 - 1),
    np.int64(-(2**63)),
    np.uint8(255),
    np.uint16(7),
    np.uint32(2**32 - 1),
    np.uint64(2**64 - 1),
    np.float16(0.1),
    np.float32(np.nan),
    np.float64(-0.0),
    np.longdouble(1) / np.longdouble(3),
    np.complex64(1 - 2j),
    np.complex128(complex(np.inf, -1.5)),
    np.clongdouble(1) / np.clongdouble(3),
    np.str_("héllo"),
    np.bytes_(b"a\x00b"),
    np.datetime64("2020-01-01T00:00:03"),
    np.datetime64("NaT", "ns"),
    np.timedelta64(5, "ms"),
    np.void(b"\x01\x02\x03"),
    ml_dtypes.bfloat16(1.5),
    ml_dtypes.float8_e4m3fn(0.5),
]
_PYTHON_SCALARS = [
    True,
    7,
    -(2**80),
    0.1 + 0.2,
    -0.0,
    math.inf,
    math.nan,
    1 - 2j,
    "run-é",
    b"\x00x",
]


def _bits(x) -> bytes:
    if isinstance(x, float):
        return struct.pack("<d", x)
    if isinstance(x, complex):
        return struct.pack("<dd", x.real, x.imag)
    if isinstance(x, np.floating | np.complexfloating) and x.dtype.itemsize > 8:
        # A longdouble's padding bytes are undefined: compare its value (and its sign).
        return repr((x, np.signbit(np.real(x)))).encode()
    if isinstance(x, np.generic):
        return x.tobytes() if not isinstance(x, np.str_) else str(x).encode()
    return repr(x).encode()


@pytest.mark.parametrize("value", _NUMPY_SCALARS + _PYTHON_SCALARS, ids=repr)
def test_a_scalar_leaf_comes_back_exactly(tmp_path, value):
    zoo.save(tmp_path / "tree", {"weight": jnp.ones(2), "value": value})
    # The template's leaf is of another type: what comes back is what was saved.
    loaded = zoo.load(tmp_path / "tree", like={"weight": jnp.zeros(2), "value": 0})["value"]
    assert type(loaded) is type(value)
    assert getattr(loaded, "dtype", None) == getattr(value, "dtype", None)
    assert _bits(loaded) == _bits(value)


class _Counted(zoo.Rebuildable, saved_as="tests.Counted"):
    weight: Float[Array, " size"]
    steps: int
    scale: np.float16
    stamp: np.datetime64

    def __init__(self, size: int, *, key):
        self.weight = jax.random.normal(key, (size,))
        self.steps = 0
        self.scale = np.float16(1)
        self.stamp = np.datetime64("NaT", "s")


def test_scalar_leaves_of_a_model_come_back_without_a_template(tmp_path, getkey):
    # Rebuilt with eqx.filter_eval_shape, which makes NumPy scalars 0-d shapes.
    model = _Counted(3, key=getkey())
    values = (7, np.float16(0.25), np.datetime64("2026-12-03T16:00:00"))
    model = eqx.tree_at(lambda m: (m.steps, m.scale, m.stamp), model, values)
    zoo.save(tmp_path / "model", model)
    loaded = zoo.load(tmp_path / "model")
    for field, value in zip(("steps", "scale", "stamp"), values, strict=True):
        back = getattr(loaded, field)
        assert type(back) is type(value) and back == value, field
    assert loaded.stamp.dtype == values[2].dtype


class _Color(enum.IntEnum):
    RED = 1


_UNRECORDABLE = {
    "decimal": decimal.Decimal("0.1"),
    "int-enum": _Color.RED,
    "structured-void": np.zeros((), dtype=[("a", "<i4"), ("b", "<f8")])[()],
    "object-array": np.array([object()], dtype=object),
}


@pytest.mark.parametrize("value", _UNRECORDABLE.values(), ids=_UNRECORDABLE.keys())
def test_a_leaf_that_cannot_come_back_is_refused_before_anything_is_written(tmp_path, value):
    fresh = tmp_path / "fresh"
    with pytest.raises(TypeError, match=r"model .*\['value'\]"):
        zoo.save(fresh, {"weight": jnp.ones(2), "value": value})
    assert list(tmp_path.iterdir()) == []  # no folder, no temporary file beside it
    # Over a previous save: it stays as it was, with nothing added beside it.
    path = tmp_path / "save"
    previous = {"weight": jnp.arange(2.0)}
    zoo.save(path, previous)
    files = sorted(path.rglob("*"))
    with pytest.raises(TypeError, match=r"\['value'\]"):
        zoo.save(path, {"weight": jnp.ones(2), "value": value}, overwrite=True)
    assert sorted(path.rglob("*")) == files
    assert tree_equal(zoo.load(path, like=previous), previous)


def test_saves_of_the_first_format_still_load(tmp_path, getkey):
    """Format 1 wrote arguments as plain JSON (dtypes tagged `__dtype__`) and scalar leaves by
    type name and value."""
    model = zoo.MLP(3, 2, (4,), dtype=jnp.bfloat16, key=getkey())
    zoo.save(tmp_path / "mlp", model)
    info = json.loads((tmp_path / "mlp" / "zoo.json").read_text())
    info["format"] = "zoo.save/1"
    info["model"]["arguments"] = {
        "in_size": 3,
        "out_size": 2,
        "hidden": [4],
        "dropout": 0.0,
        "activation": "relu",
        "final_activation": "identity",
        "use_bias": True,
        "dtype": {"__dtype__": "bfloat16"},
    }
    (tmp_path / "mlp" / "zoo.json").write_text(json.dumps(info))
    assert tree_equal(zoo.load(tmp_path / "mlp"), model)

    tree = {"weight": jnp.ones(2), "n": 3, "scale": np.float32(1.5)}
    zoo.save(tmp_path / "tree", tree)
    info = json.loads((tmp_path / "tree" / "zoo.json").read_text())
    info["format"] = "zoo.save/1"
    info["scalars"] = [
        {"path": "['n']", "type": "int", "value": 3},
        {"path": "['scale']", "type": "numpy", "dtype": "float32", "value": 1.5},
    ]
    (tmp_path / "tree" / "zoo.json").write_text(json.dumps(info))
    loaded = zoo.load(tmp_path / "tree", like={"weight": jnp.zeros(2), "n": 0, "scale": 0})
    assert loaded["n"] == 3 and type(loaded["scale"]) is np.float32 and loaded["scale"] == 1.5


def test_a_template_leaf_where_the_saved_model_had_none_is_refused(tmp_path):
    # The template's 5 would come back as if it had been saved.
    zoo.save(tmp_path / "tree", {"weight": jnp.ones(2), "value": None})
    with pytest.raises(ValueError, match=r"at \['value'\]: like= has 5 there"):
        zoo.load(tmp_path / "tree", like={"weight": jnp.zeros(2), "value": 5})


def test_a_template_array_where_the_saved_model_had_none_is_named_with_its_shape(tmp_path):
    # Arrays are checked against the manifest, which names the template's dtype and shape.
    zoo.save(tmp_path / "tree", {"weight": jnp.ones(2), "bias": None})
    with pytest.raises(
        ValueError, match=r"at \['bias'\]: the model has an array there \(float32\[3\]\)"
    ):
        zoo.load(tmp_path / "tree", like={"weight": jnp.zeros(2), "bias": jnp.zeros(3)})
