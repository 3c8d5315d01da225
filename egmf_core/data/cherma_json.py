"""Read (and write) CHERMA's release layout: one ``{stage}.json`` per split plus .npy features.

Layout (data/README.md; follows the LFMIM release's loader)::

    cherma/train.json  valid.json (or dev.json)  test.json
    cherma/audio/{stage}/{id}.npy            # (frames, 1024), cut to the first 50 frames
    cherma/visual/{stage}/{video_file}.npy   # (16, 2048), e.g. visual/train/0001.mp4.npy
    cherma/text/{stage}/{id}.npy             # (~80, 1024) text features: optional, see below

Each json entry carries ``audio_file`` (``{id}.wav``), ``video_file`` (``{id}.mp4``), the
labels ``txt_label``, ``audio_label``, ``visual_label`` (unimodal) and ``video_label`` (the
multimodal label we train on), as Chinese strings, plus ``text``: the utterance, our addition
(the release ships text only as features; the LLM needs the words). Text features are not read
(the LLM embeds the text itself); when a ``text/{stage}/`` folder exists, every sample's file
must be in it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from . import validate as v
from .dataset import DatasetSpec, MultimodalDataset, Split
from .errors import DataError
from .valid_split import MANIFEST_NAME, carve_valid, describe, missing_valid_error, summary_of

AUDIO_MAX_FRAMES = 50  # the release's loaders cut audio to its first 50 frames
REQUIRED_KEYS = ("audio_file", "video_file", "video_label", "text")
LABEL_KEYS = ("video_label", "txt_label", "audio_label", "visual_label")
# Release spellings that differ from spec.label_names_zh, mapped to the spec's class index.
# The LFMIM code writes surprise as 惊奇 (our spec: 惊讶) and uses English happy/neutral/sad.
RELEASE_LABEL_SPELLINGS = {"惊奇": "surprise", "happy": "happiness", "neutral": "calm", "sad": "sadness"}
STAGE_FILES = {"train": ("train",), "valid": ("valid", "dev"), "test": ("test",)}


def label_index(spec: DatasetSpec) -> dict[str, int]:
    """Every accepted label string (Chinese, English, release aliases) -> class index."""
    index = {name: i for i, name in enumerate(spec.label_names_zh)}
    index.update({name: i for i, name in enumerate(spec.labels)})
    index.update({alias: spec.labels.index(name) for alias, name in RELEASE_LABEL_SPELLINGS.items()})
    return index


def find_stage_files(folder: Path, spec: DatasetSpec) -> dict[str, tuple[str, Path]]:
    """split -> (stage name, json path); ``dev.json`` stands for valid, which may be absent
    when ``valid_split.json`` says how to carve it from train."""
    found: dict[str, tuple[str, Path]] = {}
    for split, stages in STAGE_FILES.items():
        present = [s for s in stages if (folder / f"{s}.json").is_file()]
        if not present and split == "valid":
            if (folder / MANIFEST_NAME).is_file():
                continue
            raise missing_valid_error(folder / "valid.json", spec)
        if not present:
            raise DataError(folder / f"{stages[0]}.json", "", f"missing: split {split!r} not found")
        if len(present) > 1:
            raise DataError(folder, "splits",
                            f"both {present[0]}.json and {present[1]}.json given for {split}")
        found[split] = (present[0], folder / f"{present[0]}.json")
    return found


def _load_npy(path: Path, key: str, dims: dict[str, tuple[int, str]], context: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(path, "", f"{key} feature file missing ({context})")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(path, key, f"is not a readable .npy ({type(err).__name__}: {err})") from None
    if arr.ndim != 2 or arr.dtype.kind != "f":
        raise DataError(path, key, f"has shape {arr.shape} dtype {arr.dtype}, expected float (frames, dim)")
    if arr.shape[0] < 1:
        raise DataError(path, key, "has 0 frames (length must be at least 1)")
    if key not in dims:
        dims[key] = (int(arr.shape[1]), str(path))
    elif arr.shape[1] != dims[key][0]:
        raise DataError(path, key, f"has dim {arr.shape[1]}, but {dims[key][1]} has dim {dims[key][0]}")
    return arr


def read_split(folder: Path, split: str, stage: str, json_path: Path, spec: DatasetSpec,
               dims: dict[str, tuple[int, str]], cleaning: dict[str, int], strict: bool = False) -> Split:
    try:
        entries = json.loads(json_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(json_path, "", f"is not valid utf-8 json ({type(err).__name__}: {err})") from None
    if not isinstance(entries, list):
        raise DataError(json_path, "", f"top level is {type(entries).__name__}, expected a list of entries")
    v.check_nonempty(len(entries), json_path, "entries")
    labels_of = label_index(spec)
    text_dir = folder / "text" / stage
    check_text = text_dir.is_dir()
    ids, text, labels, files = [], [], [], []
    seqs: dict[str, list[np.ndarray]] = {"audio": [], "visual": []}
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(json_path, f"[{i}]", f"is {type(entry).__name__}, expected an object")
        for key in REQUIRED_KEYS:
            if key not in entry:
                raise DataError(json_path, f"[{i}].{key}", f"missing (keys present: {sorted(entry)})")
        for key in ("audio_file", "video_file", "text"):
            if not isinstance(entry[key], str) or not entry[key]:
                raise DataError(json_path, f"[{i}].{key}", f"={entry[key]!r} is not a non-empty string")
        for key in LABEL_KEYS:
            if key in entry and entry[key] not in labels_of:
                raise DataError(json_path, f"[{i}].{key}", f"={entry[key]!r} is not a CHERMA label "
                                                         f"({', '.join(spec.label_names_zh)})")
        audio_name = PurePosixPath(entry["audio_file"]).name
        sample_id = audio_name[:-4] if audio_name.endswith(".wav") else audio_name
        if sample_id in seen:
            raise DataError(json_path, f"[{i}].audio_file",
                            f"={entry['audio_file']!r} duplicates entry [{seen[sample_id]}]")
        seen[sample_id] = i
        context = f"entry [{i}] of {json_path.name}"
        audio_path = folder / "audio" / stage / f"{sample_id}.npy"
        visual_path = folder / "visual" / stage / f"{PurePosixPath(entry['video_file']).name}.npy"
        if check_text and not (text_dir / f"{sample_id}.npy").is_file():
            raise DataError(text_dir / f"{sample_id}.npy", "", f"text feature file missing ({context})")
        seqs["audio"].append(_load_npy(audio_path, "audio", dims, context)[:AUDIO_MAX_FRAMES])
        seqs["visual"].append(_load_npy(visual_path, "visual", dims, context))
        files.append((str(audio_path), str(visual_path)))
        ids.append(sample_id)
        text.append(entry["text"])
        labels.append(labels_of[entry["video_label"]])
    padded = {}
    for slot, key in enumerate(("audio", "visual")):
        arr, lengths = v.pad_sequences(seqs.pop(key), dims[key][0])
        arr = v.clean_features(
            arr, lengths, json_path, key, modality="audio" if key == "audio" else "vision",
            cleaning=cleaning, strict=strict,
            locate=lambda n, t, d, key=key, slot=slot: (files[n][slot], f"{key}[{t},{d}]"))
        padded[key] = (arr, lengths)
    return Split(ids=ids, text=text, audio=padded["audio"][0], audio_lengths=padded["audio"][1],
                 vision=padded["visual"][0], vision_lengths=padded["visual"][1],
                 labels=np.array(labels, dtype=np.int64))


def read_cherma_release(folder: str | Path, spec: DatasetSpec, *, strict: bool = False) -> MultimodalDataset:
    """Load CHERMA's json + .npy release into the canonical dataset (``strict``: NaN / inf are errors)."""
    folder = Path(folder)
    stages = find_stage_files(folder, spec)
    dims: dict[str, tuple[int, str]] = {}
    cleaning = v.new_cleaning()
    splits = {split: read_split(folder, split, stage, path, spec, dims, cleaning, strict)
              for split, (stage, path) in stages.items()}
    source, manifest = f"{folder} (cherma-json)", {}
    if "valid" not in splits:
        splits["train"], splits["valid"], manifest = carve_valid(folder, splits["train"], spec)
        source += f"; {describe(manifest)}"
    return MultimodalDataset(spec=spec, **splits, source=source, cleaning=cleaning,
                             valid_split=summary_of(manifest))


# ---- writing (the synthetic twin) --------------------------------------------------------
def write_cherma_split(folder: str | Path, stage: str, entries: Sequence[Mapping[str, Any]],
                       audio: Sequence[np.ndarray], visual: Sequence[np.ndarray]) -> Path:
    """Write ``{stage}.json`` and each entry's audio/visual .npy (float32 (frames, dim))."""
    folder = Path(folder)
    (folder / "audio" / stage).mkdir(parents=True, exist_ok=True)
    (folder / "visual" / stage).mkdir(parents=True, exist_ok=True)
    for entry, a, vis in zip(entries, audio, visual, strict=True):
        sample_id = PurePosixPath(entry["audio_file"]).name.removesuffix(".wav")
        np.save(folder / "audio" / stage / f"{sample_id}.npy", np.asarray(a, dtype=np.float32))
        np.save(folder / "visual" / stage / f"{entry['video_file']}.npy", np.asarray(vis, dtype=np.float32))
    path = folder / f"{stage}.json"
    path.write_text(json.dumps(list(entries), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path
