"""End to end: under the pinned numerics a run gives the same numbers whatever kernels the
environment asks for (ATEN_CPU_CAPABILITY, MKL_CBWR); without the pins it does not."""

from __future__ import annotations

import platform
import subprocess
import sys

import pandas as pd
import pytest

from benchmarks.execution.numerics import PINNED_LABEL
from tests.test_kill_resume import DRIVER, cli_env, reproduce_args, stable_values, write_tiny_ablations

# (ATEN_CPU_CAPABILITY, MKL_CBWR) the environment asks for; None = unset. Each a fresh process:
# every capability and every MKL request appears once (all 12 pairs agreed on a 400-step smoke run,
# see benchmarks/execution/numerics.py; four keep CI short).
REQUESTS = [(None, None), ("default", "AVX2"), ("avx2", "COMPATIBLE"), ("avx512", None)]
LONGER = {"train.max_steps": "40", "train.eval_every": "40", "train.checkpoint_every": None}


def _train(tmp_path, ablations, name: str, aten: str | None, cbwr: str | None, mode: str) -> pd.DataFrame:
    env = cli_env(tmp_path)
    env["EGMF_NUMERICS"] = mode
    for key, value in (("ATEN_CPU_CAPABILITY", aten), ("MKL_CBWR", cbwr)):
        env.pop(key, None)
        if value is not None:
            env[key] = value
    results = tmp_path / name
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "repo"),
                           *reproduce_args(ablations, results)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return stable_values(results / "smoke" / "tiny.csv")


@pytest.mark.slow
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 kernel settings")
def test_pinned_runs_are_identical_under_every_requested_kernel_setting(tmp_path):
    ablations = write_tiny_ablations(tmp_path / "ablations", seeds="[1111]", rows='[[rows]]\nname = "full"\n',
                                     base=LONGER)
    frames = [_train(tmp_path, ablations, f"pinned-{i}", aten, cbwr, "pinned")
              for i, (aten, cbwr) in enumerate(REQUESTS)]
    first = frames[0]
    assert first["value"].notna().all() and first["gating_json"].str.len().min() > 20
    assert set(first["numerics"]) == {PINNED_LABEL}
    for frame in frames[1:]:
        pd.testing.assert_frame_equal(frame, first)  # exact: metrics, gating statistics, provenance label

    # The control: without the pins the same run is not the same (so the check above can fail).
    native = [_train(tmp_path, ablations, f"native-{aten}", aten, None, "native") for aten in ("default", "avx512")]
    assert list(native[0]["numerics"])[0].startswith("native: aten DEFAULT, mkl AUTO")
    assert not native[0][["value", "gating_json"]].equals(native[1][["value", "gating_json"]])
