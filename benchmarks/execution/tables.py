"""Paper tables declared as data: read ``ablations/<name>.toml`` into a TableSpec.

A table is a base config, rows of overrides, the datasets and seeds it runs on, the metrics it
shows, the paper's values for its cells and the paper's qualitative claims. Nothing here trains.

TOML shape (see ablations/*.toml)::

    name = "modality_ablation"
    caption = "Remove each modality, and each pair"
    include = "_defaults.toml"        # start from the shared fields below; optional
    datasets = ["mosei", "sims_v2", "meld", "cherma"]
    metrics = { mosei = ["mae", "corr", "acc2_non0", "f1_non0"], meld = ["acc", "wf1"], ... }
    reference_row = "T+A+V"          # paired tests and deltas are against this row
    trains = true                     # false for the statistics table
    [seeds]
    smoke = [1111, 1112, 1113]
    paper = [1111, 1112, 1113, 1114, 1115]
    [base]                            # dotted RunConfig overrides for every row
    "model.backbone" = "glm3"
    [[rows]]
    name = "-T"
    overrides = { "model.modalities" = ["audio", "visual"] }
    [[paper_values]]                  # from ../shared/paper/claims.csv
    row = "EGMF"; dataset = "mosei"; metric = "f1_non0"; value = 87.09; source = "seed"; note = "..."
    [[claims]]                        # checkable assertions, see benchmarks/reporting/claims.py
    id = "text_most_important"; kind = "order_by_drop"; rows = ["-T", "-A", "-V"]; ...
    planted = true                    # the smoke data plant it (default false: "not applicable")
    [report]                          # optional: ReportConfig fields
    invalid_threshold = 0.20          # above this share of unparseable answers: "not comparable"

Shared fields live in ``ablations/_defaults.toml`` (datasets, ``[metrics]``, ``[seeds]``,
``[base]``). A table with ``include = "<file>"`` starts from that file's fields, and each
top-level field it sets itself replaces the included one whole (lm-evaluation-harness's
``include:``), so a table file states only what makes it different.

Table numbers live in one place, ``ablations/table_numbers.toml``, marked as a best guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from egmf_core.paths import REPO_ROOT

ABLATIONS_DIR = REPO_ROOT / "ablations"


class TableError(ValueError):
    """A table file is missing or malformed; the message names the file and the field."""


@dataclass(frozen=True)
class Row:
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    datasets: tuple[str, ...] | None = None  # restrict this row to some datasets (None = all)
    note: str = ""


@dataclass(frozen=True)
class PaperValue:
    row: str
    dataset: str
    metric: str  # our metric key (e.g. "wf1"); the paper's own wording goes in `note`
    value: float  # in the paper's units (percentage points for fractions)
    source: str  # "seed" | "leaderboard" | ...
    note: str = ""


@dataclass(frozen=True)
class Claim:
    id: str
    kind: str  # order_by_drop | relative_drop | delta_sign | delta_range | order_by_value | params_ratio
    text: str  # the paper's claim in words
    source: str
    params: dict[str, Any] = field(default_factory=dict)  # kind-specific fields, as written
    # Does the smoke profile's synthetic data plant what the claim is about? (the claim's
    # `planted` field; default false: experts, LoRA, backbones and languages are not planted)
    planted: bool = False


@dataclass(frozen=True)
class ReportConfig:
    """How a table's report reads its results; a table file may set any field under [report]."""

    # A row whose mean share of unparseable test answers exceeds this is "not comparable": its
    # metric mostly measures the fallback (train.invalid_fallback), not the model.
    invalid_threshold: float = 0.20
    # Warn when more than this share of a table's runs selected their last validation step
    # (training may have stopped before the key metric stopped improving).
    last_step_warning: float = 0.5


@dataclass(frozen=True)
class TableSpec:
    name: str
    number: str  # best-guess paper table number (from table_numbers.toml)
    caption: str
    datasets: tuple[str, ...]
    metrics: dict[str, tuple[str, ...]]  # dataset -> metric keys shown
    seeds: dict[str, tuple[int, ...]]  # profile -> seeds
    base: dict[str, Any]
    rows: tuple[Row, ...]
    reference_row: str | None
    paper_values: tuple[PaperValue, ...]
    claims: tuple[Claim, ...]
    trains: bool = True
    path: str = ""
    report: ReportConfig = field(default_factory=ReportConfig)

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise TableError(f"{self.path}: unknown row {name!r} (rows: {', '.join(r.name for r in self.rows)})")


def table_numbers(ablations_dir: Path = ABLATIONS_DIR) -> dict[str, str]:
    """Paper table number -> table name, from the one mapping file (a best guess)."""
    path = ablations_dir / "table_numbers.toml"
    data = _read_toml(path)
    mapping = data.get("tables")
    if not isinstance(mapping, dict):
        raise TableError(f"{path}: missing [tables] mapping of number -> name")
    return {str(k): str(v) for k, v in mapping.items()}


def list_tables(ablations_dir: Path = ABLATIONS_DIR) -> list[str]:
    """Table names in paper-number order."""
    return list(table_numbers(ablations_dir).values())


def resolve_table(name_or_number: str, ablations_dir: Path = ABLATIONS_DIR) -> str:
    """Accept a table name ("main_msa") or a paper number ("3", "S1") and return the name."""
    numbers = table_numbers(ablations_dir)
    key = str(name_or_number)
    if key in numbers:
        return numbers[key]
    if key in numbers.values():
        return key
    known = ", ".join(f"{n}={t}" for n, t in numbers.items())
    raise TableError(f"unknown table {key!r} (known: {known})")


def load_table(name_or_number: str, ablations_dir: Path = ABLATIONS_DIR) -> TableSpec:
    """Read and check one table file."""
    name = resolve_table(name_or_number, ablations_dir)
    number = {v: k for k, v in table_numbers(ablations_dir).items()}[name]
    path = ablations_dir / f"{name}.toml"
    d = read_table_file(path)

    def need(key: str, typ: type | tuple[type, ...]) -> Any:
        if key not in d:
            raise TableError(f"{path}: missing field {key!r}")
        if not isinstance(d[key], typ):
            raise TableError(f"{path}: field {key!r} must be {typ}")
        return d[key]

    datasets = tuple(need("datasets", list))
    from egmf_core.config import DATASETS

    unknown = [ds for ds in datasets if ds not in DATASETS]
    if unknown:
        raise TableError(f"{path}: field 'datasets' names unknown dataset {unknown[0]!r} (known: {', '.join(DATASETS)})")
    metrics_raw = need("metrics", dict)
    for ds in datasets:
        if ds not in metrics_raw:
            raise TableError(f"{path}: metrics has no entry for dataset {ds!r}")
    rows = _rows(path, need("rows", list))
    reference = d.get("reference_row")
    if reference is not None and reference not in [r.name for r in rows]:
        raise TableError(f"{path}: reference_row {reference!r} is not a row")
    seeds = {str(k): tuple(int(s) for s in v) for k, v in need("seeds", dict).items()}
    return TableSpec(
        name=name,
        number=number,
        caption=str(need("caption", str)),
        datasets=datasets,
        metrics={k: tuple(v) for k, v in metrics_raw.items()},
        seeds=seeds,
        base=dict(d.get("base", {})),
        rows=rows,
        reference_row=reference,
        paper_values=_paper_values(path, d.get("paper_values", [])),
        claims=_claims(path, d.get("claims", [])),
        trains=bool(d.get("trains", True)),
        path=str(path),
        report=_report_config(path, d.get("report", {})),
    )


def _rows(path: Path, raw: list) -> tuple[Row, ...]:
    rows = tuple(
        Row(
            name=str(_field(path, r, "name", f"rows[{i}]")),
            overrides=dict(r.get("overrides", {})),
            datasets=tuple(r["datasets"]) if "datasets" in r else None,
            note=str(r.get("note", "")),
        )
        for i, r in enumerate(raw)
    )
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise TableError(f"{path}: duplicate row names in rows")
    return rows


def _required(path: Path, d: dict, keys: tuple[str, ...], where: str) -> dict[str, str]:
    """The entry's required fields, as strings; a TableError names the first one missing."""
    return {key: str(_field(path, d, key, where)) for key in keys}


def _paper_values(path: Path, raw: list) -> tuple[PaperValue, ...]:
    values = []
    for i, p in enumerate(raw):
        f = _required(path, p, ("row", "dataset", "metric", "value", "source"), f"paper_values[{i}]")
        values.append(PaperValue(row=f["row"], dataset=f["dataset"], metric=f["metric"], value=float(p["value"]),
                                 source=f["source"], note=str(p.get("note", ""))))
    return tuple(values)


def _claims(path: Path, raw: list) -> tuple[Claim, ...]:
    claims = []
    for i, c in enumerate(raw):
        f = _required(path, c, ("id", "kind", "text"), f"claims[{i}]")
        params = {k: v for k, v in c.items() if k not in ("id", "kind", "text", "source", "planted")}
        claims.append(Claim(id=f["id"], kind=f["kind"], text=f["text"], source=str(c.get("source", "seed")),
                            params=params, planted=bool(c.get("planted", False))))
    return tuple(claims)


def _report_config(path: Path, raw: Any) -> ReportConfig:
    if not isinstance(raw, dict):
        raise TableError(f"{path}: field 'report' must be a table")
    known = {f.name for f in fields(ReportConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise TableError(f"{path}: report has unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
    for key, value in raw.items():
        if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise TableError(f"{path}: report.{key} must be a share in [0, 1], got {value!r}")
    return ReportConfig(**{k: float(v) for k, v in raw.items()})


def _field(path: Path, d: dict, key: str, where: str) -> Any:
    if key not in d:
        raise TableError(f"{path}: {where} is missing field {key!r}")
    return d[key]


def read_table_file(path: Path) -> dict[str, Any]:
    """A table file's fields after its ``include``: the included file's, each replaced whole by the table's own."""
    d = _read_toml(path)
    if "include" not in d:
        return d
    include = d.pop("include")
    if not isinstance(include, str) or not include:
        raise TableError(f"{path}: field 'include' must be a file name beside it, got {include!r}")
    shared = _read_toml(path.parent / include)
    if "include" in shared:
        raise TableError(f"{path.parent / include}: an included file cannot include another (field 'include')")
    return {**shared, **d}


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise TableError(f"{path}: table file not found")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise TableError(f"{path}: not valid TOML ({e})") from None
