"""zoo.train on a mesh, against one device: 8 simulated CPU devices, and 2 processes.

JAX fixes its device count when it starts, so the multi-device runs happen in worker processes
(tests/distributed_worker.py) started with their own environment; this process trains the
same runs (tests/distributed_cases.py) on its one device and compares.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import equinox as eqx
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import zoo

from . import distributed_cases as cases

pytestmark = pytest.mark.slow  # subprocesses with 8 devices, and two processes

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = [sys.executable, "-m", "tests.distributed_worker"]
TIMEOUT = 240  # seconds for a worker; a run takes a fraction of that on two busy cores


def _environment(**variables) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return environment | {"JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)} | variables


def _failure(name: str, output: str) -> str:
    return f"{name} failed; the end of its output:\n{output[-6000:]}"


@pytest.fixture(scope="module")
def mesh_run(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    """The worker's results on 8 simulated devices: saved models and a report."""
    out = tmp_path_factory.mktemp("mesh")
    environment = _environment(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    result = subprocess.run(
        [*WORKER, "mesh", str(out)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if result.returncode != 0:
        pytest.fail(_failure("the 8-device worker", result.stdout + result.stderr))
    return out, json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def recommender() -> list[np.ndarray]:
    return cases.arrays(cases.train_recommender())


def _assert_same_arrays(saved: pathlib.Path, expected: list[np.ndarray]) -> None:
    with np.load(saved) as archive:
        got = [archive[f"arr_{i}"] for i in range(len(archive.files))]
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_an_mlp_on_8_devices_trains_as_on_one(mesh_run):
    out, report = mesh_run
    assert report["devices"] == 8
    expected, evaluation = cases.train_mlp()
    _assert_same_arrays(out / "mlp.npz", cases.arrays(expected))
    # Evaluating the sharded model gives the same figures too.
    assert report["mlp_eval"].keys() == evaluation.keys()
    for name, values in evaluation.items():
        np.testing.assert_allclose(report["mlp_eval"][name], values, rtol=1e-5)
    # With an "fsdp" axis the dense weights really were split, each along its larger axis.
    assert report["mlp_specs"] == {
        ".layers[0].weight": "P('fsdp', None)",
        ".layers[0].bias": "P('fsdp',)",
        ".layers[1].weight": "P(None, 'fsdp')",
        ".layers[1].bias": "P('fsdp',)",
    }


def test_a_recommender_on_8_devices_trains_as_on_one(mesh_run, recommender):
    out, report = mesh_run
    _assert_same_arrays(out / "recommender.npz", recommender)
    specs = report["recommender_specs"]
    assert specs[".users.weight"] == specs[".items.weight"] == "P('model',)"
    assert {specs[name] for name in specs if name.startswith(".head")} == {"P()"}


def test_a_recommender_with_skewed_ids_trains_as_on_one_device(mesh_run):
    # Every user in the first shard's rows: the routed step's slots for that shard overflow,
    # and the steps that overflow run with a slot for every id instead.
    out, _ = mesh_run
    expected = cases.train_recommender(data=cases.ratings(users=cases.USERS // 4))
    _assert_same_arrays(out / "skewed.npz", cases.arrays(expected))


def test_a_recommender_whose_ids_fit_the_routing_slots_trains_as_on_one_device(mesh_run):
    # Each device's ids hit every shard once: only the capped routed step runs.
    out, _ = mesh_run
    expected = cases.train_recommender(data=cases.balanced_batches())
    _assert_same_arrays(out / "balanced.npz", cases.arrays(expected))


def test_a_recommender_reading_rows_from_its_weights_trains_as_on_one_device(mesh_run):
    # `weight[ids]` and `jnp.take(weight, ids, axis=0)` in the loss of the routed step, where
    # each device holds a shard of the table and the ids are global.
    out, _ = mesh_run
    expected = cases.train_recommender(loss=cases.taking_mse)
    _assert_same_arrays(out / "taking.npz", cases.arrays(expected))


def test_routed_lookups_and_gradients_are_exact(mesh_run):
    report = mesh_run[1]["routing"]
    # Uniform ids fit the fair-share slots; ids all of one shard do not, and that is detected
    # (the trainer then takes the step with a slot for every id).
    assert not report["uniform_capped"]["overflow"]
    assert report["skewed_capped"]["overflow"]
    assert not report["skewed_capped"]["rows_equal"]
    for case in ("uniform_capped", "uniform_full", "skewed_full"):
        assert report[case]["rows_equal"], case
        assert report[case]["grad_error"] < 1e-4, case


def test_routed_sparse_step_traffic_falls_with_devices(mesh_run):
    # Bytes the collectives of one step deliver to each device, batch 1024, as "model" grows.
    traffic = mesh_run[1]["traffic"]
    routed = [traffic[f"1x{m}"]["capped"] for m in (2, 4, 8)]
    unrouted = [traffic[f"1x{m}"]["none"] for m in (2, 4, 8)]
    # Routed: O(batch / devices), so halving with each doubling (bar the dense gradients').
    assert routed[1] < 0.6 * routed[0] and routed[2] < 0.6 * routed[1]
    # Unrouted, every device handles every row of the batch, however many devices there are.
    assert unrouted[0] == unrouted[1] == unrouted[2]
    assert routed[2] < unrouted[2]
    assert traffic["2x4"]["capped"] < traffic["2x4"]["none"]


def test_table_shards_hold_only_their_rows(mesh_run):
    _, report = mesh_run
    # Mesh (data=2, model=4): the device at model position m holds rows [16m, 16m + 16).
    for shard in report["user_shards"]:
        position = report["model_axis_of_device"][str(shard["device"])]
        assert shard["rows"] == [16 * position, 16 * position + 16]
        assert shard["shape"] == [16, cases.DIM]
        assert shard["matches"]
    assert len(report["user_shards"]) == 8


def test_optimizer_row_state_is_sharded_with_its_table(mesh_run):
    specs = mesh_run[1]["checkpoint"]["saved_specs"]  # a sharded zoo.TrainState
    for table in ("users", "items"):
        assert specs[f".model.{table}.weight"] == "P('model',)"
        assert specs[f".opt_state.embeddings.sum_of_squares.{table}.weight"] == "P('model',)"
    dense = {spec for name, spec in specs.items() if ".head." in name or "count" in name}
    assert dense == {"P()"}


def test_lazy_adam_moments_are_sharded_with_their_table(getkey):
    # Lazy Adam keeps (rows, 2, dim) moments: their leading axis is the table's rows.
    mesh = jax.make_mesh((1, 1), ("data", "model"))
    table = zoo.Embedding(8, 3, key=getkey())
    state = zoo.sparse.lazy_adam(0.1).init(table)
    shardings = zoo.distributed.state_shardings(state, mesh)
    assert shardings.moments.weight.spec == jax.sharding.PartitionSpec("model")
    assert shardings.count.spec == jax.sharding.PartitionSpec()


def test_sparse_step_on_a_mesh_does_no_table_sized_work(mesh_run):
    # The trainer's fused program for a 2**20-row table row-sharded 4 ways, batches of 256.
    report = mesh_run[1]["sparse_step"]
    local_rows, batch = report["local_rows"], report["batch_size"]
    assert local_rows == report["table_rows"] // 4
    # Every collective moves batch-sized arrays (ids, looked-up rows, dense gradients), never
    # the table: no all-gather of it, no table-sized all-reduce.
    assert report["collectives"]
    for collective in report["collectives"]:
        assert max(collective["dims"], default=0) <= batch, collective
    # No table-sized temporary on any device, and the table and its state are updated in place:
    # every argument buffer but the fresh totals is aliased to an output.
    assert report["temp_bytes"] < report["local_table_bytes"] / 16
    assert report["argument_bytes"] - report["alias_bytes"] < report["local_table_bytes"] / 16


def test_a_sharded_state_restores_onto_another_mesh(mesh_run):
    restored = mesh_run[1]["checkpoint"]
    # Saved from (data=2, model=4) on 8 devices, restored onto (data=2, model=2) on 4.
    assert restored["equal"]
    assert restored["devices"] == [4, 5, 6, 7]
    assert restored["specs"][".opt_state.embeddings.sum_of_squares.users.weight"] == "P('model',)"
    assert [shard["rows"] for shard in restored["accumulator_shards"]] == [[0, 32], [32, 64]] * 2
    assert all(shard["matches"] for shard in restored["accumulator_shards"])


def test_a_sharded_checkpoint_restores_onto_one_device(mesh_run):
    out, _ = mesh_run

    def make_state():
        model = cases.Scorer(jax.random.key(5))
        opt_state = cases.sparse_optimizer().init(model)
        return zoo.TrainState(
            model, opt_state, *(jax.numpy.zeros((), "int32"),) * 3, key=jax.random.key(6)
        )

    # The target is built from shapes alone, as it would be for a table too big for one device.
    mesh = jax.make_mesh((1,), ("model",))
    target = zoo.distributed.abstract_state(eqx.filter_eval_shape(make_state), mesh)
    restored = ocp.StandardCheckpointer().restore(out / "checkpoint", target)
    _assert_same_arrays(out / "checkpoint_state.npz", cases.arrays(restored))


def test_mesh_errors_name_the_argument(mesh_run):
    errors = mesh_run[1]["errors"]
    assert errors["batch_size"].startswith("ValueError: batch_size=31 must be divisible by the 2")
    assert "an Embedding of 50 rows cannot be row-sharded" in errors["table_rows"]
    assert "num_embeddings a multiple of 4 (e.g. 52" in errors["table_rows"]


def test_an_out_of_range_id_on_one_device_stops_every_device_with_the_table_named(mesh_run):
    # One batch of all 96 ratings, two of them with bad ids, 12 per device: the routed step's
    # devices agree on the check, so all of them raise instead of waiting for the one or two
    # that hold the bad ids, and the message spans both.
    error = mesh_run[1]["errors"]["out_of_range_id"]
    assert "model.users" in error
    assert "[0, 64)" in error and "from -1 to 66" in error


def test_a_mesh_with_unknown_axes_or_no_mesh_is_refused():
    model = cases.Scorer(jax.random.key(0))
    with pytest.raises(ValueError, match="axes \\['batch'\\] that zoo does not know"):
        cases.train_recommender(jax.make_mesh((1,), ("batch",)))
    with pytest.raises(TypeError, match="mesh"):
        zoo.distributed.shard_state(model, "data")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_as_one_device(tmp_path, recommender):
    port = _free_port()
    # The coordinator listens on loopback only; the processes find each other through it.
    environment = _environment(JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}")
    processes = [
        subprocess.Popen(
            [*WORKER, "process", str(tmp_path), str(port), str(rank)],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    deadline = time.monotonic() + TIMEOUT
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=max(1, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        pytest.fail(f"the 2 processes did not finish within {TIMEOUT} s")
    finally:
        for process in processes:  # a process left waiting for its peer would never end
            if process.poll() is None:
                process.kill()
                process.wait()
    for rank, (process, output) in enumerate(zip(processes, outputs, strict=True)):
        assert process.returncode == 0, _failure(f"process {rank}", output)
    for rank in (0, 1):
        report = json.loads((tmp_path / f"report_{rank}.json").read_text())
        assert (report["process_count"], report["devices"], report["local_devices"]) == (2, 4, 2)
        for run in ("recommender", "recommender_host"):
            # Mesh (data=2, model=2): each process holds both row halves of the table, once.
            shards = report[f"{run}_shards"]
            assert sorted(shard["rows"] for shard in shards) == [[0, 32], [32, 64]]
            assert all(shard["matches"] for shard in shards)
    # With zoo.train's defaults (fused epochs, decided alike by both processes) and with
    # host-side batches.
    _assert_same_arrays(tmp_path / "recommender.npz", recommender)
    _assert_same_arrays(tmp_path / "recommender_host.npz", recommender)
