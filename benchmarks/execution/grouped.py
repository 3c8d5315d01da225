"""Train a table's runs in run groups (``--group K``): the runs that share a backbone and a
dataset (``egmf_core.group.group_key``) train K at a time over one copy of the frozen weights.

Each run is still the grid's run: the same id, its own lock, checkpoint folder and run file, and
the same cached / busy / redo rules as ``runner._RunTask`` applies to a run trained alone (a
baseline row, ``model.method`` other than "egmf", always trains alone). A run
is claimed (its lock taken) only when a slot of its group frees, so ``--jobs`` workers and Slurm
tasks that walk the same grid share it run by run, as they do without groups. The group size a
run trained in is recorded in its provenance (``group_size``) and its outcome's cost.

A crash inside a group (an exception that is not bad input) fails the runs it held, each with
the one-line error, and the table's remaining runs start a new group; bad input (ValueError)
releases every lock and ends the grid, as it does for a run alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from benchmarks.commandline import one_line
from benchmarks.execution.grid import Cell
from benchmarks.execution.profiles import resolve_run_config
from egmf_core.outcome import RunOutcome

# group_fn(items, *, group_size, on_done, checkpoint_minutes, threads) -> outcomes, as
# egmf_core.group.run_group: items are egmf_core.group.GroupItem (cfg, tag = run id, checkpoint_dir).
GroupFn = Callable[..., list]


@dataclass
class _Pending:
    run_id: str
    cell: Cell
    resolved: object  # the RunConfig with this machine's roots
    index: int  # 1-based, in the table's order (for the events)


@dataclass
class _Held:
    pending: _Pending
    lock: object  # store.RunLock, acquired
    prior: str | None  # checksum of an ok record stored before (see runner._RunTask.store)
    t0: float


def train_in_groups(task, runs: list[tuple[str, Cell]], size: int, group_fn: GroupFn,
                    advance: Callable[[], None] = lambda: None) -> None:
    """Train ``runs`` (run id, cell) with ``task`` (a ``runner._RunTask``: claim, prepare, store)
    in groups of at most ``size``, one group_key at a time; ``advance()`` after each run is done."""
    from egmf_core.group import group_key

    context, total = task.context, len(runs)
    by_key: dict[str, list[_Pending]] = {}
    alone = []
    for index, (run_id, cell) in enumerate(runs, 1):
        if cell.config.model.method != "egmf":  # a baseline (MSE-Adapter, TFN) has its own model: alone
            alone.append((run_id, cell, index))
            continue
        resolved = resolve_run_config(cell.config, data_root=context.data_root, model_root=context.model_root,
                                      strict_data=context.strict_data)
        by_key.setdefault(group_key(resolved), []).append(_Pending(run_id, cell, resolved, index))
    for pending in by_key.values():
        _train_key(task, pending, size, total, group_fn, advance)
    for run_id, cell, index in alone:
        task.handle(run_id, cell, index, total)
        advance()


def _train_key(task, pending: list[_Pending], size: int, total: int, group_fn: GroupFn, advance) -> None:
    """One group_key's runs: claimed as slots free, stored as each ends."""
    from egmf_core.group import GroupItem

    queue, held = list(pending), {}

    def feed():
        while queue:
            p = queue.pop(0)
            lock = task.claim(p.run_id, p.cell, p.index, total)
            if lock is None:
                advance()
                continue
            ckpt, prior = task.prepare(p.run_id)
            held[p.run_id] = _Held(p, lock, prior, time.monotonic())
            yield GroupItem(p.resolved, p.run_id, ckpt)

    def on_done(run_id: str, outcome: RunOutcome) -> None:
        h = held.pop(run_id)
        try:
            group = int(outcome.cost.get("group_size", 1))
            task.store(run_id, h.pending.cell, outcome, h.pending.resolved, h.prior, time.monotonic() - h.t0,
                       group_size=group)
            task.report_trained(h.pending.cell, h.pending.index, total)
        finally:
            h.lock.release()
            advance()

    while queue or held:
        try:
            group_fn(feed(), group_size=size, on_done=on_done)
            error = "the group ended without this run's outcome"  # a group function that lost a run
        except ValueError:  # bad input: the grid ends with one line; nothing stays locked
            for h in held.values():
                h.lock.release()
            raise
        except Exception as e:  # a crash fails the runs the group held; the rest start a new group
            error = one_line(f"{type(e).__name__}: {e}")
        n = len(held)
        for run_id in list(held):
            on_done(run_id, RunOutcome(status="failed", error=error, cost={"group_size": float(n)}))

