"""Where a run's data came from, without the machine's paths: format, relative path, digest.

``load_dataset`` records ``source`` as "<absolute path> (<format>)". Run files and reports must
not carry the absolute path of the machine that ran them, so a run stores
:func:`portable_source` instead: the format, the path relative to the data root and the SHA-256
of the files read (a file's bytes; a folder's files in sorted order, each with its relative
name), which identifies the data on any machine.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

_SOURCE = re.compile(r"^(?P<path>.+) \((?P<fmt>[\w-]+)\)$")
DIGEST_CHARS = 16  # a shortened SHA-256: enough to tell data versions apart in a report
_CHUNK = 1 << 20


def files_sha256(path: Path) -> str:
    """SHA-256 of a file, or of every file under a folder (relative name and bytes, sorted)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(f.relative_to(path).as_posix().encode("utf-8") + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                h.update(chunk)
    return h.hexdigest()


def relative_to_root(path: Path, root: Path) -> str:
    """``path`` relative to the data root; just its last two parts when it lies elsewhere."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix() or "."
    except ValueError:
        return "/".join(path.parts[-2:])


def portable_source(source: str, root: str | Path) -> str:
    """"<format>: <path relative to root> sha256:<digest>" for a loader's ``source`` string.

    >>> portable_source("/nowhere/x.pkl (mmsa-pickle)", "/nowhere").startswith("mmsa-pickle: x.pkl")
    True
    """
    m = _SOURCE.match(source)
    if m is None:
        return source
    path, fmt = Path(m["path"]), m["fmt"]
    digest = files_sha256(path)[:DIGEST_CHARS] if path.exists() else "unavailable"
    return f"{fmt}: {relative_to_root(path, Path(root))} sha256:{digest}"
