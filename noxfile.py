"""Thin nox sessions: each parses nothing and calls the library (benchmarks/ or pytest).

All sessions share one environment, ``.nox/egmf``, installed from ``constraints.txt`` (the
versions we tested) and reinstalled only when ``pyproject.toml`` or ``constraints.txt`` change,
so a second ``nox -s reproduce_table3`` starts in seconds. Arguments after ``--`` pass through:
``nox -s reproduce_table3 -- --profile paper --data-root DIR --model-root DIR``.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import nox
import tomllib

ROOT = Path(__file__).resolve().parent
ENV = ROOT / ".nox" / "egmf"
STAMP = ENV / ".installed"
nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "none"


def _env_key() -> str:
    h = hashlib.sha256()
    for name in ("pyproject.toml", "constraints.txt"):
        h.update((ROOT / name).read_bytes())
    return h.hexdigest()


def _python(session: nox.Session) -> str:
    """The shared environment's python, (re)installed only when the pins changed."""
    py = ENV / "bin" / "python"
    key = _env_key()
    if not (py.exists() and STAMP.exists() and STAMP.read_text() == key):
        session.log(f"installing the pinned environment into {ENV}")
        session.run(sys.executable, "-m", "venv", "--clear", str(ENV))
        session.run(str(py), "-m", "pip", "install", "-q", "--upgrade", "pip", "-c", "constraints.txt")
        session.run(str(py), "-m", "pip", "install", "-q", "-c", "constraints.txt", "-e", ".[dev]")
        STAMP.write_text(key)
    session.env["PYTHONHASHSEED"] = "0"
    session.env["HF_HUB_OFFLINE"] = "1"
    session.env["TRANSFORMERS_OFFLINE"] = "1"
    session.env["HF_DATASETS_OFFLINE"] = "1"
    session.env.update(_numerics_pins())
    return str(py)


def _numerics_pins() -> dict[str, str]:
    """The CPU kernel pins of benchmarks/execution/numerics.py (none under EGMF_NUMERICS=native). The harness
    and the tests pin themselves too; setting them here covers any other command a session runs."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.execution.numerics import pinned_environment

    return pinned_environment()


def _harness(session: nox.Session, *args: str) -> None:
    session.run(_python(session), "-m", "benchmarks", *args, *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (fast tests; add `-- -m slow` for the end-to-end ones)."""
    session.run(_python(session), "-m", "pytest", *(session.posargs or ["-q"]))


@nox.session
def lint(session: nox.Session) -> None:
    """Static checks: ruff (pyflakes + pycodestyle errors) over the code and tests."""
    py = _python(session)
    session.run(py, "-m", "ruff", "check", "egmf_core", "benchmarks", "tests", "noxfile.py")


@nox.session
def report(session: nox.Session) -> None:
    """Re-render every report from results/ (no training)."""
    _harness(session, "report", "all")


def _jobs(session: nox.Session) -> list[str]:
    """``--jobs auto --group auto`` unless given. Jobs: one worker per CPU core for the smoke
    profile (one torch thread per run); for the GPU profiles ``--jobs-per-gpu`` (default 1)
    workers per visible GPU, each pinned to its GPU. Group: on a GPU as many runs over one copy
    of the backbone as its memory holds; on CPU each run alone (egmf_core/group.py says why)."""
    given = any(a.startswith(("--jobs=", "--shard", "--launcher")) or a == "--jobs" for a in session.posargs)
    grouped = any(a == "--group" or a.startswith("--group=") for a in session.posargs)
    return ([] if given else ["--jobs", "auto"]) + ([] if grouped else ["--group", "auto"])


@nox.session
def reproduce_all(session: nox.Session) -> None:
    """Reproduce every paper table (smoke profile unless -- --profile paper; smoke trains one run per CPU core)."""
    _harness(session, "reproduce", "all", *_jobs(session))


@nox.session
def bench(session: nox.Session) -> None:
    """pytest-benchmark suites (benchmarks/perf), compared with the last saved run."""
    py = _python(session)
    args = ["-m", "pytest", "benchmarks/perf", "-p", "no:cacheprovider", "--benchmark-enable",
            "--benchmark-autosave", "--benchmark-columns=min,median,mean,stddev,rounds",
            "-o", "addopts=", "-q"]
    if any((ROOT / ".benchmarks").glob("*/*.json")):
        args += ["--benchmark-compare", "--benchmark-compare-fail=median:50%"]
    session.run(py, *args, *session.posargs)


@nox.session
def gpu_check(session: nox.Session) -> None:
    """Build, train, evaluate and checkpoint each backbone, measuring it (GPU: -- --size full --device cuda)."""
    _harness(session, "gpu-check")


@nox.session
def nightly(session: nox.Session) -> None:
    """Reproduce the nightly tables, compare with results/baselines/<profile>.csv, fail on regression."""
    session.run(_python(session), "-m", "benchmarks.regression.nightly", *session.posargs)


def _register_table_sessions() -> None:
    """One `reproduce_table<N>` session per paper table, from ablations/table_numbers.toml."""
    mapping = tomllib.loads((ROOT / "ablations" / "table_numbers.toml").read_text("utf-8"))["tables"]
    for number, name in mapping.items():
        caption = tomllib.loads((ROOT / "ablations" / f"{name}.toml").read_text("utf-8")).get("caption", name)

        def session_fn(session: nox.Session, _name: str = name) -> None:
            _harness(session, "reproduce", _name, *_jobs(session))

        session_fn.__doc__ = f"Table {number} ({name}): {caption}"
        nox.session(name=f"reproduce_table{number}")(session_fn)


if (ROOT / "ablations" / "table_numbers.toml").exists() and os.environ.get("EGMF_NOX_NO_TABLES") != "1":
    _register_table_sessions()
