"""The grid of a table: rows x datasets x seeds under a profile, one config (and run id) per cell.

A cell's run id is the hash of its config alone: the table and row names are not in it, so the
full model asked for by five tables is one run, trained once and shared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from benchmarks.execution.profiles import SEEDS_FROM, build_run_config, check_profile
from benchmarks.execution.tables import ABLATIONS_DIR, TableSpec, list_tables, load_table
from egmf_core.config import DATASETS, RunConfig, config_hash, identity_dict


class GridError(ValueError):
    """A grid filter names something the table does not have; the message lists what it has."""


@dataclass(frozen=True)
class Cell:
    """One cell of a paper table: (table, row, dataset, seed) under a profile, and its run."""

    table: str
    row: str
    dataset: str
    seed: int
    profile: str
    config: RunConfig
    run_id: str  # config_hash(identity()): the run is shared by every cell with this id
    trains: bool = True  # False: the statistics table (no model, see run_identity)
    overrides: dict[str, Any] = field(default_factory=dict)  # reproduce --set KEY=VALUE (every cell)

    def identity(self) -> dict[str, Any]:
        return run_identity(self.config, self.trains, self.overrides)

    @property
    def label(self) -> str:
        return f"{self.table}/{self.row}/{self.dataset}/{self.seed}"


def run_identity(cfg: RunConfig, trains: bool = True, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a run's id hashes and its run file stores as "config".

    A training run is its whole config, plus the ``--set`` overrides under "overrides" when
    there are any (so reports can say which runs had them; without, ids are unchanged).
    Dataset statistics depend on the data alone, so their identity is the data config: they
    never collide with a training run of the same settings. Fields added after results were
    committed are left out at their defaults (``egmf_core.config.identity_dict``).
    """
    if trains:
        return {**identity_dict(cfg), **({"overrides": dict(sorted(overrides.items()))} if overrides else {})}
    return {"kind": "dataset_stats", "profile": cfg.profile, "data": cfg.to_dict()["data"]}


def table_seeds(table, profile: str):
    """The seeds a table plans for a profile; the scale profile runs the paper's unless it names its own."""
    return table.seeds.get(profile, table.seeds.get(SEEDS_FROM.get(profile, profile)))


@dataclass(frozen=True)
class GridArgs:
    """What narrows or feeds a table's grid beyond its profile: the filters (``--seeds``,
    ``--rows``, ``--datasets``; None keeps all), the ``--set`` overrides (from ``parse_sets``),
    and the paper profile's roots and ``--trust-remote-code``. Sequences are kept as tuples."""

    seeds: tuple[int, ...] | None = None
    rows: tuple[str, ...] | None = None
    datasets: tuple[str, ...] | None = None
    overrides: dict[str, Any] | None = None
    data_root: str | Path | None = None
    model_root: str | Path | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        for name in ("seeds", "rows", "datasets"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))


@dataclass(frozen=True)
class Grid:
    """A grid to reproduce: a table (name, paper number or "all"), a profile, its args, and the
    folder of table files."""

    table: str
    profile: str = "smoke"
    args: GridArgs = GridArgs()
    ablations_dir: Path = ABLATIONS_DIR

    def spec(self) -> TableSpec:
        return load_table(self.table, self.ablations_dir)

    def cells(self, *, check_roots: bool = True) -> list[Cell]:
        return expand(self.spec(), self.profile, self.args, check_roots=check_roots)

    def tables(self) -> list["Grid"]:
        """One grid per table: itself, or for "all" every table in paper-number order with the
        datasets among ``--datasets`` (a table with none is left out; ``--rows`` differ per
        table and cannot be combined with "all")."""
        if self.table != "all":
            return [self]
        if self.args.rows is not None:
            raise GridError("--rows cannot be combined with 'all': row names differ between tables")
        wanted = self.args.datasets
        if wanted is not None:
            unknown = [d for d in wanted if d not in DATASETS]
            if unknown:
                raise GridError(f"unknown name {unknown[0]!r} in --datasets (known: {', '.join(DATASETS)})")
        out = []
        for name in list_tables(self.ablations_dir):
            datasets = None if wanted is None else [d for d in load_table(name, self.ablations_dir).datasets
                                                    if d in wanted]
            if datasets != []:
                out.append(replace(self, table=name, args=replace(self.args, datasets=datasets)))
        return out


def expand(table: TableSpec, profile: str, args: GridArgs = GridArgs(), *, check_roots: bool = True) -> list[Cell]:
    """Every cell of ``table``, in row, dataset, seed order, after the filters of ``args``.

    ``args.overrides`` (``reproduce --set``) apply to every training cell; see
    ``profiles.build_run_config`` for where they come in the order.

    A row with its own ``datasets`` only runs on those. The statistics table (``trains =
    false``) always uses its own placeholder seeds: statistics do not depend on a seed.
    """
    check_profile(profile)
    planned = table_seeds(table, profile)
    if planned is None:
        raise GridError(f"{table.path}: no seeds for profile {profile!r} (has: {', '.join(table.seeds)})")
    seed_list = list(planned) if (args.seeds is None or not table.trains) else _check_seeds(args.seeds)
    row_names = [r.name for r in table.rows]
    chosen_rows = set(_check_names(args.rows, row_names, "--rows", f"rows of table {table.name}"))
    chosen_datasets = set(_check_names(args.datasets, list(table.datasets), "--datasets",
                                       f"datasets of table {table.name}"))
    inputs = replace(args, overrides=dict(args.overrides or {}) if table.trains else {})  # statistics read data only
    cells: list[Cell] = []
    for row in table.rows:
        if row.name not in chosen_rows:
            continue
        for dataset in table.datasets:
            if dataset not in chosen_datasets or (row.datasets is not None and dataset not in row.datasets):
                continue
            for seed in seed_list:
                cfg = build_run_config(profile, table, row, dataset, seed, inputs=inputs, check_roots=check_roots)
                cells.append(Cell(table.name, row.name, dataset, int(seed), profile, cfg,
                                  config_hash(run_identity(cfg, table.trains, inputs.overrides)), table.trains,
                                  inputs.overrides))
    return cells


def _check_names(given: Iterable[str] | None, known: list[str], flag: str, what: str) -> list[str]:
    if given is None:
        return known
    given = list(given)
    for name in given:
        if name not in known:
            raise GridError(f"unknown name {name!r} in {flag} (the {what}: {', '.join(known)})")
    if not given:
        raise GridError(f"{flag} is empty (the {what}: {', '.join(known)})")
    return given


def _check_seeds(seeds: Iterable[int]) -> list[int]:
    out = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise GridError(f"bad seed {s!r} in --seeds: seeds are non-negative integers")
        if s in out:
            raise GridError(f"seed {s} appears twice in --seeds")
        out.append(s)
    if not out:
        raise GridError("--seeds is empty")
    return out


def unique_runs(cells: Iterable[Cell]) -> dict[str, Cell]:
    """run id -> the first cell asking for it, in grid order (each run trains once)."""
    runs: dict[str, Cell] = {}
    for c in cells:
        runs.setdefault(c.run_id, c)
    return runs


def shard_of(run_id: str, n: int) -> int:
    """The shard a run belongs to: its id (hex sha256 prefix) mod n, the same on every machine."""
    return int(run_id, 16) % n


def shard(cells: list[Cell], i: int, n: int) -> list[Cell]:
    """Shard i of n (0-based): disjoint across i, their union is ``cells``, a run never splits."""
    if not (isinstance(n, int) and isinstance(i, int) and n >= 1 and 0 <= i < n):
        raise GridError(f"bad shard {i}/{n}: expected i/n with n >= 1 and 0 <= i < n")
    return [c for c in cells if shard_of(c.run_id, n) == i]


def parse_shard(text: str) -> tuple[int, int]:
    """"i/n" -> (i, n), 0-based, with a one-line error naming --shard."""
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise GridError(f"bad --shard {text!r}: expected i/n, e.g. 0/4 (shards are numbered from 0)") from None
    if n < 1 or not 0 <= i < n:
        raise GridError(f"bad --shard {text!r}: need n >= 1 and 0 <= i < n (shards are numbered from 0)")
    return i, n


def parse_seeds(text: str) -> list[int]:
    """"1111,1112" -> [1111, 1112] with a one-line error naming --seeds."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        raise GridError(f"bad --seeds {text!r}: expected comma-separated integers, e.g. 1111,1112") from None
    return _check_seeds(seeds)


def parse_names(text: str) -> list[str]:
    """"-T,-A" -> ["-T", "-A"] (names may hold spaces: "T only,A only")."""
    return [p.strip() for p in text.split(",") if p.strip()]


# ---- reproduce --set KEY=VALUE ------------------------------------------------------------------

# Keys the profile mapping always sets from a flag of its own (an override would be undone).
SET_RESERVED: dict[str, str] = {
    "profile": "--profile", "seed": "--seeds", "data.name": "--datasets", "data.root": "--data-root",
    "model.model_path": "--model-root", "model.trust_remote_code": "--trust-remote-code",
}


def parse_sets(items: Iterable[str] | None) -> dict[str, Any]:
    """``["train.max_steps=200", "model.modalities=['text']"]`` -> {dotted key: value}, checked.

    A value is read as a TOML literal (``3``, ``1e-4``, ``true``, ``["text", "audio"]``,
    ``"mlp"``); anything that is not one is taken as a plain string (``model.text_proj=mlp``).
    Unknown fields, values of the wrong type or out of range, and the keys other flags own fail
    with one line naming ``--set`` (the same ConfigError wording as a table file's overrides).
    """
    from egmf_core.config import ConfigError, RunConfig, apply_overrides

    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise GridError(f"bad --set {item!r}: expected KEY=VALUE, e.g. train.max_steps=200")
        if key in SET_RESERVED:
            raise GridError(f"--set {key}: use {SET_RESERVED[key]} for this field")
        value = _literal(raw.strip())
        where = f"--set {key}={raw.strip()}"
        try:
            _check_type(key, value)
            apply_overrides(RunConfig(), {key: value})
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        out[key] = value
    return out


def _literal(raw: str) -> Any:
    import tomllib

    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
    if not isinstance(value, (str, int, float, bool, list, dict)):  # TOML dates: not a config value
        return raw
    return value


def _check_type(key: str, value: Any) -> None:
    """ConfigError unless ``value`` fits the declared type of dotted field ``key``."""
    import dataclasses
    import typing

    from egmf_core.config import ConfigError, RunConfig

    cls: Any = RunConfig
    *parents, name = key.split(".")
    for part in parents:
        hints = typing.get_type_hints(cls)
        if part not in hints or not dataclasses.is_dataclass(hints[part]):
            raise ConfigError(f"unknown config field {key}")
        cls = hints[part]
    hints = typing.get_type_hints(cls)
    if name not in hints or dataclasses.is_dataclass(hints[name]):
        raise ConfigError(f"unknown config field {key}")
    if not _fits(value, hints[name]):
        raise ConfigError(f"config field {key}={value!r}: expected {_type_name(hints[name])}")


def _fits(value: Any, hint: Any) -> bool:
    import types
    import typing

    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is not None:
        return isinstance(value, origin)  # list[str] -> list: the config's own checks do the rest
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def cells_on_disk(spec: TableSpec, profile: str, runs: dict[str, dict], expanded: list[Cell] | None = None) -> list[Cell]:
    """The table's cells among ``runs`` (run id -> record): its default grid plus any other seed
    (or trust_remote_code setting, or ``--set`` overrides) found among the run files of this
    table's datasets, e.g. a run another table shares at its own seeds. ``expanded``: cells a
    command already expanded; only the seeds and settings they lack are expanded here."""
    # A training table's cells with a run file have that run's seed: the seeds on disk are enough.
    seeds = set() if spec.trains else set(spec.seeds.get(profile, ()))
    trust = {False}
    sets = {"{}": {}}
    if spec.trains:
        for run in runs.values():
            cfg = run["config"]
            if cfg.get("profile") == profile and (cfg.get("data") or {}).get("name") in spec.datasets:
                if isinstance(cfg.get("seed"), int):
                    seeds.add(cfg["seed"])
                trust.add(bool((cfg.get("model") or {}).get("trust_remote_code", False)))
                if isinstance(cfg.get("overrides"), dict):
                    sets[json.dumps(cfg["overrides"], sort_keys=True)] = cfg["overrides"]
    settings = {(t, key): overrides for t in sorted(trust) for key, overrides in sets.items()}
    if not seeds:
        return []
    have: dict[tuple, set[int]] = {}
    for c in expanded or ():
        key = (bool(c.config.model.trust_remote_code), json.dumps(c.overrides or {}, sort_keys=True))
        have.setdefault(key, set()).add(c.seed)
    cells = [c for c in expanded or () if c.run_id in runs]
    for (t, key), overrides in settings.items():
        missing = sorted(seeds - have.get((t, key), set()) if spec.trains else seeds)
        if not missing or (not spec.trains and expanded):
            continue
        try:
            grid = expand(spec, profile, GridArgs(seeds=tuple(missing), trust_remote_code=t, overrides=overrides),
                          check_roots=False)
        except ValueError:  # overrides of another table's runs that do not fit this table's rows
            continue
        cells.extend(c for c in grid if c.run_id in runs)
    return cells


def narrow(cells: list[Cell], table: TableSpec, args: GridArgs) -> list[Cell]:
    """The cells of ``args.rows`` and ``args.datasets`` (None keeps all), names checked as ``expand``
    checks them: ``expand`` with those filters, without expanding again."""
    rows = set(_check_names(args.rows, [r.name for r in table.rows], "--rows", f"rows of table {table.name}"))
    datasets = set(_check_names(args.datasets, list(table.datasets), "--datasets", f"datasets of table {table.name}"))
    return [c for c in cells if c.row in rows and c.dataset in datasets]
