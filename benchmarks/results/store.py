"""The results store: one JSON file per run, and the tidy table CSVs derived from them.

Layout::

    results/<profile>/runs/<run_id>.json          the source of truth, one per run, written atomically
    results/<profile>/<table>.csv                 derived: rebuilt from runs/ at any time
    results/<profile>/checkpoints/<run_id>/       a run in progress (egmf_core.checkpoint); removed
                                                  once its run file is written
    results/<profile>/checkpoints/<run_id>.lock   held (flock) by the process training that run

A run file holds ``run_id``, ``config`` (what the id hashes), ``outcome`` (RunOutcome.to_dict()),
``provenance``, ``checksum`` (sha256 of the canonical JSON of those four) and ``part_checksums``
(one per second-level key, e.g. ``outcome.metrics``), so a truncated or hand-edited file is
detected, named by file and line, and its run redone. A table CSV is checked against the run
files before it is rebuilt (:func:`csv_problem`), so an edited CSV is reported too, and never
read by a report: reports are rendered from freshly rebuilt CSVs.

Every write goes through :func:`egmf_core.atomic.atomic_write_bytes` (temp file, fsync,
rename): a kill at any moment leaves the old file or the new one, plus at worst a ``.*.tmp``
file that no reader looks at (:func:`sweep_temp_files` removes old ones). Shards write
different files; two writes of the same run replace each other atomically (last writer wins),
and :class:`RunLock` keeps two processes from training the same run at once.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from benchmarks.commandline import one_line
from benchmarks.results.schema import COST_COLUMNS, RESULT_COLUMNS
from egmf_core.atomic import AtomicWriteError, atomic_write_bytes, missing_parents
from egmf_core.config import config_hash

RECORD_KEYS = ("run_id", "config", "outcome", "provenance")
TRAIN_SPLITS = ("valid", "test")
STATS_SPLITS = ("train", "valid", "test", "all")

PART_CHECKSUMS = "part_checksums"
TEMP_MAX_AGE_S = 3600.0  # a temp file this old belongs to a killed writer (a write takes milliseconds)


class CorruptResult(ValueError):
    """A run file that cannot be trusted (bad JSON, wrong checksum, wrong id); names the file (and line)."""

    def __init__(self, path: Path, why: str, line: int | None = None):
        super().__init__(f"{path}: {why}")
        self.path, self.line = Path(path), line


# ---- paths --------------------------------------------------------------------------------------

def runs_dir(results_root: Path, profile: str) -> Path:
    return Path(results_root) / profile / "runs"


def run_path(results_root: Path, profile: str, run_id: str) -> Path:
    return runs_dir(results_root, profile) / f"{run_id}.json"


def table_csv_path(results_root: Path, profile: str, table: str) -> Path:
    return Path(results_root) / profile / f"{table}.csv"


def checkpoint_dir(results_root: Path, profile: str, run_id: str) -> Path:
    """Where a run in progress keeps its resumable state (deleted once the run file is written)."""
    return Path(results_root) / profile / "checkpoints" / run_id


def lock_path(results_root: Path, profile: str, run_id: str) -> Path:
    return Path(results_root) / profile / "checkpoints" / f"{run_id}.lock"


# ---- temp files and locks ----------------------------------------------------------------------

def sweep_temp_files(folder: Path, *, older_than_s: float = TEMP_MAX_AGE_S) -> list[Path]:
    """Delete ``.*.tmp`` files left under ``folder`` by killed writers (only old ones: a live
    writer's temp file is seconds old); returns what was removed. Readers ignore them anyway."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    now = time.time()
    for path in folder.rglob(".*.tmp"):
        with contextlib.suppress(OSError):
            if path.is_file() and now - path.stat().st_mtime > older_than_s:
                path.unlink()
                removed.append(path)
    return removed


class RunLock:
    """An exclusive, non-blocking claim on one run: ``flock`` on ``checkpoints/<run_id>.lock``.

    ``with RunLock(path) as lock:`` then ``lock.acquired`` is False when another process holds it.
    The kernel drops the lock when its holder dies (SIGKILL included), so a killed run is never
    locked out. Releasing removes the lock file (and the checkpoints folder when empty); the
    inode check in :meth:`acquire` makes that safe against a process that opened the old file.
    Locks need a filesystem with working ``flock`` (local disks; NFS v4 and Lustre with
    ``flock`` mounted).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.acquired = False
        self._fd: int | None = None
        self._created: list[Path] = []

    def acquire(self) -> bool:
        for _ in range(10):
            missing = missing_parents(self.path.parent)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except FileNotFoundError:  # the folder was removed by a releasing holder: try again
                continue
            except OSError as e:
                raise AtomicWriteError(self.path, e) from None
            self._created = self._created or missing
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd, self.acquired = fd, True
                return True
            os.close(fd)  # we locked a file its last holder had already removed
        return False

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd, self.acquired = None, False
        for folder in [self.path.parent, *self._created]:
            with contextlib.suppress(OSError):  # only while empty: other runs may be in progress
                folder.rmdir()

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


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


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def checksum(record: dict[str, Any]) -> str:
    return _sha256(canonical_json({k: record[k] for k in RECORD_KEYS}))


def part_checksums(record: dict[str, Any]) -> dict[str, str]:
    """sha256 per second-level key ("outcome.metrics", "config.train", ...): names what was edited."""
    parts: dict[str, str] = {}
    for key in RECORD_KEYS:
        value = record.get(key)
        if isinstance(value, dict):
            parts.update({f"{key}.{sub}": _sha256(canonical_json(v)) for sub, v in value.items()})
        else:
            parts[key] = _sha256(canonical_json(value))
    return parts


def make_record(run_id: str, config: dict[str, Any], outcome: dict[str, Any], provenance: dict[str, Any]) -> dict:
    """A run file's content, reduced to plain JSON types so that the checksum survives a round trip."""
    body = json.loads(json.dumps({"run_id": run_id, "config": config, "outcome": outcome, "provenance": provenance},
                                 default=_plain, allow_nan=True))
    body["checksum"] = checksum(body)
    body[PART_CHECKSUMS] = part_checksums(body)
    return body


def _edited_part(record: dict[str, Any], text: str) -> tuple[int, str] | None:
    """(line, part) of the first part whose content no longer matches its stored checksum."""
    stored = record.get(PART_CHECKSUMS)
    if not isinstance(stored, dict):
        return None
    now = part_checksums(record)
    bad = {k for k in set(now) | set(stored) if now.get(k) != stored.get(k)}
    if not bad:
        return None
    lines = _part_lines(text)
    return min((lines.get(k, lines.get(k.split(".")[0], 1)), k) for k in bad)


def _part_lines(text: str) -> dict[str, int]:
    """Line of each top-level ("outcome") and second-level ("outcome.metrics") key in a run file
    written by write_run (indent 1: top-level keys start with one space, their keys with two)."""
    lines: dict[str, int] = {}
    top = None
    for n, line in enumerate(text.splitlines(), start=1):
        m = re.match(r'^( {1,2})"((?:[^"\\]|\\.)*)":', line)
        if not m:
            continue
        if len(m.group(1)) == 1:
            top = m.group(2)
            lines.setdefault(top, n)
        elif top is not None:
            lines.setdefault(f"{top}.{m.group(2)}", n)
    return lines


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
        raise CorruptResult(path, f"not valid JSON (line {e.lineno}: {e.msg})", line=e.lineno) from None
    if not isinstance(record, dict):
        raise CorruptResult(path, "not a JSON object")
    missing = [k for k in (*RECORD_KEYS, "checksum") if k not in record]
    if missing:
        raise CorruptResult(path, f"missing field {missing[0]!r}")
    if record["checksum"] != checksum(record):
        where = _edited_part(record, text)
        if where is None:
            raise CorruptResult(path, "checksum mismatch (edited or partly written)")
        raise CorruptResult(path, f"checksum mismatch at line {where[0]}, in {where[1]} (edited or partly written)",
                            line=where[0])
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
        "error": "" if ok else one_line(outcome.get("error") or "failed"),
        "run_id": run["run_id"],
        "config_json": canonical_json(config),
        "backbone": model_cfg.get("backbone", ""),
        "data_source": outcome.get("data_source", ""),
        "data_cleaning_json": canonical_json(outcome.get("data_cleaning") or {}),
        "model_source": outcome.get("model_source") or prov.get("model_source", ""),
        "git_rev": prov.get("git_rev", "unknown"),
        "versions_json": canonical_json(prov.get("versions", {})),
        "device": outcome.get("device") or prov.get("device", ""),
        "numerics": (prov.get("numerics") or {}).get("label", ""),
        "group_size": int(prov.get("group_size", 1)),
        "steps": int(outcome.get("steps", 0)),
        "best_step": int(outcome.get("best_step", 0)),
        "trust_remote_code": bool(model_cfg.get("trust_remote_code", prov.get("trust_remote_code", False))),
        "valid_history_json": canonical_json(outcome.get("valid_history") or []),
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
                "eval_mode": (outcome.get("eval_modes") or {}).get(split, ""),
                "sampling_ci_json": canonical_json((outcome.get("sampling_ci") or {}).get(split) or {}),
            })
    return rows


def _float(v: Any) -> float:
    try:
        return math.nan if v is None else float(v)
    except (TypeError, ValueError):
        return math.nan


def table_csv_text(df: pd.DataFrame) -> str:
    """A tidy table as CSV text, deterministically (fixed columns, given row order, repr floats, "\\n")."""
    return df[list(RESULT_COLUMNS)].to_csv(index=False, lineterminator="\n", float_format=None)


def write_table_csv(df: pd.DataFrame, path: Path) -> Path:
    """Write a tidy table atomically (see table_csv_text)."""
    return atomic_write_bytes(Path(path), table_csv_text(df).encode("utf-8"))


def csv_problem(path: Path, fresh_text: str) -> str | None:
    """One line naming the first line of an existing table CSV that its run files do not back, or None.

    ``fresh_text`` is the CSV the run files give now. A line is corrupt when it does not parse,
    has the wrong number of fields, or differs from the fresh line of the same run record
    (same run_id and timestamp); rows of a record that are missing mean a truncated file.
    Lines of a run redone since (another timestamp) or no longer on disk are stale, not corrupt.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        return f"{path}: unreadable ({' '.join(str(e).split())})"
    if text == fresh_text:
        return None
    fresh_lines = fresh_text.splitlines()
    fresh_set = set(fresh_lines[1:])
    cols = list(RESULT_COLUMNS)
    i_run, i_time = cols.index("run_id"), cols.index("timestamp")
    fresh_count: dict[tuple[str, str], int] = {}
    for fields in csv.reader(io.StringIO("\n".join(fresh_lines[1:]))):
        key = (fields[i_run], fields[i_time])
        fresh_count[key] = fresh_count.get(key, 0) + 1
    lines = text.split("\n")
    problems: list[tuple[int, str]] = []
    if lines[0] != fresh_lines[0]:
        problems.append((1, "header is not the results schema"))
    if not text.endswith("\n"):
        problems.append((len(lines), "truncated (the last line has no end)"))
    seen: dict[tuple[str, str], int] = {}
    for n, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        try:
            fields = next(csv.reader([line]))
        except (csv.Error, StopIteration):
            problems.append((n, "not valid CSV"))
            continue
        if len(fields) != len(cols):
            problems.append((n, f"{len(fields)} fields, expected {len(cols)} (truncated or edited)"))
            continue
        key = (fields[i_run], fields[i_time])
        if key in fresh_count:
            seen[key] = seen.get(key, 0) + 1
            if line not in fresh_set:
                problems.append((n, f"differs from run file {fields[i_run]}.json (edited)"))
    for key, count in seen.items():
        if count < fresh_count[key]:
            problems.append((len(lines), f"rows of run {key[0]} are missing (truncated)"))
    if not problems:
        return None
    problems.sort()
    more = f"; {len(problems) - 1} more" if len(problems) > 1 else ""
    return f"{path}: line {problems[0][0]}: {problems[0][1]}{more}; rebuilt from the run files"


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
