"""Same bits on another CPU, without a second machine: the op trace of a short run natively and
under qemu's software Intel Haswell (AVX2, GenuineIntel) must be identical under the pins.

This would have caught issue 21 on one machine: with torch's own CPU sqrt (``--aten-sqrt``) the two
traces part at an ``aten.sqrt`` in AdamW; with the pinned exact sqrt they are equal op for op.
qemu-user runs the project's own Python and torch (``apt-get install qemu-user``; .ci/run does);
where it is missing the test is skipped, unless $EGMF_REQUIRE_QEMU=1 (CI) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_kill_resume import REPO, cli_env, write_tiny_ablations

pytestmark = pytest.mark.slow

QEMU = shutil.which("qemu-x86_64")


def _trace(tmp_path: Path, name: str, *, emulate: bool, aten_sqrt: bool = False) -> list[str]:
    ablations = write_tiny_ablations(tmp_path / "ablations", base={"train.max_steps": "3", "train.eval_every": "3"},
                                     rows='[[rows]]\nname = "full"\n', seeds="[1111]")
    out = tmp_path / f"{name}.tsv"
    cmd = [sys.executable, "-m", "benchmarks.regression.op_trace", *(["--aten-sqrt"] if aten_sqrt else []), str(out),
           "reproduce", "tiny", "--ablations-dir", str(ablations), "--results-root", str(tmp_path / f"results-{name}"),
           "--no-report", "--no-estimate", "--jobs", "1"]
    if emulate:
        cmd = [QEMU, "-cpu", "Haswell", *cmd]
    env = {**cli_env(tmp_path), "EGMF_CACHE": str(tmp_path / f"cache-{name}")}  # each builds its own twin
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    return out.read_text().splitlines()


def _first_difference(a: list[str], b: list[str]) -> str | None:
    for x, y in zip(a, b):
        if x != y:
            return f"{x} | {y}"
    return None if len(a) == len(b) else f"{len(a)} vs {len(b)} lines"


@pytest.fixture(scope="module")
def qemu():
    if QEMU is None:
        if os.environ.get("EGMF_REQUIRE_QEMU") == "1":
            pytest.fail("qemu-x86_64 not found but $EGMF_REQUIRE_QEMU=1 (apt-get install qemu-user)")
        pytest.skip("qemu-x86_64 not installed (apt-get install qemu-user)")
    return QEMU


def test_pinned_trace_equals_emulated_intel_haswell(tmp_path, qemu):
    native = _trace(tmp_path, "native", emulate=False)
    haswell = _trace(tmp_path, "haswell", emulate=True)
    assert len(native) > 1000
    assert _first_difference(native, haswell) is None


def test_torch_sqrt_makes_the_traces_part_at_a_sqrt(tmp_path, qemu):
    native = _trace(tmp_path, "native", emulate=False, aten_sqrt=True)
    haswell = _trace(tmp_path, "haswell", emulate=True, aten_sqrt=True)
    first = _first_difference(native, haswell)
    assert first is not None and "aten.sqrt" in first.split(" | ")[0]
