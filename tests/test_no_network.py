"""The smoke profile never touches the network; trust_remote_code is off unless opted in, and recorded."""

from __future__ import annotations

import json
import socket

import pandas as pd
import pytest

from benchmarks import commandline
from benchmarks.cli import main
from benchmarks.execution import runner
from benchmarks.results import store
from tests import fakes
from tests.conftest import isolate_harness
from tests.fakes import hashed_run
from tests.test_kill_resume import (
    PROFILE,
    tiny_repo,  # noqa: F401 (a fixture used by name)
    write_tiny_ablations,
)


@pytest.fixture
def no_internet(no_network, monkeypatch):
    """conftest's guard on connect, plus name lookups, UDP sends and connect_ex."""
    real_getaddrinfo = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        if host in (None, "localhost", "127.0.0.1", "::1"):
            return real_getaddrinfo(host, *args, **kwargs)
        raise AssertionError(f"a smoke run looked up {host!r}")

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"a smoke run sent or connected: {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", local_only)
    monkeypatch.setattr(socket.socket, "sendto", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def test_the_cli_switches_hugging_face_to_offline_mode_before_anything_loads(monkeypatch, capsys):
    for name in commandline.OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    assert main(["list"]) == 0
    import os

    assert {k: os.environ.get(k) for k in commandline.OFFLINE_ENV} == {
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.mark.slow
@pytest.mark.usefixtures("tiny_repo")
def test_a_tiny_smoke_grid_runs_end_to_end_without_any_socket(tmp_path, no_internet, monkeypatch, capsys):
    monkeypatch.setenv("EGMF_CACHE", str(tmp_path / "cache"))  # twins built here, from local files only
    ablations = write_tiny_ablations(tmp_path / "ablations", seeds="[1111]",
                                     base={"train.max_steps": "4", "train.eval_every": "2"})
    argv = ["reproduce", "tiny", "--ablations-dir", str(ablations), "--results-root", str(tmp_path / "results"),
            "--reports-root", str(tmp_path / "reports")]
    assert main(argv) == 0, capsys.readouterr().err
    assert "2 runs (2 trained, 0 cached, 0 failed)" in capsys.readouterr().out
    df = pd.read_csv(tmp_path / "results" / PROFILE / "tiny.csv")
    assert set(df["status"]) == {"ok"} and set(df["steps"]) == {4}
    assert (tmp_path / "reports" / PROFILE / "tiny.md").is_file()  # the report rendered offline too


# ---- trust_remote_code -----------------------------------------------------------------------------

@pytest.mark.parametrize("flag", [False, True])
def test_trust_remote_code_is_off_unless_the_flag_is_given_and_every_record_says_which(tmp_path, monkeypatch, flag):
    monkeypatch.setattr(runner, "_default_run_fn", lambda cell: hashed_run)
    isolate_harness(tmp_path, monkeypatch)
    argv = ["reproduce", "3", "--rows", "EGMF", "--seeds", "1111", "--datasets", "mosei", "--no-report",
            "--results-root", str(tmp_path / "results")] + (["--trust-remote-code"] if flag else [])
    assert main(argv) == 0
    (path,) = store.runs_dir(tmp_path / "results", PROFILE).glob("*.json")
    record = store.read_run(path)
    assert record["config"]["model"]["trust_remote_code"] is flag  # part of the run's identity
    assert record["provenance"]["trust_remote_code"] is flag and record["outcome"]["trust_remote_code"] is flag
    csv = pd.read_csv(tmp_path / "results" / PROFILE / "main_msa.csv")
    assert set(csv["trust_remote_code"]) == {flag}


def test_the_report_says_when_remote_code_was_on(tmp_path, monkeypatch):
    from benchmarks.execution.tables import load_table
    from benchmarks.reporting import report

    monkeypatch.setattr(runner, "_default_run_fn", lambda cell: hashed_run)
    isolate_harness(tmp_path, monkeypatch)
    fakes.reproduce("main_msa", PROFILE, rows=["EGMF"], seeds=[1111], datasets=["mosei"], trust_remote_code=True,
                     results_root=tmp_path / "results", reports_root=tmp_path / "reports", render=False)
    df = report.load_results(PROFILE, "main_msa", tmp_path / "results")
    text = report.build_table_report(load_table("main_msa"), df, PROFILE, {})
    assert "trust_remote_code" in text and "**ON** in 1 run(s)" in text
    assert json.loads(df["config_json"].iloc[0])["model"]["trust_remote_code"] is True
