"""Pinned CPU numerics: the same seed gives the same bits on any x86-64 machine of this decade.

Why. A CPU run's float rounding depends on the kernels chosen for the machine: ATen picks its
vector kernels by the CPU's capability (DEFAULT / AVX2 / AVX512), MKL its GEMM code path by
CPU model and vendor (its ``AUTO`` branch), oneDNN its ISA. A few hundred training steps
amplify a last-bit difference into another model: SIMS-V2, seed 1114, test MAE 0.201 natively
on this machine (AVX512), 0.2225 with ``ATEN_CPU_CAPABILITY=avx2``, 0.2325 with ``default``.

What is pinned (``PINNED_ENV``), before torch reads it:

* ``ATEN_CPU_CAPABILITY=avx2``: ATen's AVX2 kernels exist on every x86-64 CPU of this decade,
  Intel or AMD, and compute the same IEEE operations in the same order on each. torch reads the
  variable lazily, at the first dispatched op (measured: setting it after ``import torch`` but
  before any op still works; after an op it is too late).
* ``MKL_CBWR=COMPATIBLE``: MKL's conditional numerical reproducibility on its SSE2 branch, the
  only branch MKL promises across Intel *and* compatible (AMD) CPUs; ``MKL_CBWR=AVX2`` falls
  back to the ``AUTO`` branch on non-Intel CPUs (oneMKL developer guide, "Getting Started with
  Conditional Numerical Reproducibility"). MKL reads it at its first call.
* ``ONEDNN_MAX_CPU_ISA=AVX2`` (and the older name ``DNNL_MAX_CPU_ISA``): oneDNN's kernels capped
  at AVX2, read at its first primitive.
* one intra-op thread for smoke runs (``benchmarks.execution.profiles.run_threads``; the harness's default).

Measured here (one Sapphire Rapids machine, AVX-512): under the pins the 400-step smoke run above
gives test MAE 0.2425, Acc-5 0.65, Corr 0.727837 and the same gating statistics to the last digit
whatever ``ATEN_CPU_CAPABILITY`` (unset, default, avx2, avx512) and ``MKL_CBWR`` (unset, AVX2,
COMPATIBLE) the environment asked for (all 12 pairs; tests/test_numerics_e2e.py checks 6 on a
tiny run). Both pins matter: ATen at AVX2 with MKL's own branch gave 0.2225. That AMD and other
Intel CPUs give the same bits is argued from the above, not measured here. Cost: a smoke step
takes 51 ms instead of 33 ms (MKL_CBWR=COMPATIBLE; AVX2 ATen kernels cost nothing, MKL_CBWR=AVX2
would cost 5% but MKL honours it on Intel CPUs only); a 400-step run 25.8 s instead of 18.0 s.

One kernel no variable pins: ``torch.sqrt`` on CPU goes through MKL's vector math (VML), whose
result is not correctly rounded (11,208 of 65,536 float32 values differ from the IEEE square
root) and depends on the CPU whatever ``MKL_CBWR``, ``MKL_ENABLE_INSTRUCTIONS`` and
``ATEN_CPU_CAPABILITY`` say. AdamW takes it of every second moment each step
(``exp_avg_sq.sqrt()``), so the tiny LoRA moments made runs differ between machines (issue 21:
an op trace of a 3-step run first differs at an ``aten.sqrt`` between this AMD EPYC and an
emulated Intel Haswell). ``pin_kernels()`` routes ``aten::sqrt`` on CPU to numpy's square root,
which is the IEEE-754 correctly rounded one on every CPU (the instruction itself, ``sqrtps`` /
``vsqrtps``); after it the two traces are identical over 46,931 (main_msa) and 121,250
(backbone_swap, three backbones) ops. Unlike the variables, it is a call made after torch
loads, by whatever process trains (the harness's run function, the tests' conftest); the
label says "exact sqrt" when it is in force.

``EGMF_NUMERICS=native`` leaves the environment and sqrt alone (native speed); every run's provenance
records the settings in force (``settings()``) and the reports say when results were made under
other settings than the pins (``report_note``). Nothing here imports torch except ``pin_kernels``.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import MutableMapping

MODE_ENV = "EGMF_NUMERICS"
MODES = ("pinned", "native")
PINNED_ENV: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
}
PINNED_CAPABILITY = "AVX2"  # what torch.backends.cpu.get_cpu_capability() says under the pins
PINNED_MKL_BRANCH = "COMPATIBLE"
# Also recorded (not pinned): they change speed, or rounding only with more than one thread.
RECORDED_ENV = (*PINNED_ENV, "MKL_ENABLE_INSTRUCTIONS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", MODE_ENV)

# MKL's CNR branch constants (mkl_service.h), as mkl_cbwr_get returns them.
_MKL_BRANCHES = {0: "OFF", 1: "AUTO", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1",
                 8: "SSE4_2", 9: "AVX", 10: "AVX2", 11: "AVX512_MIC", 12: "AVX512", 13: "AVX512_MIC_E1",
                 14: "AVX512_E1", 15: "AVX512_E2", 16: "AVX512_E3", 17: "AVX512_E4", 18: "AVX2_E1",
                 19: "AVX512_E5", 20: "AVX10"}
_MKL_STRICT = 0x10000


# The kernel settings a nightly baseline can be written under (``nightly --settings``), each run
# in a fresh process: the variables below replace the pins (which the parent process set).
SETTINGS: dict[str, dict[str, str]] = {
    "pinned": {MODE_ENV: "pinned"},
    "native": {MODE_ENV: "native"},  # torch's and MKL's own choice for this CPU
    "aten-default": {MODE_ENV: "native", "ATEN_CPU_CAPABILITY": "default"},  # scalar ATen kernels
    "aten-avx2": {MODE_ENV: "native", "ATEN_CPU_CAPABILITY": "avx2"},
    "mkl-compatible": {MODE_ENV: "native", "MKL_CBWR": "COMPATIBLE"},
}


class NumericsError(ValueError):
    """$EGMF_NUMERICS holds an unknown value."""


def mode(environ: MutableMapping[str, str] | None = None) -> str:
    """"pinned" (default) or "native", from $EGMF_NUMERICS."""
    env = os.environ if environ is None else environ
    value = env.get(MODE_ENV, "").strip().lower() or "pinned"
    if value not in MODES:
        raise NumericsError(f"${MODE_ENV} must be one of {', '.join(MODES)}, got {env.get(MODE_ENV)!r}")
    return value


def pinned_environment(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """The variables to set for the current mode: PINNED_ENV, or nothing under "native"."""
    return dict(PINNED_ENV) if mode(environ) == "pinned" else {}


def setting_environment(name: str, base: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """A child process's environment for one of SETTINGS: ``base`` without the pins, plus the setting."""
    if name not in SETTINGS:
        raise NumericsError(f"unknown numerical setting {name!r} (known: {', '.join(SETTINGS)})")
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in PINNED_ENV}
    return {**env, **SETTINGS[name]}


def pin(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the pins in ``environ`` (default os.environ), overriding what it asked for; returns them.

    Must run before torch's first op (and MKL's first call): entry points call it first
    (``benchmarks.cli.main``, ``tests/conftest.py``). Subprocesses inherit the variables.
    """
    env = os.environ if environ is None else environ
    pins = pinned_environment(env)
    env.update(pins)
    return pins


_EXACT_SQRT: list = []  # the torch.library registration, kept alive (dropping it unregisters the kernel)


def pin_kernels() -> bool:
    """Route CPU ``aten::sqrt`` (functional, in-place, out=) to the correctly rounded IEEE square root.

    Call once per process after the environment is pinned and before training (idempotent);
    does nothing under ``EGMF_NUMERICS=native``. Returns whether the routing is in force.
    """
    if mode() != "pinned":
        return False
    if not _EXACT_SQRT:
        import warnings

        import torch

        lib = torch.library.Library("aten", "IMPL")
        with warnings.catch_warnings():  # "overriding a previously registered kernel": on purpose
            warnings.simplefilter("ignore")
            lib.impl("sqrt", _exact_sqrt, "CPU")
            lib.impl("sqrt_", lambda x: x.copy_(_exact_sqrt(x)), "CPU")
            lib.impl("sqrt.out", lambda x, *, out: _exact_sqrt(x, out), "CPU")
        _EXACT_SQRT.append(lib)
    return True


def exact_sqrt_in_force() -> bool:
    return bool(_EXACT_SQRT)


def _exact_sqrt(x, out=None):
    """sqrt(x) rounded once (IEEE 754), through numpy; half types via float32 (24 >= 2*11+2 bits:
    the double rounding is innocuous), integers promoted as torch.sqrt does."""
    import numpy as np
    import torch

    a = x.detach().resolve_conj().resolve_neg()
    dtype = a.dtype if a.is_floating_point() or a.is_complex() else torch.get_default_dtype()
    wide = a.to(torch.float32) if dtype in (torch.float16, torch.bfloat16) else a.to(dtype)
    result = torch.empty(a.shape, dtype=wide.dtype)
    np.sqrt(wide.contiguous().numpy(), out=result.numpy())
    if out is None:
        return result.to(dtype)
    out.resize_(a.shape)
    return out.copy_(result)


def mkl_branch() -> str:
    """The MKL CNR branch in force ("AUTO" = MKL's own per-CPU choice), or "unknown".

    Read from the MKL statically linked into torch's CPU library; only when torch is imported.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return "unknown"
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        get = lib.mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return "unknown"
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    value = int(get(-1))  # MKL_CBWR_ALL
    name = _MKL_BRANCHES.get(value & ~_MKL_STRICT, f"code {value & ~_MKL_STRICT}")
    return f"{name},STRICT" if value & _MKL_STRICT else name


def settings() -> dict:
    """The numerical settings in force in this process, for a run's provenance."""
    torch = sys.modules.get("torch")
    capability = torch.backends.cpu.get_cpu_capability() if torch is not None else "unknown"
    threads = int(torch.get_num_threads()) if torch is not None else 0
    out = {"mode": mode(), "cpu_capability": capability, "mkl_branch": mkl_branch(),
           "sqrt": "exact" if exact_sqrt_in_force() else "aten", "threads": threads,
           "env": {k: os.environ[k] for k in RECORDED_ENV if k in os.environ}}
    out["label"] = label(out)
    return out


def label(s: dict) -> str:
    """One short line for the results table, e.g. "pinned: aten AVX2, mkl COMPATIBLE, exact sqrt, 1 thread".

    Settings recorded before the sqrt routing existed (no "sqrt" key) keep their old label.
    """
    if s.get("cpu_capability") == "unknown" and not s.get("threads"):
        return NO_KERNELS
    threads = s.get("threads") or "?"
    sqrt = f"{s['sqrt']} sqrt, " if s.get("sqrt") == "exact" else ""
    return (f"{s.get('mode', '?')}: aten {s.get('cpu_capability', '?')}, mkl {s.get('mkl_branch', '?')}, "
            f"{sqrt}{threads} thread{'' if threads == 1 else 's'}")


NO_KERNELS = "none (torch not loaded: data statistics)"
PINNED_LABEL = label({"mode": "pinned", "cpu_capability": PINNED_CAPABILITY, "mkl_branch": PINNED_MKL_BRANCH,
                      "sqrt": "exact", "threads": 1})


# What repeats and what does not on GPU (details: egmf_core/checkpoint.py's docstring).
GPU_NONDETERMINISTIC = ("cuBLAS GEMM reduction splits (unless CUBLAS_WORKSPACE_CONFIG is pinned)",
                        "atomic adds in index_add_ / scatter_add_ / embedding backward",
                        "flash / memory-efficient SDPA backward", "bf16 autocast rounding that amplifies them")


def report_note(results) -> str:
    """The report header's "numerical settings" line for a tidy results frame (column "numerics").

    Says whether every run was made under the pins and names the other settings when not; for
    GPU runs, which kernels are non-deterministic (their numbers repeat statistically only).
    """
    if results.empty:
        return "no runs yet"
    if "numerics" not in results.columns:
        return "unrecorded (results written before numerics were recorded)"
    runs = results.drop_duplicates("run_id") if "run_id" in results.columns else results
    gpu = runs["device"].astype(str).str.startswith("cuda") if "device" in runs.columns else runs["numerics"] != runs["numerics"]
    parts = []
    if gpu.any():
        parts.append(f"{int(gpu.sum())} GPU run(s): statistically repeatable only; non-deterministic kernels: "
                     + "; ".join(GPU_NONDETERMINISTIC))
    cpu = runs[~gpu & (runs["numerics"].astype(str) != NO_KERNELS)]
    labels = cpu["numerics"].fillna("").astype(str).replace("", "unrecorded").value_counts()
    if list(labels.index) == [PINNED_LABEL]:
        parts.insert(0, f"{PINNED_LABEL} (all {len(cpu)} CPU runs: the same bits on any x86-64 CPU, see README)")
    elif len(labels):
        others = "; ".join(f"{n} run(s) {lab}" for lab, n in labels.items() if lab != PINNED_LABEL)
        parts.insert(0, f"**not all pinned** ({others}): such numbers differ from pinned runs' beyond the last "
                        f"bit (pinned: {PINNED_LABEL})")
    return ". ".join(parts) or NO_KERNELS
