"""Read (and write) the field's processed-feature pickle, and its safe .npz twin, for all four datasets.

The pickle is a dict ``{train, valid, test}`` of dicts of parallel arrays (MMSA's format; see
data/README.md): ``id``, ``raw_text``, ``text`` (N, L_t, 768), ``text_bert`` (N, 3, L_t),
``audio`` (N, L_a, d_a), ``vision`` (N, L_v, d_v), ``audio_lengths``, ``vision_lengths``,
``regression_labels``, ``classification_labels``, ``annotations`` (SIMS-V2 adds
``regression_labels_T/_A/_V``). The label is ``regression_labels`` for mosei / sims_v2 and
``classification_labels`` for meld / cherma. The .npz form (convert.py) holds the same arrays
under ``{split}/{field}`` keys and is read with ``allow_pickle=False``.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import validate as v
from .dataset import DatasetSpec, MultimodalDataset, Split
from .errors import DataError
from .safe_pickle import load_pickle

REQUIRED_FIELDS = ("id", "raw_text", "audio", "audio_lengths", "vision", "vision_lengths")
PICKLE_PROTOCOL = 5  # in-band buffers: arrays are written and read without an extra copy


def label_field(spec: DatasetSpec) -> str:
    return "classification_labels" if spec.task == "classification" else "regression_labels"


class LazyNpzSplit(Mapping):
    """One split of an .npz file as a read-only mapping that loads a field on first access."""

    def __init__(self, npz: Any, path: Path, split: str, fields: list[str]):
        self._npz, self._path, self._split, self._fields = npz, path, split, fields

    def __getitem__(self, field: str) -> np.ndarray:
        if field not in self._fields:
            raise KeyError(field)
        key = f"{self._split}/{field}"
        try:
            return self._npz[key]
        except ValueError as err:  # object arrays need pickle: refused
            raise DataError(self._path, key, f"cannot be read without pickle ({err})") from None
        except (OSError, zipfile.BadZipFile, EOFError) as err:
            raise DataError(self._path, key, f"is corrupt ({type(err).__name__}: {err})") from None

    def shape_of(self, field: str) -> tuple[int, ...]:
        """The array's shape from its .npy header, without reading the data."""
        fmt = np.lib.format
        try:
            with self._npz.zip.open(f"{self._split}/{field}.npy") as handle:
                version = fmt.read_magic(handle)
                read_header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
                if version in read_header:
                    return tuple(read_header[version](handle)[0])
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            key = f"{self._split}/{field}"
            raise DataError(self._path, key, f"is corrupt ({type(err).__name__}: {err})") from None
        return tuple(np.shape(self[field]))  # other header versions: read the array

    def __contains__(self, field: object) -> bool:  # Mapping's default would load the array
        return field in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)


def _shape(split_data: Mapping[str, Any], field: str) -> tuple[int, ...]:
    if isinstance(split_data, LazyNpzSplit):
        return split_data.shape_of(field)
    return tuple(np.shape(split_data[field]))


def split_from_arrays(data: Mapping[str, Any], spec: DatasetSpec, file: Path, split: str,
                      cleaning: dict[str, int], strict: bool = False) -> Split:
    """Validate one split's parallel arrays and return the canonical Split."""
    label_key = label_field(spec)
    v.require_keys(data, (*REQUIRED_FIELDS, label_key), file, split)
    raw_ids = data["id"]
    n = len(raw_ids) if np.ndim(raw_ids) else 0  # the split's sample count comes from its ids
    ids = v.as_strings(raw_ids, file, f"{split}.id", n)
    v.check_nonempty(n, file, split)
    v.check_unique_ids(ids, file, f"{split}.id")
    for field in data:  # every present field is parallel, including the ones we do not use
        shape = _shape(data, field)
        if not shape or shape[0] != n:
            raise DataError(file, f"{split}.{field}", f"has shape {shape}, expected {n} samples first")
    text = v.as_strings(data["raw_text"], file, f"{split}.raw_text", n)
    if spec.language == "en":  # the same code-page repair as MELD's CSVs: one text, any form
        text = [v.fix_text(t) for t in text]
    audio = v.as_features(data["audio"], file, f"{split}.audio", n)
    audio_lengths = v.as_lengths(data["audio_lengths"], file, f"{split}.audio_lengths", n,
                                 audio.shape[1], "audio")
    vision = v.as_features(data["vision"], file, f"{split}.vision", n)
    vision_lengths = v.as_lengths(data["vision_lengths"], file, f"{split}.vision_lengths", n,
                                  vision.shape[1], "vision")
    if spec.task == "classification":
        labels = v.class_labels(data[label_key], file, f"{split}.{label_key}", n, spec.labels)
    else:
        labels = v.check_scores(data[label_key], file, f"{split}.{label_key}", n, spec.label_range)
    audio = v.clean_features(audio, audio_lengths, file, f"{split}.audio", modality="audio",
                             cleaning=cleaning, strict=strict)
    vision = v.clean_features(vision, vision_lengths, file, f"{split}.vision", modality="vision",
                              cleaning=cleaning, strict=strict)
    return Split(ids=ids, text=text, audio=audio, audio_lengths=audio_lengths, vision=vision,
                 vision_lengths=vision_lengths, labels=labels)


def dataset_from_splits(splits: Mapping[str, Any], spec: DatasetSpec, file: Path,
                        source: str, release: Any = None, strict: bool = False) -> MultimodalDataset:
    """Turn ``{split name: mapping of arrays}`` into a validated MultimodalDataset.

    ``release`` is called with each original split name after it is converted, so a caller
    holding the raw dict can drop it and free memory early. ``strict``: NaN / inf features are
    errors instead of zeros (validate.clean_features).
    """
    names = v.canonical_splits(list(splits), file)
    text_dims: dict[str, int] = {}
    for split, original in names.items():
        data = splits[original]
        if not isinstance(data, Mapping):
            raise DataError(file, split, f"is {type(data).__name__}, expected a dict of arrays")
        if "text" in data:
            shape = _shape(data, "text")
            if len(shape) != 3:
                raise DataError(file, f"{split}.text", f"has shape {shape}, expected rank 3")
            text_dims[split] = shape[-1]
    if text_dims:
        v.check_same_dim(text_dims, file, "text")
    cleaning = v.new_cleaning()
    out: dict[str, Split] = {}
    for split, original in names.items():
        out[split] = split_from_arrays(splits[original], spec, file, split, cleaning, strict)
        if release is not None:
            release(original)
    for field in ("audio", "vision"):
        v.check_same_dim({s: int(getattr(out[s], field).shape[-1]) for s in out}, file, field)
    return MultimodalDataset(spec=spec, train=out["train"], valid=out["valid"], test=out["test"],
                             source=source, cleaning=cleaning)


def read_mmsa_pickle(path: str | Path, spec: DatasetSpec, *, strict: bool = False) -> MultimodalDataset:
    """Load a processed-feature pickle through the restricted unpickler and validate it."""
    path = Path(path)
    obj = load_pickle(path)
    if not isinstance(obj, dict):
        raise DataError(path, "", f"top level is {type(obj).__name__}, expected a dict of splits")
    splits = dict(obj)
    del obj

    def release(name: str) -> None:  # let the raw split (text features included) be freed
        splits[name] = {}

    return dataset_from_splits(splits, spec, path, f"{path} (mmsa-pickle)", release=release, strict=strict)


def read_mmsa_npz(path: str | Path, spec: DatasetSpec, *, strict: bool = False) -> MultimodalDataset:
    """Load the .npz form (``{split}/{field}`` keys) with ``allow_pickle=False``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "", "file does not exist")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(path, "", f"is not a readable .npz ({type(err).__name__}: {err})") from None
    with npz:
        fields: dict[str, list[str]] = {}
        for key in npz.files:
            if "/" not in key:
                raise DataError(path, key, "unexpected key (expected '{split}/{field}')")
            split, field = key.split("/", 1)
            fields.setdefault(split, []).append(field)
        splits = {s: LazyNpzSplit(npz, path, s, f) for s, f in fields.items()}
        return dataset_from_splits(splits, spec, path, f"{path} (npz)", strict=strict)


def write_mmsa_pickle(path: str | Path, splits: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write ``{split: {field: array}}`` as the processed-feature pickle (deterministic bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump({s: dict(d) for s, d in splits.items()}, handle, protocol=PICKLE_PROTOCOL)
    return path
