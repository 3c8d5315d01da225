"""Files that are not what they claim: Git LFS pointer stubs, and weights or tokenizers that fail to load.

A pointer is a ~130-byte text file (``version https://git-lfs.github.com/spec/v1``, ``oid``,
``size``) standing where the weights or features should be. torch, safetensors, protobuf and
pickle all fail on it with messages that name no file; the loaders and the preflight check
for it first and say, in one line, what to run.
"""

from __future__ import annotations

import pickle
from pathlib import Path

LFS_SIGNATURE = b"version https://git-lfs.github.com/spec/"
POINTER_MAX_BYTES = 1024  # real pointers are ~130 bytes; anything larger is real content


def is_lfs_pointer(path: str | Path) -> bool:
    """Whether ``path`` is a small file that starts with the Git LFS pointer signature."""
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > POINTER_MAX_BYTES:
            return False
        with open(path, "rb") as handle:
            return handle.read(len(LFS_SIGNATURE)) == LFS_SIGNATURE
    except OSError:
        return False


def lfs_pointer_problem(path: str | Path) -> str:
    """What is wrong with a pointer stub and the command that fetches its content."""
    return f"is a Git LFS pointer, not the file (run git lfs pull in {Path(path).parent})"


def lfs_pointer_message(path: str | Path) -> str:
    """The one line: ``<file>: is a Git LFS pointer, not the file (run git lfs pull in <dir>)``."""
    return f"{path}: {lfs_pointer_problem(path)}"


def first_lfs_pointer(paths) -> Path | None:
    """The first of ``paths`` (sorted) that is an LFS pointer, else None."""
    for path in sorted(Path(p) for p in paths):
        if is_lfs_pointer(path):
            return path
    return None


def folder_lfs_pointer(folder: str | Path) -> Path | None:
    """The first file directly inside ``folder`` that is an LFS pointer, else None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    return first_lfs_pointer(p for p in folder.iterdir() if p.is_file())


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def load_failure_message(folder: Path, what: str, exc: BaseException, files: tuple[str, ...] = ()) -> str:
    """One line naming the file (the only candidate among ``files``, else the only weight file
    for ``what == "model"``, else ``folder``) and why it failed to load.

    torch's unpickling errors end with advice to turn ``weights_only`` off, which would run
    whatever code the file names: that advice is replaced by what the failure means here.
    """
    text = " ".join(str(exc).split())
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text:
        text = "torch cannot unpickle it safely: the file is corrupt, truncated or not a checkpoint"
    elif not text:
        text = type(exc).__name__
    candidates = [folder / f for f in files if (folder / f).is_file()]
    if not candidates and what == "model" and folder.is_dir():
        candidates = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    where = candidates[0] if len(candidates) == 1 else folder
    return f"{where}: cannot load the {what} ({text.split('. ')[0][:300]})"
