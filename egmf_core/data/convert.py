"""Convert a processed-feature pickle into the safe .npz form that loads without pickle.

    python -m egmf_core.data.convert IN.pkl OUT.npz
    python -m egmf_core.data.convert ROOT/MELD OUT.npz      # MSE-Adapter's meld_{split}.pkl lists

MSE-Adapter's per-split lists (a folder, or one of its ``{name}_{split}.pkl`` files) become the
same ``{split}/{field}`` arrays, labels as class indices (mse_adapter_pickle.py).

The pickle is read through the restricted unpickler; every ``{split: {field: array}}`` entry
becomes the key ``{split}/{field}`` of an uncompressed .npz, strings as unicode arrays, so
``np.load(OUT, allow_pickle=False)`` reads it back. Bytes are deterministic (fixed zip
timestamps), so the output can be checksummed.
"""

from __future__ import annotations

import argparse
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .safe_pickle import load_pickle

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamp: same content, same bytes


def write_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write arrays to an uncompressed .npz with fixed timestamps (np.savez stamps the time)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.asanyarray(arr), allow_pickle=False)
    return path


def to_plain_array(value: Any, file: str | Path, key: str) -> np.ndarray:
    """An array that needs no pickle: numbers stay, strings become a unicode array."""
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    if arr.dtype.kind in "biufcUS":
        return arr
    if arr.dtype.kind == "O":
        items = arr.ravel().tolist()
        if all(isinstance(x, str) for x in items):
            return np.array(items, dtype=str).reshape(arr.shape) if items else arr.astype(str)
        if all(isinstance(x, bytes) for x in items):
            try:
                return np.array([x.decode("utf-8") for x in items], dtype=str).reshape(arr.shape)
            except UnicodeDecodeError:
                raise DataError(file, key, "holds bytes that are not utf-8") from None
        kinds = sorted({type(x).__name__ for x in items})
        raise DataError(file, key, f"holds objects of type {kinds}, not numbers or strings")
    raise DataError(file, key, f"has dtype {arr.dtype}, which .npz cannot hold without pickle")


def convert_pickle_to_npz(in_path: str | Path, out_path: str | Path) -> Path:
    """Read ``in_path`` safely and write the same arrays as ``{split}/{field}`` in ``out_path``."""
    in_path = Path(in_path)
    obj = load_pickle(in_path)
    if not isinstance(obj, Mapping):
        raise DataError(in_path, "", f"top level is {type(obj).__name__}, expected a dict of splits")
    arrays: dict[str, np.ndarray] = {}
    for split, fields in obj.items():
        if not isinstance(split, str) or "/" in split:
            raise DataError(in_path, str(split), "split names must be strings without '/'")
        if not isinstance(fields, Mapping):
            raise DataError(in_path, split, f"is {type(fields).__name__}, expected a dict of arrays")
        for field, value in fields.items():
            key = f"{split}/{field}"
            arrays[key] = to_plain_array(value, in_path, key)
    return write_npz(out_path, arrays)


def processed_source(path: Path) -> tuple[Path, str] | None:
    """(folder, dataset name) when ``path`` is MSE-Adapter's folder or one of its split files."""
    from .mse_adapter_pickle import FOLDER_NAMES, holds_processed

    folder = path if path.is_dir() else path.parent
    for name in FOLDER_NAMES:
        if holds_processed(folder, name) and (path.is_dir() or path.name.startswith(f"{name}_")):
            return folder, name
    return None


def convert_processed_to_npz(folder: Path, name: str, out_path: str | Path) -> Path:
    """MSE-Adapter's ``{name}_{split}.pkl`` lists in ``folder`` -> one ``{split}/{field}`` .npz."""
    from .dataset import SPECS
    from .mse_adapter_pickle import read_split_arrays

    arrays: dict[str, np.ndarray] = {}
    for split, (path, fields) in read_split_arrays(folder, SPECS[name]).items():
        for field, value in fields.items():
            arrays[f"{split}/{field}"] = to_plain_array(value, path, f"{split}/{field}")
    return write_npz(out_path, arrays)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m egmf_core.data.convert",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="processed-feature pickle (.pkl), or MSE-Adapter's folder")
    parser.add_argument("output", type=Path, help="where to write the .npz")
    args = parser.parse_args(argv)
    try:
        processed = processed_source(args.input)
        if processed is not None:
            print(convert_processed_to_npz(*processed, args.output))
        else:
            print(convert_pickle_to_npz(args.input, args.output))
    except DataError as err:
        parser.exit(2, f"error: {err}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
