"""The data layer: one reader per on-disk format, all returning the canonical MultimodalDataset.

``load_dataset(name, root)`` finds ``root/<name>/`` (MSE-Adapter's ``MELD/`` and ``CHERMA0723/``
too, or ``root`` itself when it holds the files), detects the form present and validates it at
the boundary (layouts and detection order in data/README.md):

- ``mse-adapter-pickle``: MSE-Adapter's processed MELD / CHERMA, ``{name}_{train,valid,test}.pkl``
  lists of samples (the recommended source of MELD and CHERMA features);
- ``mmsa-pickle``: the processed-feature pickle (``unaligned_50.pkl``, ``unaligned.pkl``,
  ``meld.pkl``, ``cherma.pkl``, or any single ``*.pkl``), read with a restricted unpickler;
- ``npz``: the same arrays converted by ``python -m egmf_core.data.convert`` (any single ``*.npz``);
- ``meld-csv``: MELD's official CSVs plus ``features/{train,dev,test}/dia{D}_utt{U}.npz``;
- ``cherma-json``: CHERMA's ``{stage}.json`` plus ``audio/`` and ``visual/`` .npy features.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .cherma_json import read_cherma_release
from .dataset import PICKLE_NAMES, SPECS, DatasetSpec, MultimodalDataset, Split
from .errors import DataError
from .meld_csv import SPLIT_FILES as MELD_CSV_FILES
from .meld_csv import read_meld_release
from .mmsa_pickle import read_mmsa_npz, read_mmsa_pickle
from .mse_adapter_pickle import FOLDER_NAMES, holds_processed, read_mse_adapter

FORMATS = ("mmsa-pickle", "npz", "mse-adapter-pickle", "meld-csv", "cherma-json")

# The CLI modules (synth, checksums, convert) are imported on first use, so that
# `python -m egmf_core.data.synth` does not find itself already imported by this package.
_FROM_SYNTH = ("generate", "synth_vocabulary", "write_synthetic")

__all__ = ["DataError", "DatasetSpec", "FORMATS", "MultimodalDataset", "SPECS", "Split",
           "dataset_folder", "detect_format", "find_dataset_folder", "generate", "load_dataset", "synth_vocabulary",
           "write_synthetic"]


def find_dataset_folder(name: str, root: str | Path) -> Path | None:
    """``root/<name>``, else MSE-Adapter's folder name for it (``MELD``, ``CHERMA0723``), else None."""
    root = Path(root).expanduser()
    for folder in FOLDER_NAMES.get(name, (name,)):
        if (root / folder).is_dir():
            return root / folder
    return None


def dataset_folder(name: str, root: str | Path) -> Path:
    """``root/<name>`` (or MSE-Adapter's name for it) when it exists, else ``root`` itself."""
    root = Path(root).expanduser()
    found = find_dataset_folder(name, root)
    if found is not None:
        return found
    if not root.is_dir():
        raise DataError(root, "root", "folder does not exist")
    return root


def _single(folder: Path, pattern: str) -> Path | None:
    found = sorted(p for p in folder.glob(pattern) if p.is_file())
    if len(found) > 1:
        raise DataError(folder, pattern, f"{len(found)} candidates ({', '.join(p.name for p in found)}): "
                                         "keep one or pass fmt= and a single file")
    return found[0] if found else None


def detect_format(name: str, folder: Path) -> tuple[str, Path]:
    """Which form of the dataset ``folder`` holds, and the file or folder to read."""
    for filename in PICKLE_NAMES[name]:
        if (folder / filename).is_file():
            return "mmsa-pickle", folder / filename
        if (folder / filename).with_suffix(".npz").is_file():
            return "npz", (folder / filename).with_suffix(".npz")
    if holds_processed(folder, name):
        return "mse-adapter-pickle", folder
    if name == "meld" and (folder / MELD_CSV_FILES["train"]).is_file():
        return "meld-csv", folder
    if name == "cherma" and (folder / "train.json").is_file():
        return "cherma-json", folder
    pickle_file = _single(folder, "*.pkl")
    if pickle_file is not None:
        return "mmsa-pickle", pickle_file
    npz_file = _single(folder, "*.npz")
    if npz_file is not None:
        return "npz", npz_file
    expected = list(PICKLE_NAMES[name]) + {"meld": ["meld_train.pkl", MELD_CSV_FILES["train"]],
                                           "cherma": ["cherma_train.pkl", "train.json"]}.get(name, [])
    raise DataError(folder, "", f"no {name} files found (expected one of {expected}, "
                                "or a single *.pkl / *.npz; layouts in egmf_core/data/README.md)")


def load_dataset(name: str, root: str | Path, *, verify_checksums: bool = False,
                 checksums: Mapping[str, str] | None = None,
                 fmt: str | None = None, strict: bool = False) -> MultimodalDataset:
    """Load dataset ``name`` (mosei, sims_v2, meld, cherma) from ``root`` in whichever form is there.

    ``verify_checksums`` checks files against ``checksums`` ({path relative to the dataset
    folder: sha256}) or, without it, the folder's ``SHA256SUMS``; passing ``checksums`` alone
    also verifies. ``fmt`` forces a form (one of FORMATS) instead of detecting it. NaN and inf
    in audio / vision are set to 0 and counted in ``cleaning`` (as MMSA and MSE-Adapter do);
    ``strict`` makes them errors (audio ``-inf`` is always set to 0). NaN labels are always errors.
    Every problem in the files raises a one-line :class:`DataError` naming the file and field.
    """
    if name not in SPECS:
        raise DataError(root, "name", f"{name!r} is not a dataset (expected one of {sorted(SPECS)})")
    spec = SPECS[name]
    folder = dataset_folder(name, root)
    if verify_checksums or checksums is not None:
        from .checksums import verify_checksums as verify_files

        verify_files(folder, checksums)
    if fmt is None:
        fmt, path = detect_format(name, folder)
    else:
        path = _forced_path(fmt, name, folder)
    if fmt == "mmsa-pickle":
        return read_mmsa_pickle(path, spec, strict=strict)
    if fmt == "npz":
        return read_mmsa_npz(path, spec, strict=strict)
    if fmt == "mse-adapter-pickle" and name in FOLDER_NAMES:
        return read_mse_adapter(path, spec, strict=strict)
    if fmt == "meld-csv" and name == "meld":
        return read_meld_release(path, spec, strict=strict)
    if fmt == "cherma-json" and name == "cherma":
        return read_cherma_release(path, spec, strict=strict)
    raise DataError(folder, "fmt", f"{fmt!r} does not apply to {name}")


def _forced_path(fmt: str, name: str, folder: Path) -> Path:
    """The file (or folder) to read when the caller names the form."""
    if fmt in ("mmsa-pickle", "npz"):
        suffix = ".pkl" if fmt == "mmsa-pickle" else ".npz"
        for filename in PICKLE_NAMES[name]:
            if (folder / filename).with_suffix(suffix).is_file():
                return (folder / filename).with_suffix(suffix)
        return _single(folder, f"*{suffix}") or (folder / PICKLE_NAMES[name][0]).with_suffix(suffix)
    if fmt in ("meld-csv", "cherma-json", "mse-adapter-pickle"):
        return folder
    raise DataError(folder, "fmt", f"{fmt!r} is not one of {FORMATS}")


def __getattr__(attr: str):
    if attr in _FROM_SYNTH:
        from . import synth

        return getattr(synth, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
