"""Pinned CPU numerics: what the pins set, what a run records, what the report says."""

from __future__ import annotations

import json
import platform

import pandas as pd
import pytest

from benchmarks.execution import numerics
from benchmarks.execution.numerics import PINNED_ENV, PINNED_LABEL
from benchmarks.results import store
from tests.test_runner import _go

X86 = platform.machine().lower() in ("x86_64", "amd64")


def test_the_pins_override_what_the_environment_asked_for_unless_native():
    env = {"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AUTO", "PATH": "/bin"}
    assert numerics.pin(env) == PINNED_ENV
    assert env == {**PINNED_ENV, "PATH": "/bin"}
    native = {"EGMF_NUMERICS": "native", "ATEN_CPU_CAPABILITY": "avx512"}
    assert numerics.pin(native) == {} and native["ATEN_CPU_CAPABILITY"] == "avx512"
    with pytest.raises(numerics.NumericsError, match=r"\$EGMF_NUMERICS must be one of pinned, native, got 'fast'"):
        numerics.pin({"EGMF_NUMERICS": "fast"})


def test_a_setting_environment_drops_the_pins_and_adds_the_setting():
    base = {**PINNED_ENV, "PATH": "/bin"}
    assert numerics.setting_environment("aten-default", base) == {
        "PATH": "/bin", "EGMF_NUMERICS": "native", "ATEN_CPU_CAPABILITY": "default"}
    assert numerics.setting_environment("pinned", base) == {"PATH": "/bin", "EGMF_NUMERICS": "pinned"}
    with pytest.raises(numerics.NumericsError, match="unknown numerical setting 'fastest'"):
        numerics.setting_environment("fastest", base)


@pytest.mark.skipif(not X86, reason="the pins are x86-64 kernel settings")
def test_this_test_process_runs_under_the_pins_set_before_torch_started():
    s = numerics.settings()  # conftest pinned before importing torch: the kernels in force, read back
    assert (s["mode"], s["cpu_capability"], s["mkl_branch"], s["threads"]) == ("pinned", "AVX2", "COMPATIBLE", 1)
    assert s["label"] == PINNED_LABEL == "pinned: aten AVX2, mkl COMPATIBLE, exact sqrt, 1 thread"
    assert s["env"]["MKL_CBWR"] == "COMPATIBLE"


def test_every_run_records_its_numerics_in_provenance_and_in_the_results_table(tmp_path):
    summary = _go(tmp_path)
    run_file = next(store.runs_dir(tmp_path / "results", "smoke").glob("*.json"))
    recorded = store.read_run(run_file)["provenance"]["numerics"]
    assert recorded == json.loads(json.dumps(numerics.settings()))
    assert set(pd.read_csv(summary.csv)["numerics"]) == {recorded["label"]}


def _runs(labels: list[str], device: str = "cpu") -> pd.DataFrame:
    return pd.DataFrame({"run_id": [f"r{i}" for i in range(len(labels))], "numerics": labels, "device": device})


def test_the_report_says_when_results_were_made_under_other_settings():
    assert numerics.report_note(_runs([PINNED_LABEL] * 3)).startswith(f"{PINNED_LABEL} (all 3 CPU runs")
    native = "native: aten AVX512, mkl AUTO, 1 thread"
    note = numerics.report_note(_runs([PINNED_LABEL, native, native, ""]))
    assert note.startswith("**not all pinned** (2 run(s) native: aten AVX512, mkl AUTO, 1 thread; "
                           "1 run(s) unrecorded)")
    assert numerics.report_note(pd.DataFrame()) == "no runs yet"
    assert numerics.report_note(_runs([PINNED_LABEL]).drop(columns="numerics")).startswith("unrecorded")
    statistics = {"mode": "pinned", "cpu_capability": "unknown", "mkl_branch": "unknown", "threads": 0}
    assert numerics.report_note(_runs([numerics.label(statistics)])) == numerics.NO_KERNELS  # no torch, no kernels


def test_the_report_names_the_non_deterministic_kernels_of_gpu_runs():
    note = numerics.report_note(_runs(["pinned: aten AVX2, mkl COMPATIBLE, 8 threads"], device="cuda:H200 x1"))
    assert note.startswith("1 GPU run(s): statistically repeatable only") and "SDPA backward" in note


def test_a_bad_numerics_mode_is_bad_input_in_one_line(monkeypatch, capsys):
    from benchmarks import cli
    from benchmarks.regression import nightly

    monkeypatch.setenv("EGMF_NUMERICS", "fast")
    for main, argv in ((cli.main, ["list"]), (nightly.main, ["--skip-reproduce"])):
        assert main(argv) == 2
        assert capsys.readouterr().err == "error: $EGMF_NUMERICS must be one of pinned, native, got 'fast'\n"


def test_pinned_sqrt_is_the_correctly_rounded_one():
    """torch's CPU sqrt (MKL VML) is not correctly rounded and its bits depend on the CPU (issue 21);
    pinned, every variant rounds once, as IEEE 754 sqrt does on any CPU (math.sqrt via float64)."""
    import math

    import torch

    x = torch.rand(1 << 16, generator=torch.Generator().manual_seed(0)) * 100
    exact = torch.tensor([math.sqrt(float(v)) for v in x], dtype=torch.float64).to(torch.float32)
    inplace, out = x.clone(), torch.empty_like(x)
    inplace.sqrt_()
    torch.sqrt(x, out=out)
    for got in (torch.sqrt(x), x.sqrt(), inplace, out):
        assert torch.equal(got, exact)
    assert torch.equal(torch.sqrt(x[::2]), exact[::2])  # a strided view
    assert torch.equal(torch.sqrt(x.double()), torch.tensor([math.sqrt(float(v)) for v in x.double()], dtype=torch.float64))
    assert torch.sqrt(torch.tensor(4)).dtype == torch.float32 and torch.sqrt(torch.tensor(2.0)).shape == ()
    assert torch.sqrt(x[:4].half()).dtype == torch.float16 and torch.sqrt(x[:4].bfloat16()).dtype == torch.bfloat16
    g = x[:5].clone().requires_grad_()
    g.sqrt().sum().backward()
    assert torch.allclose(g.grad, 0.5 / exact[:5])
    assert numerics.settings()["sqrt"] == "exact" and "exact sqrt" in numerics.settings()["label"]


def test_native_mode_leaves_sqrt_alone(monkeypatch):
    monkeypatch.setenv("EGMF_NUMERICS", "native")
    assert numerics.pin_kernels() is False
    old = {"mode": "pinned", "cpu_capability": "AVX2", "mkl_branch": "COMPATIBLE", "threads": 1}
    assert numerics.label(old) == "pinned: aten AVX2, mkl COMPATIBLE, 1 thread"  # run files written before the pin
    assert numerics.PINNED_LABEL == "pinned: aten AVX2, mkl COMPATIBLE, exact sqrt, 1 thread"
