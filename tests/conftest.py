"""Test configuration: strict dtype promotion, a fresh-key fixture and shared helpers.

jaxtyping + beartype are switched on for the whole `zoo` package by the pytest option
``--jaxtyping-packages`` in pyproject.toml, so every annotated shape and dtype is checked here.
"""

import os
import pathlib

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def getkey():
    """Returns a function that hands out a new PRNG key on every call."""
    keys = iter(jax.random.split(jax.random.key(5678), 10_000))
    return lambda: next(keys)


@pytest.fixture
def shared_data() -> pathlib.Path:
    """The project's real data folder (`../shared/data`).

    A user's fresh clone does not have it, so tests that need it are skipped there; under `CI=true`
    its absence is a failure, because CI must run them.
    """
    if not SHARED_DATA.is_dir():
        message = f"real data folder {SHARED_DATA} is absent"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}, but CI=true requires it")
        pytest.skip(f"{message} (only CI and project machines have it)")
    return SHARED_DATA
