"""Run files -> a table's tidy CSV (results/<profile>/<table>.csv), from the cells it is given.

The caller says which cells make the table (the grid it expanded, or ``grid.cells_on_disk``
for commands that expanded none) and hands in the run records it loaded once; nothing here
expands a grid or lists the runs folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from benchmarks.results import store
from egmf_core.atomic import atomic_write_bytes


def load_runs(results_root: Path, profile: str, on_corrupt: Callable[[str], None] | None = None) -> dict[str, dict]:
    """run id -> record for every valid run file of ``profile``: the one read of the runs folder
    a command makes; a corrupt file goes to ``on_corrupt`` as one line."""
    report = None if on_corrupt is None else (lambda e: on_corrupt(str(e)))
    return store.load_runs(store.runs_dir(results_root, profile), on_corrupt=report)


def write_table_csv(spec, cells: Iterable, runs: dict[str, dict], path: Path, *, write_empty: bool = True,
                    on_corrupt: Callable[[str], None] | None = None) -> Path | None:
    """Rewrite ``path`` (a table's CSV) from the run files of ``cells`` that ``runs`` holds;
    byte-identical, and not written, when nothing changed.

    An existing CSV is first checked against the run files: a line they do not back (edited,
    truncated) goes to ``on_corrupt`` as one line naming file and line. An existing CSV is always
    rewritten (empty when no run is left), so no stale or edited row survives; ``write_empty``
    only decides whether a CSV is created for a table without runs.
    """
    cells = [c for c in cells if c.run_id in runs]
    if not cells and not write_empty and not path.exists():
        return None
    text = store.table_csv_text(store.tidy_rows(spec, cells, runs))
    problem = store.csv_problem(path, text)
    if problem is not None and on_corrupt is not None:
        on_corrupt(problem)
    if path.exists() and path.read_bytes() == text.encode("utf-8"):
        return path  # unchanged: no write (and no lock-step rewrites between concurrent shards)
    return atomic_write_bytes(path, text.encode("utf-8"))
