"""The one atomic file writer: readers see the old file or the new one, never a part.

Checkpoints, the results store, reports and plots all write through :func:`atomic_write_bytes`
(same-folder temp file, fsync, rename, fsync of the folder), so a kill at any moment (SIGKILL
included) never leaves a half-written file. Only the standard library: importing it is cheap.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path


class AtomicWriteError(ValueError):
    """A file could not be written (disk full, read-only, not a folder); names the file and why."""

    def __init__(self, path: Path, err: OSError):
        code = errno.errorcode.get(err.errno or 0, "")
        why = f"{err.strerror or err}" + (f" ({code})" if code else "")
        super().__init__(f"cannot write {path}: {why}")
        self.path, self.errno = Path(path), err.errno


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``path`` so that readers see the old file or the new one, never a part.

    Same-folder temp file (``.<name>.<random>.tmp``), every byte written with ``os.write``, fsync,
    rename, fsync of the folder. On failure the temp file and any folder this call created are
    removed and :class:`AtomicWriteError` names the file (e.g. ENOSPC: disk full).
    """
    path = Path(path)
    created = missing_parents(path.parent)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        for folder in created:  # deepest first; only while still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(e, OSError):
            raise AtomicWriteError(path, e) from None
        raise
    fsync_dir(path.parent)
    return path


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def missing_parents(folder: Path) -> list[Path]:
    """The folders ``folder.mkdir(parents=True)`` would create, deepest first (to remove them again)."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (not every filesystem allows it: then a no-op)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
