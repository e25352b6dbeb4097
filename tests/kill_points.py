"""Deterministic kill points: the process SIGKILLs itself at the nth pass through a named point
of zoo's save path, so a test can kill it exactly where a crash would do the most harm.

The points are zoo's own steps of a save, from the first byte to the last rename:

- `"array-torn"`: halfway through writing the nth array file's data (a torn `.npy`);
- `"array-written"`: right after the nth array file is complete and synced;
- `"before-json"`: `zoo.save`'s arrays are written, its nth `zoo.json` is not;
- `"after-json"`: `zoo.save`'s nth `zoo.json` is in place, the old arrays not yet removed;
- `"finalize"`: a checkpoint's arrays are written, Orbax has not yet committed its nth one;
- `"chunk"`: `zoo.train` is about to run its nth compiled chunk of steps.

Randomly timed kills (a bounded soak) find what these miss; these make the worst moments
certain to be tested on every run.
"""

import os
import signal

import zoo._io._array_files as array_files
import zoo._io._serialization as serialization
from zoo._training._step import Programs

POINTS = ("array-torn", "array-written", "before-json", "after-json", "finalize", "chunk")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _counting(nth: int):
    """A function that kills the process on its nth call."""
    calls = [0]

    def tick() -> None:
        calls[0] += 1
        if calls[0] == nth:
            _die()

    return tick


def arm(point: str, nth: int) -> None:
    """From now on, this process kills itself at the `nth` pass through `point`."""
    if point not in POINTS:
        raise ValueError(f"point must be one of {POINTS}; got {point!r}.")
    tick = _counting(nth)
    if point == "array-torn":
        _wrap_torn_write(nth)
    elif point == "array-written":
        _wrap(array_files, "_write_npy", after=tick)
    elif point == "before-json":
        _wrap(serialization, "_write_json_atomically", before=tick)
    elif point == "after-json":
        _wrap(serialization, "_write_json_atomically", after=tick)
    elif point == "finalize":
        _wrap(array_files._TreeHandler, "finalize", before=tick)
    else:
        _wrap_chunks(tick)


def _wrap(owner, name: str, *, before=None, after=None) -> None:
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        if before is not None:
            before()
        result = original(*args, **kwargs)
        if after is not None:
            after()
        return result

    setattr(owner, name, wrapped)


def _wrap_chunks(tick) -> None:
    """The compiled programs are made per run, as attributes: wrap each run's as it is made."""
    original = Programs.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        run_steps = self.run_steps

        def counted(*arguments):
            tick()
            return run_steps(*arguments)

        self.run_steps = counted

    Programs.__init__ = init


def _wrap_torn_write(nth: int) -> None:
    """Kills halfway through the nth array's data (not its header): a torn file on disk."""
    original = array_files._write_npy
    calls = [0]

    def write(path, array):
        calls[0] += 1
        if calls[0] != nth:
            return original(path, array)
        header = array_files._npy_header(array)
        data = array_files._as_bytes(array)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.pwrite(fd, header, 0)
        os.pwrite(fd, data[: len(data) // 2], len(header))
        os.fsync(fd)
        _die()

    array_files._write_npy = write
