"""`zoo.distributed.initialize`: join a multi-process run, CPU collectives included."""

import socket
import time

import jax

from .. import _checks
from .._custom_types import IntLike


def _check_count(name: str, value, minimum: int) -> None:
    _checks.integer(
        name, value, minimum=minimum, example="zoo.distributed.initialize('127.0.0.1:1234', 2, 0)"
    )


def _check_address(coordinator_address) -> None:
    host, _, port = str(coordinator_address).rpartition(":")
    if not isinstance(coordinator_address, str) or not host or not port.isdigit():
        raise ValueError(
            "coordinator_address must be 'host:port' of process 0, e.g. '10.0.0.1:1234' (or "
            f"'127.0.0.1:1234' for processes on one machine); got {coordinator_address!r}."
        )


def initialize(
    coordinator_address: str,
    num_processes: IntLike,
    process_id: IntLike,
    *,
    cpu_devices: IntLike | None = None,
    timeout: IntLike = 300,
) -> None:
    """Joins this process to a run of `num_processes` processes: `jax.distributed.initialize`
    with cross-process collectives on CPU too.

    Call it first, in every process, before any other JAX call. Afterwards `jax.devices()` lists
    the devices of all processes, `jax.local_devices()` this process's own, and a mesh over
    `jax.devices()` spans them all (pass it to `zoo.train(..., mesh=mesh)`). On CPU, JAX's
    collectives between processes go through Gloo over TCP, which this selects, so several
    processes on one machine (or CPU hosts) form one run.

    **Arguments:**

    - `coordinator_address`: `"host:port"` where process 0 serves the coordinator; every
        process passes the same one. `"127.0.0.1:PORT"` for processes on one machine.
    - `num_processes`: the number of processes in the run.
    - `process_id`: this process's rank, `0 <= process_id < num_processes`.
    - `cpu_devices`: on CPU, how many devices this process simulates (as
        `--xla_force_host_platform_device_count` does); `None` leaves JAX's default.
    - `timeout`: seconds to wait for every process to join before raising.

    **Raises:**

    `ValueError` for a malformed argument; `TimeoutError` naming `coordinator_address` when a
    process other than 0 finds no coordinator there within `timeout` (before JAX is touched:
    JAX itself would abort the process); `RuntimeError` (from JAX) if JAX has already
    initialized its backends, i.e. when this is not the first JAX call of the process.

    !!! warning
        Once connected, JAX's coordination service aborts the process (`SIGABRT`), rather than
        raising, when the others do not all join within `timeout` (process 0 waiting for a
        process that never starts, say): that part is JAX's, and cannot be caught.

    **Example:**

    ```{.python notest}
    # a fragment: one process of two (docs/scaling.md)
    # started as `python train.py RANK` for RANK in 0, 1
    zoo.distributed.initialize("127.0.0.1:12345", num_processes=2, process_id=int(sys.argv[1]))
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    model, history = zoo.train(model, data, mesh=mesh, key=jax.random.key(0))
    ```
    """
    _check_address(coordinator_address)
    _check_count("num_processes", num_processes, 1)
    _check_count("process_id", process_id, 0)
    if process_id >= num_processes:
        raise ValueError(
            f"process_id must be below num_processes={num_processes}; got {process_id}."
        )
    if cpu_devices is not None:
        _check_count("cpu_devices", cpu_devices, 1)
    _check_count("timeout", timeout, 1)
    deadline = time.monotonic() + timeout
    if process_id != 0:
        _wait_for_coordinator(coordinator_address, timeout, deadline)
    if cpu_devices is not None:
        jax.config.update("jax_num_cpu_devices", cpu_devices)
    # Without cross-process collectives a CPU computation spanning processes cannot run.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address,
        num_processes,
        process_id,
        # Every parameter is given: do not let a cluster environment (Slurm, MPI) override it.
        cluster_detection_method="deactivate",
        initialization_timeout=max(1, round(deadline - time.monotonic())),
    )


def _wait_for_coordinator(coordinator_address: str, timeout: int, deadline: float) -> None:
    """Waits until process 0's coordinator accepts connections. JAX's own wait ends in an
    abort of the process, which no caller can catch; this one raises."""
    host, _, port = coordinator_address.rpartition(":")
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=max(left, 0.1)):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"coordinator_address={coordinator_address!r}: no coordinator answered "
                    f"within timeout={timeout} s ({error}). Process 0 serves it: start it too, "
                    "and check the address and port (e.g. '10.0.0.1:1234', the address of "
                    "process 0's machine)."
                ) from None
            time.sleep(min(0.1, max(left, 0)))
