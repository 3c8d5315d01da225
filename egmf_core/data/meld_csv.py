"""Read (and write) MELD's official CSV release joined with per-utterance feature files.

Layout (data/README.md)::

    meld/train_sent_emo.csv  dev_sent_emo.csv  test_sent_emo.csv
    meld/features/{train,dev,test}/dia{Dialogue_ID}_utt{Utterance_ID}.npz
        # keys: audio (L_a, d_a), visual (L_v, d_v), float

The CSVs carry Windows code-page quirks: a file is decoded as utf-8, else cp1252 (bytes that
neither accepts are an error naming the row and column), then each utterance is repaired:
C1 control characters (``\\x92``) are read as the cp1252 characters they stood for,
double-encoded utf-8 (``â€™``) is undone, and typographic quotes, dashes and ellipses become
ASCII (``’`` -> ``'``, ``…`` -> ``...``).
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import validate as v
from .dataset import DatasetSpec, MultimodalDataset, Split
from .errors import DataError
from .validate import fix_text

COLUMNS = ("Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
           "Utterance_ID", "Season", "Episode", "StartTime", "EndTime")
SPLIT_FILES = {"train": "train_sent_emo.csv", "valid": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
FEATURE_DIRS = {"train": "train", "valid": "dev", "test": "test"}  # features/<dir>/ per split
NPZ_FEATURE_KEYS = {"audio": "audio", "vision": "visual"}  # canonical modality -> key in each .npz

# ---- decoding ------------------------------------------------------------------------------
_UNDECODABLE = "\uffff"  # stands in for a byte neither utf-8 nor cp1252 accepts


def decode_csv_bytes(data: bytes) -> tuple[str, str]:
    """Decode as utf-8, else cp1252; undecodable bytes become U+FFFF. Returns (text, encoding)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace").replace("\ufffd", _UNDECODABLE), "invalid"


# ---- reading -----------------------------------------------------------------------------
def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """The CSV's rows as dicts over COLUMNS, with utterances repaired; errors name row and column."""
    if not path.is_file():
        raise DataError(path, "", "file does not exist")
    text, encoding = decode_csv_bytes(path.read_bytes())
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DataError(path, "header", "missing (file is empty)") from None
    for column in COLUMNS:
        if column not in header:
            raise DataError(path, f"column {column!r}", f"missing (header has {header})")
    where = {c: header.index(c) for c in COLUMNS}
    rows: list[dict[str, str]] = []
    for number, record in enumerate(reader, start=2):  # spreadsheet rows: the header is row 1
        if not record or all(not cell.strip() for cell in record):
            continue
        if len(record) != len(header):
            raise DataError(path, f"row {number}", f"has {len(record)} fields, expected {len(header)}")
        row = {c: record[i] for c, i in where.items()}
        if encoding == "invalid":
            for column, cell in row.items():
                if _UNDECODABLE in cell:
                    raise DataError(path, f"row {number} column {column!r}",
                                    "has bytes that are neither utf-8 nor cp1252")
        row["Utterance"] = fix_text(row["Utterance"])
        row["_line"] = str(number)
        rows.append(row)
    if encoding == "invalid":  # the bad byte sits outside the columns we read
        raise DataError(path, "encoding", "has bytes that are neither utf-8 nor cp1252")
    return rows


def _int_cell(row: Mapping[str, str], column: str, path: Path) -> int:
    try:
        return int(row[column].strip())
    except ValueError:
        raise DataError(path, f"row {row['_line']} column {column!r}",
                        f"={row[column]!r} is not an integer") from None


def _load_feature_file(path: Path, context: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(path, "", f"feature file missing ({context})")
    try:
        with np.load(path, allow_pickle=False) as npz:
            out = {}
            for modality, key in NPZ_FEATURE_KEYS.items():
                if key not in npz.files:
                    raise DataError(path, key, f"missing (keys present: {sorted(npz.files)})")
                out[modality] = npz[key]
            return out
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(path, "", f"is not a readable .npz ({type(err).__name__}: {err})") from None


def read_split(folder: Path, split: str, spec: DatasetSpec, dims: dict[str, tuple[int, str]],
               cleaning: dict[str, int], strict: bool = False) -> Split:
    """One split: CSV rows joined with their feature files, validated and padded."""
    csv_path = folder / SPLIT_FILES[split]
    rows = read_csv_rows(csv_path)
    v.check_nonempty(len(rows), csv_path, "rows")
    label_of = {name: i for i, name in enumerate(spec.labels)}
    ids, text, labels, files = [], [], [], []
    seen: dict[str, str] = {}
    seqs: dict[str, list[np.ndarray]] = {"audio": [], "vision": []}
    feature_dir = folder / "features" / FEATURE_DIRS[split]
    for row in rows:
        line = row["_line"]
        dia, utt = _int_cell(row, "Dialogue_ID", csv_path), _int_cell(row, "Utterance_ID", csv_path)
        sample_id = f"dia{dia}_utt{utt}"
        if sample_id in seen:
            raise DataError(csv_path, f"row {line} Dialogue_ID/Utterance_ID",
                            f"={sample_id} duplicates row {seen[sample_id]}")
        seen[sample_id] = line
        emotion = row["Emotion"].strip().lower()
        if emotion not in label_of:
            raise DataError(csv_path, f"row {line} column 'Emotion'",
                            f"={row['Emotion']!r} is not one of {', '.join(spec.labels)}")
        feature_path = feature_dir / f"{sample_id}.npz"
        arrays = _load_feature_file(feature_path, f"row {line} of {csv_path.name}")
        for modality, arr in arrays.items():
            key = NPZ_FEATURE_KEYS[modality]
            if arr.ndim != 2 or arr.dtype.kind != "f":
                raise DataError(feature_path, key, f"has shape {arr.shape} dtype {arr.dtype}, "
                                                   "expected float (frames, dim)")
            if arr.shape[0] < 1:
                raise DataError(feature_path, key, "has 0 frames (length must be at least 1)")
            if modality not in dims:
                dims[modality] = (int(arr.shape[1]), str(feature_path))
            elif arr.shape[1] != dims[modality][0]:
                raise DataError(feature_path, key, f"has dim {arr.shape[1]}, but "
                                                   f"{dims[modality][1]} has dim {dims[modality][0]}")
            seqs[modality].append(arr)
        ids.append(sample_id)
        text.append(row["Utterance"])
        labels.append(label_of[emotion])
        files.append(str(feature_path))
    padded = {}
    for modality, key in NPZ_FEATURE_KEYS.items():
        arr, lengths = v.pad_sequences(seqs.pop(modality), dims[modality][0])
        arr = v.clean_features(
            arr, lengths, csv_path, modality, modality=modality, cleaning=cleaning, strict=strict,
            locate=lambda i, t, d, key=key: (files[i], f"{key}[{t},{d}]"))
        padded[modality] = (arr, lengths)
    return Split(ids=ids, text=text, audio=padded["audio"][0], audio_lengths=padded["audio"][1],
                 vision=padded["vision"][0], vision_lengths=padded["vision"][1],
                 labels=np.array(labels, dtype=np.int64))


def read_meld_release(folder: str | Path, spec: DatasetSpec, *, strict: bool = False) -> MultimodalDataset:
    """Load MELD's three official CSVs plus ``features/`` into the canonical dataset (``strict``: NaN / inf are errors)."""
    folder = Path(folder)
    dims: dict[str, tuple[int, str]] = {}
    cleaning = v.new_cleaning()
    splits = {s: read_split(folder, s, spec, dims, cleaning, strict) for s in v.SPLITS}
    return MultimodalDataset(spec=spec, **splits, source=f"{folder} (meld-csv)", cleaning=cleaning)


# ---- writing (the synthetic twin) --------------------------------------------------------
def write_meld_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], encoding: str) -> Path:
    """Write rows over COLUMNS as MELD's CSV in ``encoding`` (utf-8 or cp1252)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([row[c] for c in COLUMNS])
    path.write_bytes(buffer.getvalue().encode(encoding))
    return path


def write_feature_file(path: str | Path, audio: np.ndarray, visual: np.ndarray) -> Path:
    """One utterance's features: ``audio`` (L_a, d_a) and ``visual`` (L_v, d_v) in an .npz."""
    from .convert import write_npz  # on use: keeps `python -m egmf_core.data.convert` warning-free

    return write_npz(path, {"audio": audio, "visual": visual})
