"""Boundary checks shared by every reader: each failure is a DataError naming the file and field.

Readers call these once on what they read; everything after the loader trusts the arrays.
Also home of the text repair for Windows code-page mojibake (MELD's CSVs, English pickles).
Features are scanned in chunks of samples, so a full-size MOSEI split (3.4 GB of audio) never
needs a second full-size temporary.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import SPLITS
from .errors import DataError

SPLIT_ALIASES = {"train": "train", "valid": "valid", "dev": "valid", "test": "test"}
CHUNK_ELEMENTS = 1 << 24  # scan features ~16M floats (64 MB) at a time

Locate = Callable[[int, int, int], tuple[str, str]]  # (sample, frame, dim) -> (file, field)


def canonical_splits(names: Iterable[str], file: str | Path) -> dict[str, str]:
    """Map train/valid/test to the names found (``dev`` is accepted for ``valid``)."""
    found: dict[str, str] = {}
    for name in names:
        if not isinstance(name, str) or name not in SPLIT_ALIASES:
            raise DataError(file, "splits", f"unexpected split {name!r} (expected train, valid "
                                            "(or dev), test)")
        canon = SPLIT_ALIASES[name]
        if canon in found:
            raise DataError(file, "splits", f"both {found[canon]!r} and {name!r} given for {canon}")
        found[canon] = name
    for split in SPLITS:
        if split not in found:
            raise DataError(file, "splits", f"split {split!r} missing (found {sorted(found.values())})")
    return {split: found[split] for split in SPLITS}


def require_keys(mapping: Mapping[str, Any], keys: Iterable[str], file: str | Path,
                 prefix: str) -> None:
    """Every key in ``keys`` is present in ``mapping`` (named ``prefix`` in messages)."""
    for key in keys:
        if key not in mapping:
            raise DataError(file, f"{prefix}.{key}", f"missing (keys present: {sorted(mapping)})")


def check_nonempty(n: int, file: str | Path, field: str) -> None:
    if n < 1:
        raise DataError(file, field, "is empty (a split needs at least one sample)")


def check_count(value: Any, n: int, file: str | Path, field: str) -> None:
    """A parallel array has one entry per sample."""
    count = len(value) if np.ndim(value) > 0 else 0
    if count != n:
        raise DataError(file, field, f"has {count} entries, expected {n} (one per sample)")


def as_features(value: Any, file: str | Path, field: str, n: int, rank: int = 3) -> np.ndarray:
    """A float feature array of the given rank with ``n`` samples, as float32 (no copy if already)."""
    if not isinstance(value, np.ndarray):
        raise DataError(file, field, f"is {type(value).__name__}, expected a numpy array")
    if value.ndim != rank:
        raise DataError(file, field, f"has shape {value.shape}, expected rank {rank}")
    if value.dtype.kind != "f":
        raise DataError(file, field, f"has dtype {value.dtype}, expected float")
    if value.shape[0] != n:
        raise DataError(file, field, f"has {value.shape[0]} samples, expected {n}")
    return value if value.dtype == np.float32 else value.astype(np.float32)


def _vector(value: Any, file: str | Path, field: str, n: int) -> np.ndarray:
    """``value`` as a 1-D array of n entries ((n, 1) is flattened); a DataError names the field otherwise."""
    arr = np.asarray(value)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(file, field, f"has shape {arr.shape}, expected ({n},)")
    check_count(arr, n, file, field)
    return arr


def as_int_array(value: Any, file: str | Path, field: str, n: int) -> np.ndarray:
    """Integers (or integral floats) of shape (n,) or (n, 1), as int64."""
    arr = _vector(value, file, field, n)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
        if bad.size:
            i = int(bad[0])
            raise DataError(file, f"{field}[{i}]", f"={arr[i]!r} is not an integer")
        return arr.astype(np.int64)
    raise DataError(file, field, f"has dtype {arr.dtype}, expected integers")


def as_lengths(value: Any, file: str | Path, field: str, n: int, max_len: int,
               modality: str) -> np.ndarray:
    """Sequence lengths in [1, max_len] as int64."""
    lengths = as_int_array(value, file, field, n)
    short = np.flatnonzero(lengths < 1)
    if short.size:
        i = int(short[0])
        raise DataError(file, f"{field}[{i}]", f"={lengths[i]} is below 1 (empty {modality} sequence)")
    long = np.flatnonzero(lengths > max_len)
    if long.size:
        i = int(long[0])
        raise DataError(file, f"{field}[{i}]", f"={lengths[i]} exceeds {modality} length {max_len}")
    return lengths


def as_strings(value: Any, file: str | Path, field: str, n: int) -> list[str]:
    """A (n,) sequence of strings (bytes are decoded as utf-8) as a list of str."""
    arr = np.asarray(value, dtype=object) if not isinstance(value, np.ndarray) else value
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(file, field, f"has shape {arr.shape}, expected ({n},) strings")
    check_count(arr, n, file, field)
    out: list[str] = []
    for i, item in enumerate(arr.tolist()):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(file, f"{field}[{i}]", "is not valid utf-8") from None
        if not isinstance(item, str):
            raise DataError(file, f"{field}[{i}]", f"is {type(item).__name__}, expected a string")
        out.append(item)
    return out


def check_unique_ids(ids: list[str], file: str | Path, field: str) -> None:
    seen: dict[str, int] = {}
    for i, sample_id in enumerate(ids):
        if sample_id in seen:
            raise DataError(file, f"{field}[{i}]", f"={sample_id!r} duplicates {field}[{seen[sample_id]}]")
        seen[sample_id] = i


def class_labels(value: Any, file: str | Path, field: str, n: int,
                 labels: tuple[str, ...]) -> np.ndarray:
    """Class indices into ``labels`` as int64; NaN, fractions and unknown classes are errors."""
    arr = as_int_array(value, file, field, n)
    bad = np.flatnonzero((arr < 0) | (arr >= len(labels)))
    if bad.size:
        i = int(bad[0])
        raise DataError(file, f"{field}[{i}]", f"={arr[i]} is not a class index in [0, {len(labels) - 1}]")
    return arr


def check_scores(value: Any, file: str | Path, field: str, n: int,
                 label_range: tuple[float, float]) -> np.ndarray:
    """Scores of shape (n,) (or (n, 1)) inside ``label_range``, as float32; NaN is an error."""
    arr = _vector(value, file, field, n)
    if arr.dtype.kind not in "fiu":
        raise DataError(file, field, f"has dtype {arr.dtype}, expected float scores")
    arr = arr.astype(np.float64)
    nan = np.flatnonzero(np.isnan(arr))
    if nan.size:
        raise DataError(file, f"{field}[{int(nan[0])}]", "is NaN")
    lo, hi = label_range
    out = np.flatnonzero((arr < lo - 1e-6) | (arr > hi + 1e-6))
    if out.size:
        i = int(out[0])
        raise DataError(file, f"{field}[{i}]", f"={arr[i]:g} is outside the label range [{lo:g}, {hi:g}]")
    return np.clip(arr, lo, hi).astype(np.float32)


def check_same_dim(dims: Mapping[str, int], file: str | Path, field: str) -> None:
    """A feature's last dimension is the same in every split."""
    first_split, first_dim = next(iter(dims.items()))
    for split, dim in dims.items():
        if dim != first_dim:
            raise DataError(file, f"{split}.{field}",
                            f"has dim {dim}, but {first_split}.{field} has dim {first_dim}")


NON_FINITE = ((np.isnan, "nan", "is NaN"), (np.isposinf, "pos_inf", "is +inf"),
              (np.isneginf, "neg_inf", "is -inf"))  # (test, cleaning key suffix, error text)


def _non_finite(sub: np.ndarray, start: int, where: Locate, modality: str, strict: bool,
                counts: dict[str, int]) -> None:
    """Count (or, where refused, raise on) each kind of non-finite value in ``sub``."""
    for test, kind, what in NON_FINITE:
        hit = test(sub)
        n_hit = int(hit.sum())
        if not n_hit:
            continue
        # strict: today's rule exactly: only audio -inf (MOSEI's silent frames) is replaced
        if strict and not (modality == "audio" and kind == "neg_inf"):
            i, t, d = (int(x) for x in np.argwhere(hit)[0])
            raise DataError(*where(start + i, t, d), f"{what} (strict data: NaN and inf are errors)")
        key = f"{modality}_{kind}"
        counts[key] = counts.get(key, 0) + n_hit


def clean_features(arr: np.ndarray, lengths: np.ndarray, file: str | Path, field: str,
                   *, modality: str, cleaning: dict[str, int], strict: bool = False,
                   locate: Locate | None = None) -> np.ndarray:
    """Check and tidy a padded (N, L, d) float32 array; add what was changed to ``cleaning``.

    NaN, +inf and -inf are set to 0, as the field's readers (MMSA, MSE-Adapter) do, and counted
    as ``{modality}_nan``, ``{modality}_pos_inf``, ``{modality}_neg_inf`` (a key appears once a
    value of its kind is found; ``audio_neg_inf`` is always there). With ``strict`` they are
    errors, except audio ``-inf`` (MOSEI's silent frames), which is always replaced. Non-zero
    values past a sample's length are set to 0 and counted as ``padding_zeroed``. The array is
    trimmed to the longest sample, so every split is zero-padded to its own max length.
    """
    where = locate or (lambda i, t, d: (str(file), f"{field}[{i},{t},{d}]"))
    n, max_len = arr.shape[0], arr.shape[1]
    step = max(1, CHUNK_ELEMENTS // max(1, arr[0].size))
    n_pad = 0
    frame = np.arange(max_len)
    for start in range(0, n, step):
        stop = min(n, start + step)
        sub = arr[start:stop]
        finite = np.isfinite(sub)
        if not finite.all():
            _non_finite(sub, start, where, modality, strict, cleaning)
            if not arr.flags.writeable:
                arr = arr.copy()
                sub = arr[start:stop]
            sub[~finite] = 0.0
        del finite
        pad = frame[None, :] >= lengths[start:stop, None]  # (n_chunk, L) frames past the length
        if pad.any():
            nonzero = int(np.count_nonzero(sub[pad]))
            if nonzero:
                if not arr.flags.writeable:
                    arr = arr.copy()
                    sub = arr[start:stop]
                sub[pad] = 0.0
                n_pad += nonzero
    cleaning["padding_zeroed"] = cleaning.get("padding_zeroed", 0) + n_pad
    longest = int(lengths.max()) if n else max_len
    if longest < max_len:
        arr = np.ascontiguousarray(arr[:, :longest])
    return arr


def new_cleaning() -> dict[str, int]:
    """The cleaning record every reader starts from (NaN / +inf keys join when found)."""
    return {"audio_neg_inf": 0, "padding_zeroed": 0}


def pad_sequences(seqs: list[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack (L_i, d) float arrays into a zero-padded (N, max L_i, d) float32 array and lengths."""
    lengths = np.array([s.shape[0] for s in seqs], dtype=np.int64)
    out = np.zeros((len(seqs), int(lengths.max()) if len(seqs) else 0, dim), dtype=np.float32)
    for i, seq in enumerate(seqs):
        out[i, : seq.shape[0]] = seq
    return out, lengths


# ---- text repair: Windows code-page mojibake (MELD's CSVs, English pickles) ----------------
_ASCII_PUNCT = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
                              "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2026": "...",
                              "\u2013": "-", "\u2014": "-", "\u00a0": " "})


def _cp1252_char_to_byte() -> dict[str, int]:
    table = {}
    for b in range(0x80, 0x100):
        try:
            table[bytes([b]).decode("cp1252")] = b
        except UnicodeDecodeError:
            table[chr(b)] = b  # 0x81, 0x8D, 0x8F, 0x90, 0x9D: latin-1 reading
    return table


_CP1252_BYTE = _cp1252_char_to_byte()
_CONTINUATION = "".join(re.escape(c) for c, b in _CP1252_BYTE.items() if 0x80 <= b <= 0xBF)
_MOJIBAKE = re.compile(f"[\u00c2-\u00f4][{_CONTINUATION}]{{1,3}}")  # utf-8 read as cp1252
_C1 = re.compile("[\u0080-\u009f]")


def _undo_double_encoding(match: re.Match) -> str:
    try:
        return bytes(_CP1252_BYTE[c] for c in match.group(0)).decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        return match.group(0)


def _c1_to_cp1252(match: re.Match) -> str:
    try:
        return match.group(0).encode("latin-1").decode("cp1252")
    except UnicodeDecodeError:
        return match.group(0)


def fix_text(text: str) -> str:
    """Repair MELD's code-page mojibake: ``"I\\x92m"`` and ``"Iâ€™m"`` both become ``"I'm"``."""
    text = _MOJIBAKE.sub(_undo_double_encoding, text)
    text = _C1.sub(_c1_to_cp1252, text)
    return text.translate(_ASCII_PUNCT)
