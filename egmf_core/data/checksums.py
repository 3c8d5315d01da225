"""SHA-256 of dataset files: write a ``SHA256SUMS`` file and verify downloads against it.

    python -m egmf_core.data.checksums DIR            # writes DIR/SHA256SUMS
    python -m egmf_core.data.checksums DIR --verify   # checks DIR against DIR/SHA256SUMS

``SHA256SUMS`` uses ``sha256sum``'s format (``<hex>  <relative path>``, ``*`` marks binary
mode), so ``cd DIR && sha256sum -c SHA256SUMS`` checks it too. Corrupted feature pickles are a
known complaint of the field; a mismatch is a DataError naming the file.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Mapping
from pathlib import Path

from .errors import DataError

SUMS_NAME = "SHA256SUMS"


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def data_files(folder: str | Path) -> list[Path]:
    """Every regular file under ``folder`` except SHA256SUMS, sorted by relative path."""
    folder = Path(folder)
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != SUMS_NAME]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def write_sha256sums(folder: str | Path) -> Path:
    """Hash every data file under ``folder`` into ``folder/SHA256SUMS``; return its path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "", "folder does not exist")
    lines = [f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}\n" for p in data_files(folder)]
    out = folder / SUMS_NAME
    out.write_text("".join(lines), encoding="utf-8")
    return out


def read_sha256sums(path: str | Path) -> dict[str, str]:
    """Parse a ``sha256sum`` file into {relative path: hex digest}."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "", "checksum file does not exist")
    sums: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        digest, sep, name = line.partition(" ")
        name = name[1:] if name[:1] in (" ", "*") else name
        if not sep or len(digest) != 64 or not name:
            raise DataError(path, f"line {number}", f"is not '<sha256>  <file>': {line[:80]!r}")
        sums[name] = digest.lower()
    return sums


def verify_checksums(folder: str | Path, checksums: Mapping[str, str] | None = None) -> int:
    """Check files against ``checksums`` ({path: hex}, relative to ``folder`` or absolute) or,
    when None, against ``folder/SHA256SUMS``. Returns how many files were checked."""
    folder = Path(folder)
    source = "checksums" if checksums is not None else str(folder / SUMS_NAME)
    sums = dict(checksums) if checksums is not None else read_sha256sums(folder / SUMS_NAME)
    if not sums:
        raise DataError(source, "", "lists no files to verify")
    for name, expected in sums.items():
        path = Path(name) if Path(name).is_absolute() else folder / name
        if not path.is_file():
            raise DataError(path, "sha256", f"file listed in {source} does not exist")
        actual = sha256_file(path)
        if actual != str(expected).lower():
            raise DataError(path, "sha256", f"mismatch: expected {str(expected)[:16]}..., "
                                            f"got {actual[:16]}... (corrupt or different download)")
    return len(sums)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m egmf_core.data.checksums",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="dataset folder")
    parser.add_argument("--verify", action="store_true", help="check instead of writing")
    args = parser.parse_args(argv)
    try:
        if args.verify:
            print(f"{verify_checksums(args.folder)} files OK")
        else:
            print(write_sha256sums(args.folder))
    except DataError as err:
        parser.exit(2, f"error: {err}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
