"""One writer per checkpoint folder: an advisory lock on a file inside it.

The lock is `fcntl.flock` on `<folder>/.zoo-lock`, taken without waiting. The kernel releases
it when its holder closes the file or dies, however it dies (SIGKILL, a crash, a power cut of
the machine), so a lock is never stale: the next writer takes over a dead one's folder at once.
The file itself stays (removing a file another process may be locking races with it); it holds
the pid of the last writer, so that a refusal can say which process holds the folder.

An advisory lock binds only processes that take it: every `zoo.Checkpoints` (and so every
`zoo.train` with a `zoo.Checkpointing`) does. On network file systems without `flock` support the
lock may not be seen by other machines.
"""

import errno
import fcntl
import os
import pathlib

LOCK_NAME = ".zoo-lock"


class FolderInUseError(RuntimeError):
    """Another process holds the folder's lock."""


class FolderLock:
    """Holds `<folder>/.zoo-lock` until `release` (or the process ends)."""

    def __init__(self, folder: pathlib.Path):
        self.path = folder / LOCK_NAME
        self._fd: int | None = None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _holder(fd)
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise FolderInUseError(
                f"{folder} is in use by another process ({holder} holds its lock {self.path}): "
                "two writers in one folder would replace each other's checkpoints. Wait for "
                "that run to end (or stop it), or use another folder."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the lock
            self._fd = None

    def __del__(self):
        self.release()


def _holder(fd: int) -> str:
    content = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return f"pid {content}" if content.isdigit() else "a process"
