"""A validation split carved from train, for releases that ship train and test only (CHERMA).

``python -m egmf_core.data.split`` draws it (label-stratified, seeded) and records it in
``valid_split.json`` next to the data: the seed, the fraction, the train file's sha256 and the
chosen train indices with their ids and labels. The loaders call :func:`carve_valid` when a
release has no validation split but holds this manifest; the data files are never rewritten.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import DatasetSpec, Split
from .errors import DataError

MANIFEST_NAME = "valid_split.json"
MANIFEST_VERSION = 1
SPLIT_COMMAND = "python -m egmf_core.data.split {name} ROOT --valid-fraction 0.1 --seed 0"


def missing_valid_error(file: str | Path, spec: DatasetSpec) -> DataError:
    """The refusal when a release has no validation split: it names the tool that makes one."""
    return DataError(file, "", "missing: split 'valid' not found (the original release has train/test "
                               f"only: make one with `{SPLIT_COMMAND.format(name=spec.name)}`)")


def stratified_valid_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted train indices for validation: ``round(fraction * n_c)`` of each class c, drawn with ``seed``.

    A class with at least two samples gives at least one; one with a single sample stays in train.

    >>> stratified_valid_indices(np.array([0, 0, 0, 0, 1, 1]), 0.5, 0).size
    3
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--valid-fraction {fraction}: must be between 0 and 1")
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for label in np.unique(labels):  # sorted: the draw order is fixed
        members = np.flatnonzero(labels == label)
        take = int(round(fraction * members.size))
        if members.size >= 2:
            take = min(max(take, 1), members.size - 1)
        else:
            take = 0
        chosen.append(rng.permutation(members)[:take])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def ids_sha256(ids: list[str]) -> str:
    """The checksum that names a split: sha256 of its ids, one per line."""
    return hashlib.sha256("".join(f"{i}\n" for i in ids).encode("utf-8")).hexdigest()


def make_manifest(spec: DatasetSpec, train: Split, train_file: Path, train_sha256: str,
                  fraction: float, seed: int) -> dict[str, Any]:
    """The manifest of a validation split drawn from ``train`` (read from ``train_file``)."""
    idx = stratified_valid_indices(np.asarray(train.labels), fraction, seed)
    ids = [train.ids[i] for i in idx]
    return {
        "version": MANIFEST_VERSION,
        "dataset": spec.name,
        "seed": int(seed),
        "valid_fraction": float(fraction),
        "stratified_by": "label",
        "train_file": train_file.name,
        "train_sha256": train_sha256,
        "n_train_source": len(train),
        "valid_indices": [int(i) for i in idx],
        "valid_ids": ids,
        "valid_labels": [spec.labels[int(train.labels[i])] for i in idx],
        "valid_sha256": ids_sha256(ids),
    }


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """``folder/valid_split.json`` when present (checked for its fields), else None."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, "", f"is not valid json ({type(err).__name__}: {err})") from None
    for key in ("seed", "valid_fraction", "n_train_source", "valid_indices", "valid_ids",
                "valid_labels", "valid_sha256"):
        if not isinstance(manifest, dict) or key not in manifest:
            raise DataError(path, key, "missing (rewrite it with python -m egmf_core.data.split)")
    return manifest


def carve_valid(folder: Path, train: Split, spec: DatasetSpec) -> tuple[Split, Split, dict[str, Any]]:
    """(train without validation, validation, manifest) from ``folder``'s manifest.

    The manifest must match the train split it was drawn from (size, ids and labels at its
    indices), else a DataError naming the manifest; without one, the refusal names the tool.
    """
    path = folder / MANIFEST_NAME
    manifest = read_manifest(folder)
    if manifest is None:
        raise missing_valid_error(folder, spec)
    if int(manifest["n_train_source"]) != len(train):
        raise DataError(path, "n_train_source", f"={manifest['n_train_source']} but train has {len(train)} "
                                                "samples (train changed since the split was drawn: redraw it)")
    idx = np.asarray(manifest["valid_indices"], dtype=np.int64)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= len(train) or np.unique(idx).size != idx.size:
        raise DataError(path, "valid_indices", f"are not distinct indices into train's {len(train)} samples")
    for k, i in enumerate(idx):
        label = spec.labels[int(train.labels[i])]
        if train.ids[i] != manifest["valid_ids"][k] or label != manifest["valid_labels"][k]:
            raise DataError(path, f"valid_ids[{k}]", f"={manifest['valid_ids'][k]!r} does not match train "
                                                     f"sample {int(i)} ({train.ids[i]!r}, {label}): redraw the split")
    keep = np.setdiff1d(np.arange(len(train)), idx)
    return train.subset(keep), train.subset(idx), manifest


def describe(manifest: dict[str, Any]) -> str:
    """One phrase for a dataset's source line."""
    return (f"valid carved from train by {MANIFEST_NAME} (seed {manifest['seed']}, fraction "
            f"{manifest['valid_fraction']:g}, sha256 {str(manifest['valid_sha256'])[:12]})")


def summary_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a dataset keeps of its manifest (empty when valid came with the release)."""
    if not manifest:
        return {}
    return {"seed": int(manifest["seed"]), "valid_fraction": float(manifest["valid_fraction"]),
            "valid_sha256": str(manifest["valid_sha256"]), "n_valid": len(manifest["valid_indices"])}
