"""Read MSE-Adapter's processed MELD and CHERMA: one pickle per split, each a list of samples.

Layout (data/README.md)::

    <root>/MELD/meld_{train,valid,test}.pkl            (or <root>/meld/)
    <root>/CHERMA0723/cherma_{train,valid,test}.pkl    (or <root>/cherma/)

Each file is a list of ``{'features': {'text': str, 'audio': (L_a, d_a), 'video': (L_v, d_v),
'audio_len': int, 'video_len': int}, 'label': str}``, the arrays pre-padded to one shape per
split (MELD 157 x 64 audio and 32 x 64 video; CHERMA 543 x 1024 and 16 x 2048). Labels are
class names, English or Chinese (惊奇 and 惊讶 both surprise). The lists become the parallel
arrays of the processed-feature form and go through the same checks (mmsa_pickle.split_from_arrays).
A CHERMA folder without ``cherma_valid.pkl`` needs a ``valid_split.json`` (valid_split.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import validate as v
from .cherma_json import RELEASE_LABEL_SPELLINGS
from .dataset import DatasetSpec, MultimodalDataset, Split
from .errors import DataError
from .mmsa_pickle import label_field, split_from_arrays
from .safe_pickle import load_pickle
from .valid_split import MANIFEST_NAME, carve_valid, describe, missing_valid_error, summary_of

FORMAT = "mse-adapter-pickle"
FOLDER_NAMES = {"meld": ("meld", "MELD"), "cherma": ("cherma", "CHERMA0723")}  # ours, then MSE-Adapter's
PICKLE_FEATURE_KEYS = ("text", "audio", "video", "audio_len", "video_len")


def split_file(folder: Path, name: str, split: str) -> Path:
    """``folder/{name}_{split}.pkl``, e.g. ``MELD/meld_train.pkl``."""
    return folder / f"{name}_{split}.pkl"


def holds_processed(folder: Path, name: str) -> bool:
    """Whether ``folder`` holds MSE-Adapter's split pickles for ``name`` (its train file decides)."""
    return name in FOLDER_NAMES and split_file(folder, name, "train").is_file()


def label_lookup(spec: DatasetSpec) -> dict[str, int]:
    """Every accepted label string (lower-cased English, Chinese, release aliases) -> class index."""
    index = {name.lower(): i for i, name in enumerate(spec.labels)}
    index.update({name: i for i, name in enumerate(spec.label_names_zh)})
    for alias, name in RELEASE_LABEL_SPELLINGS.items():  # 惊奇 -> surprise; happy -> happiness (CHERMA)
        if alias not in index and name in spec.labels:
            index[alias] = spec.labels.index(name)
    return index


def _sample(item: Any, file: Path, i: int) -> Mapping[str, Any]:
    """The ``features`` dict of one list entry, with its keys checked."""
    if not isinstance(item, Mapping) or "features" not in item or "label" not in item:
        keys = sorted(item) if isinstance(item, Mapping) else type(item).__name__
        raise DataError(file, f"[{i}]", f"is not {{'features': ..., 'label': ...}} (found {keys})")
    features = item["features"]
    if not isinstance(features, Mapping):
        raise DataError(file, f"[{i}].features", f"is {type(features).__name__}, expected a dict")
    v.require_keys(features, PICKLE_FEATURE_KEYS, file, f"[{i}].features")
    return features


def _stack(items: list[Any], key: str, file: Path) -> np.ndarray:
    """Stack one feature of every sample into (N, L, d) float32, freeing each source array as it goes."""
    first = items[0]["features"][key]
    if not isinstance(first, np.ndarray) or first.ndim != 2:
        raise DataError(file, f"[0].features.{key}", f"has shape {np.shape(first)}, expected (frames, dim)")
    out = np.empty((len(items), *first.shape), dtype=np.float32)
    for i, item in enumerate(items):
        arr = item["features"][key]
        if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
            raise DataError(file, f"[{i}].features.{key}", f"is {type(arr).__name__} "
                                                          f"{getattr(arr, 'dtype', '')}, expected a float array")
        if arr.shape != first.shape:
            raise DataError(file, f"[{i}].features.{key}", f"has shape {arr.shape}, but [0] has {first.shape} "
                                                          "(the split's arrays are pre-padded to one shape)")
        out[i] = arr
        item["features"][key] = None  # the list's copy is no longer needed
    return out


def split_arrays(items: Any, file: Path, split: str, spec: DatasetSpec) -> dict[str, Any]:
    """One split's list of samples as the processed form's parallel arrays (ids ``{split}_{i}``)."""
    if not isinstance(items, list):
        raise DataError(file, "", f"top level is {type(items).__name__}, expected a list of samples")
    v.check_nonempty(len(items), file, "list")
    labels_of = label_lookup(spec)
    text, labels, audio_len, video_len = [], [], [], []
    for i, item in enumerate(items):
        features = _sample(item, file, i)
        label = item["label"]
        key = label.strip().lower() if isinstance(label, str) else label
        if not isinstance(key, str) or key not in labels_of:
            names = ", ".join(spec.label_names_zh or spec.labels)
            raise DataError(file, f"[{i}].label", f"={label!r} is not a {spec.name} label ({names})")
        labels.append(labels_of[key])
        text.append(features["text"])
        audio_len.append(features["audio_len"])
        video_len.append(features["video_len"])
    return {"id": [f"{split}_{i}" for i in range(len(items))], "raw_text": text,
            "audio": _stack(items, "audio", file), "audio_lengths": audio_len,
            "vision": _stack(items, "video", file), "vision_lengths": video_len,
            label_field(spec): np.asarray(labels, dtype=np.int64)}


def read_split_arrays(folder: Path, spec: DatasetSpec) -> dict[str, tuple[Path, dict[str, Any]]]:
    """split -> (file, parallel arrays) for every split file present; train and test are required."""
    out: dict[str, tuple[Path, dict[str, Any]]] = {}
    for split in v.SPLITS:
        path = split_file(folder, spec.name, split)
        if not path.is_file():
            if split == "valid" and (folder / MANIFEST_NAME).is_file():
                continue
            if split == "valid":
                raise missing_valid_error(path, spec)
            raise DataError(path, "", f"missing: split {split!r} not found")
        out[split] = (path, split_arrays(load_pickle(path), path, split, spec))
    return out


def read_mse_adapter(folder: str | Path, spec: DatasetSpec, *, strict: bool = False) -> MultimodalDataset:
    """Load MSE-Adapter's processed split pickles into the canonical dataset (``strict``: NaN / inf are errors)."""
    folder = Path(folder)
    cleaning = v.new_cleaning()
    splits: dict[str, Split] = {}
    for split, (path, arrays) in read_split_arrays(folder, spec).items():
        splits[split] = split_from_arrays(arrays, spec, path, split, cleaning, strict)
    for field in ("audio", "vision"):
        v.check_same_dim({s: int(getattr(splits[s], field).shape[-1]) for s in splits}, folder, field)
    source, manifest = f"{split_file(folder, spec.name, '{train,valid,test}')} ({FORMAT})", {}
    if "valid" not in splits:
        splits["train"], splits["valid"], manifest = carve_valid(folder, splits["train"], spec)
        source += f"; {describe(manifest)}"
    return MultimodalDataset(spec=spec, train=splits["train"], valid=splits["valid"], test=splits["test"],
                             source=source, cleaning=cleaning, valid_split=summary_of(manifest))
