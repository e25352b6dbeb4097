"""Standard-library downloads that never leave a partial or unverified file behind."""

import contextlib
import hashlib
import http.client
import io
import logging
import os
import pathlib
import tempfile
import urllib.request
from collections.abc import Sequence

_logger = logging.getLogger(__name__)
_CHUNK_BYTES = 1 << 20


class DatasetNotFoundError(RuntimeError):
    """A dataset's files are neither on disk nor downloadable.

    The message names the files that are expected, the folder they are expected in and how to
    point zoo at a folder that holds them.
    """


class ChecksumMismatchError(ValueError):
    """A downloaded file's md5 differs from the published one."""


class AllMirrorsFailedError(OSError):
    """No mirror delivered a verified copy of a file; `failures` says what went wrong with each."""

    def __init__(self, filename: str, failures: Sequence[str]):
        self.failures = tuple(failures) or ("no mirror was configured",)
        super().__init__(f"could not download {filename}: " + "; ".join(self.failures))


# What a flaky network or a bad mirror can raise; anything else is a bug and propagates.
_RECOVERABLE = (OSError, http.client.HTTPException, ChecksumMismatchError)


def join_url(base: str, filename: str) -> str:
    return base.rstrip("/") + "/" + filename


def download_verified(url: str, destination: pathlib.Path, *, md5: str, timeout: float) -> None:
    """Downloads `url` to `destination`, which appears only once complete and matching `md5`.

    The bytes go to a temporary file in the destination's folder (so that the final
    `os.replace` is an atomic rename on the same file system); on any failure the temporary
    file is removed.
    """
    handle, temporary_name = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".part"
    )
    temporary = pathlib.Path(temporary_name)
    try:
        with os.fdopen(handle, "wb") as file:
            digest = _copy_and_hash(url, file, timeout=timeout)
        if digest != md5:
            raise ChecksumMismatchError(f"md5 of the download is {digest}, expected {md5}")
        # mkstemp makes the file private (0600); a shared data folder needs it world-readable.
        temporary.chmod(0o644)
        os.replace(temporary, destination)
    except BaseException:  # KeyboardInterrupt too: never leave the temporary file behind
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


def _copy_and_hash(url: str, file: io.BufferedIOBase, *, timeout: float) -> str:
    """Streams `url` into `file` and returns the md5 hex digest of the bytes written."""
    digest = hashlib.md5(usedforsecurity=False)  # md5 checks integrity, not authenticity
    with urllib.request.urlopen(url, timeout=timeout) as response:
        while chunk := response.read(_CHUNK_BYTES):
            digest.update(chunk)
            file.write(chunk)
    return digest.hexdigest()


def download_from_mirrors(
    filename: str,
    folder: pathlib.Path,
    *,
    mirrors: Sequence[str],
    md5: str,
    timeout: float,
) -> None:
    """Tries each mirror in turn until one delivers `filename` with the right md5.

    Raises `AllMirrorsFailedError` listing every mirror's failure if none does.
    """
    failures = []
    for base in mirrors:
        url = join_url(base, filename)
        _logger.info("downloading %s to %s", url, folder)
        try:
            download_verified(url, folder / filename, md5=md5, timeout=timeout)
        except _RECOVERABLE as error:
            failures.append(f"{url}: {error}")
        else:
            return
    raise AllMirrorsFailedError(filename, failures)
