"""The nightly workflow file: valid YAML, its triggers and jobs, and commands that name real nox sessions."""

from __future__ import annotations

import importlib.util
import re
import shlex

import pytest

yaml = pytest.importorskip("yaml")  # PyYAML comes with transformers (huggingface_hub)

from benchmarks import cli  # noqa: E402
from benchmarks.regression import nightly  # noqa: E402
from egmf_core.paths import REPO_ROOT  # noqa: E402

REPO = REPO_ROOT
WORKFLOW = REPO / ".github" / "workflows" / "nightly.yml"
NOX_CALL = re.compile(r"\bnox\s+-s\s+(\S+)(.*)")


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def noxfile():
    """noxfile.py, imported from its path as `nox -l` would (once: importing registers its sessions)."""
    spec = importlib.util.spec_from_file_location("egmf_noxfile", REPO / "noxfile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def nox_sessions(noxfile) -> set[str]:
    """The session names noxfile.py registers."""
    import nox.registry

    return set(nox.registry.get())


def triggers(wf: dict) -> dict:
    return wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on:` key as True


def run_lines(job: dict) -> list[str]:
    return [line.strip() for step in job["steps"] if "run" in step for line in step["run"].splitlines()]


def nox_calls(job: dict) -> list[tuple[str, list[str]]]:
    """(session, arguments after `--`) for every `nox -s` in a job's run steps, in order."""
    calls = []
    for line in run_lines(job):
        m = NOX_CALL.search(line)
        if m:
            rest = shlex.split(m.group(2))
            calls.append((m.group(1), rest[rest.index("--") + 1:] if "--" in rest else []))
    return calls


def test_runs_nightly_on_a_valid_cron_and_on_demand(workflow):
    on = triggers(workflow)
    assert "workflow_dispatch" in on
    (schedule,) = on["schedule"]
    fields = schedule["cron"].split()
    assert len(fields) == 5 and fields[2:] == ["*", "*", "*"]  # once a day
    assert 0 <= int(fields[0]) < 60 and 0 <= int(fields[1]) < 24


def test_cpu_job_installs_nox_then_reproduces_the_smoke_grid_tests_and_checks(workflow):
    job = workflow["jobs"]["smoke-cpu"]
    assert job["runs-on"] == "ubuntu-latest"
    setup = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/setup-python"))
    assert str(setup["with"]["python-version"]) == "3.11"
    assert "pip install -c constraints.txt nox" in run_lines(job)
    assert [s for s, _ in nox_calls(job)] == ["reproduce_all", "tests", "nightly"]
    assert "--profile" not in dict(nox_calls(job))["nightly"]  # smoke is the default profile


def test_gpu_job_runs_the_paper_nightly_with_roots_from_the_runner(workflow):
    job = workflow["jobs"]["paper-gpu"]
    assert "self-hosted" in job["runs-on"] and "gpu" in job["runs-on"]
    calls = nox_calls(job)
    assert [s for s, _ in calls] == ["gpu_check", "nightly"]  # a CUDA break fails in minutes, before the grid
    assert calls[0][1] == ["--size", "full", "--device", "cuda", "--group", "1,2,4,8,16", "--json", "reports/scale/gpu_check.json",
                           "--report", "reports/scale/gpu_check.md"]  # written only where told
    args = calls[1][1]
    raw = next(line for line in run_lines(job) if "nox -s nightly" in line)
    assert '--data-root "$EGMF_DATA_ROOT"' in raw and '--model-root "$EGMF_MODEL_ROOT"' in raw
    assert args[args.index("--profile") + 1] == "paper"
    assert "--force" not in args  # the nightly grid of ablations/nightly.toml, not a forced retrain


@pytest.mark.parametrize("job_name", ["smoke-cpu", "paper-gpu"])
def test_every_nox_call_names_an_existing_session(workflow, nox_sessions, job_name):
    for session, _ in nox_calls(workflow["jobs"][job_name]):
        assert session in nox_sessions, f"{WORKFLOW.name}: job {job_name} calls unknown nox session {session!r}"


@pytest.mark.parametrize("job_name", ["smoke-cpu", "paper-gpu"])
def test_arguments_after_the_double_dash_parse_as_the_harness_reads_them(workflow, job_name):
    for session, args in nox_calls(workflow["jobs"][job_name]):
        args = [a.replace("$EGMF_DATA_ROOT", "/data").replace("$EGMF_MODEL_ROOT", "/models") for a in args]
        if session == "nightly":
            parsed = nightly.build_parser().parse_args(args)
            assert parsed.profile in ("smoke", "paper")
        elif session == "reproduce_all":
            parsed = cli.build_parser().parse_args(["reproduce", "all", *args])
            assert parsed.force  # a nightly retrains: stored runs would hide a regression


@pytest.mark.parametrize("job_name, profile", [("smoke-cpu", "smoke"), ("paper-gpu", "paper")])
def test_each_job_uploads_reports_and_results_even_after_a_failure(workflow, job_name, profile):
    job = workflow["jobs"][job_name]
    upload = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact"))
    assert upload["if"].replace(" ", "") in ("${{always()}}", "always()")
    assert set(upload["with"]["path"].split()) == {"reports/", "results/"}
    # The check itself writes the job summary; a step notes it when no report was written.
    assert any(f"reports/{profile}/regression.md" in s.get("run", "") and "GITHUB_STEP_SUMMARY" in s.get("run", "")
               for s in job["steps"])


@pytest.mark.parametrize("posargs, jobs, group", [
    ([], True, True),
    (["--force"], True, True),
    (["--profile", "paper", "--data-root", "d"], True, True),  # auto: one worker per visible GPU (x --jobs-per-gpu)
    (["--profile=paper"], True, True),
    (["--jobs", "3"], False, True),  # the user's own --jobs is passed through as given
    (["--jobs=3"], False, True),
    (["--shard", "0/2"], False, True),
    (["--launcher", "slurm"], False, True),
    (["--group", "4"], True, False),  # and the user's own --group
    (["--group=1"], True, False),
])
def test_reproduce_sessions_pass_jobs_and_group_auto_unless_given(noxfile, posargs, jobs, group):
    import types

    added = noxfile._jobs(types.SimpleNamespace(posargs=posargs))
    assert added == (["--jobs", "auto"] if jobs else []) + (["--group", "auto"] if group else [])
