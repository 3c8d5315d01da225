"""The results store: one JSON file per run, and the tidy table CSVs derived from them.

Layout::

    results/<profile>/runs/<run_id>.json   the source of truth, one per run, written atomically
    results/<profile>/<table>.csv          derived: rebuilt from runs/ at any time

A run file holds ``run_id``, ``config`` (what the id hashes), ``outcome`` (RunOutcome.to_dict()),
``provenance`` and ``checksum`` (sha256 of the canonical JSON of the other four), so a truncated
or hand-edited file is detected and its run redone. Shards write different files; two writes
of the same run replace each other atomically (last writer wins).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from benchmarks.schema import RESULT_COLUMNS
from egmf_core.config import config_hash

RECORD_KEYS = ("run_id", "config", "outcome", "provenance")
TRAIN_SPLITS = ("valid", "test")
STATS_SPLITS = ("train", "valid", "test", "all")
COST_COLUMNS = ("wall_s", "peak_mem_mb", "trainable_params", "total_params", "step_time_s", "samples_per_s",
                "egmf_share")


class CorruptResult(ValueError):
    """A run file that cannot be trusted (bad JSON, wrong checksum, wrong id); names the file."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path}: {why}")
        self.path = Path(path)


# ---- paths --------------------------------------------------------------------------------------

def runs_dir(results_root: Path, profile: str) -> Path:
    return Path(results_root) / profile / "runs"


def run_path(results_root: Path, profile: str, run_id: str) -> Path:
    return runs_dir(results_root, profile) / f"{run_id}.json"


def table_csv_path(results_root: Path, profile: str, table: str) -> Path:
    return Path(results_root) / profile / f"{table}.csv"


# ---- atomic files -------------------------------------------------------------------------------

def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``path`` so that readers see the old file or the new one, never a part (same-dir
    temp file, flush, fsync, rename, then fsync the directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---- run files ----------------------------------------------------------------------------------

def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, NaN kept: the text the checksum is computed over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def _plain(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def checksum(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json({k: record[k] for k in RECORD_KEYS}).encode("utf-8")).hexdigest()


def make_record(run_id: str, config: dict[str, Any], outcome: dict[str, Any], provenance: dict[str, Any]) -> dict:
    """A run file's content, reduced to plain JSON types so that the checksum survives a round trip."""
    body = json.loads(json.dumps({"run_id": run_id, "config": config, "outcome": outcome, "provenance": provenance},
                                 default=_plain, allow_nan=True))
    body["checksum"] = checksum(body)
    return body


def write_run(results_root: Path, profile: str, record: dict[str, Any]) -> Path:
    """Write one run file atomically; returns its path."""
    text = json.dumps(record, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=True) + "\n"
    return atomic_write_bytes(run_path(results_root, profile, record["run_id"]), text.encode("utf-8"))


def read_run(path: Path) -> dict[str, Any]:
    """Read and check one run file; raise CorruptResult naming the file and what is wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CorruptResult(path, f"unreadable ({e})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise CorruptResult(path, f"not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(record, dict):
        raise CorruptResult(path, "not a JSON object")
    missing = [k for k in (*RECORD_KEYS, "checksum") if k not in record]
    if missing:
        raise CorruptResult(path, f"missing field {missing[0]!r}")
    if record["checksum"] != checksum(record):
        raise CorruptResult(path, "checksum mismatch (edited or partly written)")
    if record["run_id"] != path.stem:
        raise CorruptResult(path, f"run_id {record['run_id']!r} does not match the file name")
    if config_hash(record["config"]) != record["run_id"]:
        raise CorruptResult(path, "run_id is not the hash of its config")
    if not isinstance(record["outcome"], dict) or record["outcome"].get("status") not in ("ok", "failed"):
        raise CorruptResult(path, "outcome.status must be 'ok' or 'failed'")
    return record


def load_runs(directory: Path, *, on_corrupt: Callable[[CorruptResult], None] | None = None
              ) -> dict[str, dict[str, Any]]:
    """run_id -> record for every valid run file in ``directory``; corrupt ones go to on_corrupt."""
    runs: dict[str, dict[str, Any]] = {}
    directory = Path(directory)
    if not directory.is_dir():
        return runs
    for path in sorted(directory.glob("*.json")):
        try:
            runs[path.stem] = read_run(path)
        except CorruptResult as e:
            if on_corrupt is not None:
                on_corrupt(e)
    return runs


def newer(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Of two records of the same run, the one to keep: latest timestamp, then checksum (so a
    merge gives the same answer whatever the order of its sources)."""
    def key(r):
        return (str(r["provenance"].get("timestamp", "")), r["checksum"])

    return a if key(a) >= key(b) else b


# ---- tidy rows ----------------------------------------------------------------------------------

def tidy_rows(table, cells: Iterable, runs: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per (cell, split, metric) for the cells whose run exists, columns RESULT_COLUMNS.

    Training runs give the valid and test splits, each metric the run reported plus
    ``invalid_rate``; a failed run gives the table's metrics with value NaN and status
    "failed". The statistics table gives its splits train/valid/test/all.
    """
    row_order = {r.name: i for i, r in enumerate(table.rows)}
    dataset_order = {d: i for i, d in enumerate(table.datasets)}
    split_order = {s: i for i, s in enumerate(STATS_SPLITS)}
    records: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    for cell in cells:
        run = runs.get(cell.run_id)
        if run is None or (cell.row, cell.dataset, cell.seed, cell.run_id) in seen:
            continue
        seen.add((cell.row, cell.dataset, cell.seed, cell.run_id))
        records.extend(_cell_rows(table, cell, run))
    df = pd.DataFrame(records, columns=list(RESULT_COLUMNS))
    if df.empty:
        return df
    order = df.assign(
        _r=df["row"].map(row_order), _d=df["dataset"].map(dataset_order), _s=df["split"].map(split_order)
    ).sort_values(["_r", "_d", "seed", "run_id", "_s", "metric"], kind="stable")
    return order[list(RESULT_COLUMNS)].reset_index(drop=True)


def _cell_rows(table, cell, run: dict[str, Any]) -> list[dict[str, Any]]:
    outcome, prov, config = run["outcome"], run["provenance"], run["config"]
    ok = outcome.get("status") == "ok"
    cost = outcome.get("cost") or {}
    metrics = outcome.get("metrics") or {}
    invalid = outcome.get("invalid_rate") or {}
    gating = outcome.get("gating") or {}
    model_cfg = config.get("model") or {}
    shared = {
        "table": cell.table,
        "row": cell.row,
        "dataset": cell.dataset,
        "seed": int(cell.seed),
        "profile": cell.profile,
        "status": "ok" if ok else "failed",
        "error": "" if ok else _one_line(outcome.get("error") or "failed"),
        "run_id": run["run_id"],
        "config_json": canonical_json(config),
        "backbone": model_cfg.get("backbone", ""),
        "data_source": outcome.get("data_source", ""),
        "model_source": outcome.get("model_source") or prov.get("model_source", ""),
        "git_rev": prov.get("git_rev", "unknown"),
        "versions_json": canonical_json(prov.get("versions", {})),
        "device": outcome.get("device") or prov.get("device", ""),
        "steps": int(outcome.get("steps", 0)),
        "best_step": int(outcome.get("best_step", 0)),
        "trust_remote_code": bool(model_cfg.get("trust_remote_code", prov.get("trust_remote_code", False))),
        "timestamp": prov.get("timestamp", ""),
        **{c: _float(cost.get(c)) for c in COST_COLUMNS},
    }
    if cell.trains:
        splits = TRAIN_SPLITS
    else:
        splits = tuple(s for s in STATS_SPLITS if s in metrics)
    rows = []
    for split in splits:
        if ok:
            values = dict(metrics.get(split) or {})
            if cell.trains:
                values["invalid_rate"] = invalid.get(split)
        else:
            names = list(table.metrics.get(cell.dataset, ())) + (["invalid_rate"] if cell.trains else [])
            values = dict.fromkeys(names)
        for metric in sorted(values):
            rows.append({
                **shared,
                "split": split,
                "metric": metric,
                "value": _float(values[metric]) if ok else math.nan,
                "invalid_rate": _float(invalid.get(split)),
                "gating_json": canonical_json(gating.get(split) or {}),
            })
    return rows


def _float(v: Any) -> float:
    try:
        return math.nan if v is None else float(v)
    except (TypeError, ValueError):
        return math.nan


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:500]


def write_table_csv(df: pd.DataFrame, path: Path) -> Path:
    """Write a tidy table deterministically (fixed columns, given row order, repr floats, "\\n")."""
    text = df[list(RESULT_COLUMNS)].to_csv(index=False, lineterminator="\n", float_format=None)
    return atomic_write_bytes(Path(path), text.encode("utf-8"))


# ---- merge --------------------------------------------------------------------------------------

@dataclass
class MergeStats:
    copied: int = 0
    identical: int = 0
    conflicts: list[str] = field(default_factory=list)  # one line each
    corrupt: list[str] = field(default_factory=list)


def source_runs_dir(source: Path, profile: str) -> Path | None:
    """Accept a results root (<src>/<profile>/runs), a profile dir (<src>/runs) or a runs dir.

    A source that exists but holds no run (a shard that had nothing to do) gives None.
    """
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such results directory (expected {source}/{profile}/runs/*.json)")
    for candidate in (source / profile / "runs", source / "runs", source):
        if candidate.is_dir() and any(candidate.glob("*.json")):
            return candidate
    return None


def merge_run_files(sources: Iterable[Path], profile: str, results_root: Path,
                    log: Callable[[str], None] = lambda s: None) -> MergeStats:
    """Copy valid run files from shard result dirs into results_root/<profile>/runs.

    The same run with different content keeps the newer record (and logs it); corrupt source
    files are skipped and logged.
    """
    stats = MergeStats()
    dest_dir = runs_dir(results_root, profile)
    for source in sources:
        src_dir = source_runs_dir(Path(source), profile)
        if src_dir is None or src_dir.resolve() == dest_dir.resolve():
            continue
        for path in sorted(src_dir.glob("*.json")):
            try:
                incoming = read_run(path)
            except CorruptResult as e:
                stats.corrupt.append(str(e))
                log(f"warning: skipping {e}")
                continue
            target = dest_dir / path.name
            existing = None
            if target.exists():
                try:
                    existing = read_run(target)
                except CorruptResult as e:
                    log(f"warning: replacing {e}")
            if existing is not None and existing["checksum"] == incoming["checksum"]:
                stats.identical += 1
                continue
            if existing is not None:
                keep = newer(existing, incoming)
                line = (f"conflict for run {incoming['run_id']}: kept {keep['provenance'].get('timestamp')} "
                        f"from {'results' if keep is existing else path}")
                stats.conflicts.append(line)
                log(line)
                if keep is existing:
                    continue
            write_run(results_root, profile, incoming)
            stats.copied += 1
    return stats
