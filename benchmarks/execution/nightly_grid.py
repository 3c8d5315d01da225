"""The nightly regression grid as data: which tables, seeds and overrides ablations/nightly.toml
declares per profile (the planner and ``regression.nightly`` both read it here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from benchmarks.execution.grid import _check_seeds, _check_type
from egmf_core.config import ConfigError, RunConfig, apply_overrides
from egmf_core.paths import REPO_ROOT

NIGHTLY_FILE = REPO_ROOT / "ablations" / "nightly.toml"


class NightlyInputError(ValueError):
    """Bad input for the nightly check (arguments, results or baseline); the message says which."""


@dataclass(frozen=True)
class NightlyGrid:
    """One profile's nightly grid from ablations/nightly.toml."""

    tables: list[str]
    seeds: list[int] | None = None  # None: each table's own seeds for the profile
    overrides: dict = field(default_factory=dict)  # applied to every run, as reproduce --set
    rows: list[str] | None = None  # None: every row of each table (as reproduce --rows)


def nightly_grid(profile: str, path: Path = NIGHTLY_FILE) -> NightlyGrid:
    """The declared grid of ``profile``; a one-line error naming the file and field."""
    try:
        block = tomllib.loads(Path(path).read_text(encoding="utf-8")).get(profile)
    except tomllib.TOMLDecodeError as e:
        raise NightlyInputError(f"{path}: not valid TOML ({e})") from None
    if not isinstance(block, dict) or not isinstance(block.get("tables"), list) or not block["tables"]:
        raise NightlyInputError(f"{path}: [{profile}] needs a non-empty list 'tables'")
    seeds = block.get("seeds")
    rows = block.get("rows")
    if rows is not None and (not isinstance(rows, list) or not rows or not all(isinstance(r, str) for r in rows)):
        raise NightlyInputError(f"{path}: [{profile}] 'rows' must be a non-empty list of row names")
    overrides = dict(block.get("set", {}))
    try:
        seeds = None if seeds is None else _check_seeds(seeds)
        for key, value in overrides.items():
            _check_type(key, value)
        apply_overrides(RunConfig(), overrides)
    except (ConfigError, ValueError) as e:
        raise NightlyInputError(f"{path}: [{profile}]: {e}") from None
    return NightlyGrid([str(t) for t in block["tables"]], seeds, overrides, rows)
