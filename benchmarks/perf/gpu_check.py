"""``python -m benchmarks gpu-check``: build each backbone, train, evaluate, checkpoint; measure it all.

For each backbone: build it (full-size twin on the device, or the tiny twin), train ``--steps``
steps at the paper profile's batch and sequence shapes (MELD prompts, full-size synthetic
features), evaluate one batch by generation and by label scoring, save and resume a checkpoint.
Every step goes through the suite's own code (``egmf_core.run.build_model``, ``train.Trainer``,
``train.evaluate``, ``checkpoint.Checkpointer``), so a pass here means the paper profile's CUDA
path works. Measured per backbone: parameters, bf16 weight memory, build time, step time (median
after warm-up, CUDA events), tokens/s, FLOPs per step (``torch.utils.flop_counter``), achieved
TFLOP/s and MFU against the bf16 peak measured in the same run (a large matmul; datasheet beside
it), peak memory, kernel launches and host syncs per step (torch profiler), aggregate tokens/s
of K = 1..4 runs sharing the GPU (K processes; ``--jobs-per-gpu``), and step time with
``train.compile`` on.

``--device meta`` needs no GPU: parameter counts and weight memory of the real architectures.
Writes ``reports/<profile>/gpu_check.md`` (``--report``) and a JSON (``--json``).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.perf.check_setup import CHECK_DATASET, LAUNCH_EVENTS, SYNC_EVENTS, check_config
from benchmarks.perf.check_setup import free_device as _free
from benchmarks.perf.overhead import sync
from egmf_core.paths import FAMILIES


@dataclass
class CheckOptions:
    """What ``gpu-check`` runs (the CLI's flags)."""

    size: str = "tiny"  # "full" (published architectures) | "tiny" (the smoke twins)
    device: str = "cpu"  # "cuda" | "cpu" | "meta"
    backbones: tuple[str, ...] = FAMILIES
    steps: int = 10  # timed training steps per backbone
    warmup: int = 3
    samples: int = 64  # synthetic training samples (full shapes for --size full)
    jobs_per_gpu: tuple[int, ...] = (1, 2, 3, 4)
    groups: tuple[int, ...] = ()  # run-group sizes to measure (gpu_check_groups); () skips the phase
    compile: bool | None = None  # None: on CUDA only
    budget_s: float = 330.0  # optional phases (packing, compile) are skipped past this
    json_path: Path | None = None
    report_path: Path | None = None
    t_start: float = field(default_factory=time.monotonic)

    @property
    def profile(self) -> str:
        return "scale" if self.size == "full" else "smoke"

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t_start)


# ---- one backbone -------------------------------------------------------------------------------

def build_check_model(family: str, opts: CheckOptions):
    """(model, encoder, encoded train split, config, build seconds, BackboneInfo)."""
    import torch

    from egmf_core.batching import PromptEncoder
    from egmf_core.data.synth import generate
    from egmf_core.run import build_model, seed_everything

    cfg = check_config(family, opts.size)
    data = generate(CHECK_DATASET, seed=0, size=opts.samples, full=opts.size == "full")
    seed_everything(cfg.seed)
    device = torch.device(opts.device)
    t0 = time.perf_counter()
    model, tokenizer, info = build_model(cfg, data.audio_dim, data.vision_dim, device=device)
    sync(device)
    build_s = time.perf_counter() - t0
    encoder = PromptEncoder(tokenizer, data.spec, cfg.model)
    return model, encoder, tokenizer, data, cfg, build_s, info


def timed_steps(trainer, batch, steps: int, device) -> list[float]:
    """Seconds per training step, each measured alone (CUDA events; perf_counter on CPU)."""
    import torch

    times = []
    for _ in range(steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            trainer.step(batch)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            trainer.step(batch)
            times.append(time.perf_counter() - t0)
    return times


def count_flops(trainer, batch) -> int:
    """FLOPs of one training step (matmuls and attention, forward and backward) by torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        trainer.step(batch)
    return int(counter.get_total_flops())


def profile_step(trainer, batch, device) -> dict[str, int]:
    """Kernel launches, host syncs and aten operators dispatched in one training step."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        trainer.step(batch)
        sync(device)
    names = [e.name for e in prof.events()]
    del torch
    out = {"aten_ops_per_step": sum(n.startswith("aten::") for n in names),
           "value_reads_per_step": sum(n == "aten::_local_scalar_dense" for n in names)}
    if device.type == "cuda":  # the trailing synchronize above is the measurement's, not the step's
        out["launches_per_step"] = sum(n in LAUNCH_EVENTS for n in names)
        out["host_syncs_per_step"] = max(sum(n in SYNC_EVENTS for n in names) - 1, 0)
    return out


def eval_timings(model, encoder, data, cfg) -> dict[str, float]:
    """Seconds to answer one evaluation batch by generation and by label scoring."""
    import numpy as np

    from egmf_core.train import evaluate

    enc = encoder.encode(data.valid.subset(np.arange(min(len(data.valid), cfg.train.eval_batch_size))))
    out = {}
    for mode in ("generate", "score"):
        evaluate(model, enc, encoder, cfg.train, mode=mode, train_labels=data.train.labels)
        t0 = time.perf_counter()
        res = evaluate(model, enc, encoder, cfg.train, mode=mode, train_labels=data.train.labels)
        out[f"eval_{mode}_s_per_batch"] = time.perf_counter() - t0
        out[f"eval_{mode}_invalid_rate"] = res.invalid_rate
    out["eval_batch_size"] = len(enc)
    return out


def checkpoint_roundtrip(model, trainer) -> dict[str, Any]:
    """Save the training state, perturb the weights, resume: the weights must come back exactly."""
    import torch

    from egmf_core.checkpoint import Checkpointer, FitState, trainable_tensors

    gen = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Checkpointer(tmp, every=1, tag="gpu-check", log=lambda line: None)
        before = {n: t.detach().clone() for n, t in trainable_tensors(model).items()}
        t0 = time.perf_counter()
        ckpt.save(model, trainer.opt, trainer.sched, gen, FitState(step=1))
        save_s = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
        with torch.no_grad():
            for t in trainable_tensors(model).values():
                t.add_(1.0)
        t0 = time.perf_counter()
        loop = ckpt.resume(model, trainer.opt, trainer.sched, gen)
        resume_s = time.perf_counter() - t0
        exact = loop is not None and all(torch.equal(before[n], t) for n, t in trainable_tensors(model).items())
    return {"checkpoint_save_s": save_s, "checkpoint_resume_s": resume_s, "checkpoint_mib": size / 2**20,
            "checkpoint_resumed_exactly": bool(exact)}


def measure_backbone(family: str, opts: CheckOptions, peak_tflops: float | None) -> dict[str, Any]:
    """Every measurement of one backbone (see the module docstring)."""
    import torch

    from egmf_core.batching import collate
    from egmf_core.train import Trainer

    if opts.device == "meta":
        return meta_counts(family)
    model, encoder, _, data, cfg, build_s, info = build_check_model(family, opts)
    device = torch.device(opts.device)
    enc = encoder.encode(data.train)
    batch = collate(enc, range(cfg.train.batch_size), with_answer=True)
    trainer = Trainer.build(model, cfg.train, total_steps=10_000)
    out: dict[str, Any] = {"params": info.n_params, "weight_gib": _weight_bytes(model.llm) / 2**30,
                           "build_s": build_s, "batch_size": cfg.train.batch_size,
                           "tokens_per_step": int(batch["attention_mask"].sum()),
                           "seq_len": int(batch["input_ids"].shape[1]), "dtype": info.dtype}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses = [float(trainer.step(batch)) for _ in range(opts.warmup)]
    times = timed_steps(trainer, batch, opts.steps, device)
    losses.append(float(trainer.step(batch)))
    out.update(step_time_s=statistics.median(times), losses=losses)
    out["tokens_per_s"] = out["tokens_per_step"] / out["step_time_s"]
    out["peak_mem_gib"] = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0) / 2**30
    _phase(out, "flops", lambda: {"flops_per_step": count_flops(trainer, batch)})
    if "flops_per_step" in out:
        out["tflops"] = out["flops_per_step"] / out["step_time_s"] / 1e12
        out["mfu"] = out["tflops"] / peak_tflops if peak_tflops else None
    _phase(out, "profile", lambda: profile_step(trainer, batch, device))
    _phase(out, "eval", lambda: eval_timings(model, encoder, data, cfg))
    _phase(out, "checkpoint", lambda: checkpoint_roundtrip(model, trainer))
    single = {"1": out["tokens_per_step"] * len(times) / sum(times)}
    out["jobs_per_gpu"] = dict(single)
    do_compile = opts.compile if opts.compile is not None else device.type == "cuda"
    if device.type == "cuda" and len(opts.jobs_per_gpu) > 1 and opts.left() > 60:
        _phase(out, "packing", lambda: _merge_packing(single, packed_throughput(
            family, dataclasses.replace(opts, compile=do_compile), trainer, batch, model, cfg, device)))
    if do_compile and "compile" not in out and opts.left() > 45:
        _phase(out, "compile", lambda: {"compile": _public(compiled_step(model, cfg, batch, opts, device))})
    elif do_compile and "compile" not in out:
        out["compile"] = {"skipped": "time budget"}
    best_of(out, peak_tflops)
    return out  # the model is freed by the caller (_free), once this frame is gone


def _merge_packing(single: dict[str, float], packed: dict[str, Any]) -> dict[str, Any]:
    packed["jobs_per_gpu"] = {**single, **packed["jobs_per_gpu"]}
    if "compile" in packed:
        packed["compile"] = _public(packed["compile"])
    return packed


def _public(compiled: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in compiled.items() if k != "trainer"}


def best_of(out: dict[str, Any], peak_tflops: float | None) -> None:
    """The best K (and whether compiled) by aggregate tokens/s, and its aggregate MFU."""
    options = {(int(k), False): v for k, v in out.get("jobs_per_gpu", {}).items() if isinstance(v, (int, float))}
    options.update({(int(k), True): v for k, v in out.get("jobs_per_gpu_compiled", {}).items()
                    if isinstance(v, (int, float))})
    (k, compiled), rate = max(options.items(), key=lambda kv: kv[1])
    out["best_jobs_per_gpu"], out["best_compiled"], out["best_tokens_per_s"] = k, compiled, rate
    if "flops_per_step" in out and peak_tflops:
        out["mfu_best_jobs"] = out["flops_per_step"] / out["tokens_per_step"] * rate / 1e12 / peak_tflops


def _phase(out: dict[str, Any], name: str, fn) -> None:
    """Run one optional measurement; its failure is recorded under ``errors``, the rest goes on."""
    try:
        out.update(fn())
    except Exception as e:
        out.setdefault("errors", {})[name] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def compiled_step(model, cfg, batch, opts: CheckOptions, device) -> dict[str, Any]:
    """Step time with ``train.compile`` (decoder layers compiled in place; compile time apart)."""
    from egmf_core.train import Trainer

    t0 = time.perf_counter()
    trainer = Trainer.build(model, dataclasses.replace(cfg.train, compile=True), total_steps=10_000)
    for _ in range(2):
        trainer.step(batch)
    sync(device)
    compile_s = time.perf_counter() - t0
    times = timed_steps(trainer, batch, opts.steps, device)
    tokens = int(batch["attention_mask"].sum())
    return {"step_time_s": statistics.median(times), "compile_s": compile_s,
            "tokens_per_s": tokens * len(times) / sum(times), "trainer": trainer}


def meta_counts(family: str) -> dict[str, Any]:
    """Parameters and bf16 weight memory of the published architecture (no storage allocated)."""
    import torch

    from egmf_core.full_twins import build_full_twin

    _, built = build_full_twin(family, device="meta", dtype=torch.bfloat16)
    return {"params": built.n_params, "weight_gib": built.weight_bytes / 2**30, "build_s": built.build_s}


# ---- K runs on one GPU --------------------------------------------------------------------------

def packed_throughput(family: str, opts: CheckOptions, trainer, batch, model, cfg, device) -> dict[str, Any]:
    """Aggregate tokens/s of K processes training at once on this GPU, uncompiled and compiled.

    K - 1 worker processes build the same model; this process is the K-th. Each phase starts
    them together (a file per phase), each times ``--steps`` steps, and the aggregate is all
    their tokens over the span from the first start to the last end. Then every process compiles
    its decoder layers in place (``train.compile``) and the phases run again. Returns
    ``{"jobs_per_gpu": {K: tokens/s}, "compile": {...}, "jobs_per_gpu_compiled": {K: tokens/s}}``.
    """
    ks = sorted(k for k in opts.jobs_per_gpu if k > 1)
    out: dict[str, Any] = {"jobs_per_gpu": {}, "jobs_per_gpu_compiled": {}}
    compile_too = opts.compile if opts.compile is not None else True
    with tempfile.TemporaryDirectory() as sync_dir:
        signals = Path(sync_dir)
        procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.perf.gpu_check", "--worker", family,
                                   "--size", opts.size, "--steps", str(opts.steps), "--sync-dir", sync_dir,
                                   "--index", str(i + 1), "--samples", str(opts.samples), "--device", opts.device])
                 for i in range(max(ks) - 1)]
        try:
            out["jobs_per_gpu"] = _packed_phases(signals, "", ks, opts, trainer, batch, procs)
            if compile_too and opts.left() > 60:
                (signals / "compile").touch()  # the workers compile while this process does
                out["compile"] = compiled_step(model, cfg, batch, opts, device)
                trainer = out["compile"].pop("trainer")
                out["jobs_per_gpu_compiled"] = {"1": out["compile"]["tokens_per_s"]}
                out["jobs_per_gpu_compiled"].update(_packed_phases(signals, "c", ks, opts, trainer, batch, procs))
        finally:
            (signals / "exit").touch()
            for p in procs:
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
    return out


def _packed_phases(signals: Path, tag: str, ks: list[int], opts: CheckOptions, trainer, batch,
                   procs: list[subprocess.Popen]) -> dict[str, float]:
    """One round of packing phases (K in ``ks``) once every worker reported ready for the round."""
    device = torch_device(opts.device)
    out: dict[str, float] = {}
    if not _wait_for(signals, [f"ready{tag}-{i + 1}" for i in range(len(procs))], min(240.0, opts.left()), procs):
        raise RuntimeError("packing workers did not get ready (see their output)")
    for k in ks:
        (signals / f"go{tag}-{k}").touch()
        start = time.time()
        for _ in range(opts.steps):
            trainer.step(batch)
        sync(device)
        spans = [(start, time.time())]
        if not _wait_for(signals, [f"done{tag}-{k}-{i}" for i in range(1, k)], 120.0, procs):
            raise RuntimeError(f"packing workers did not finish phase K={k}{tag}")
        spans += [tuple(json.loads((signals / f"done{tag}-{k}-{i}").read_text())) for i in range(1, k)]
        wall = max(e for _, e in spans) - min(s for s, _ in spans)
        out[str(k)] = k * opts.steps * int(batch["attention_mask"].sum()) / wall
    return out


def worker_main(family: str, size: str, steps: int, sync_dir: str, index: int, samples: int,
                device: str = "cuda") -> int:
    """A packing worker: build, warm up, time its phases; on the "compile" signal, compile and repeat."""
    from egmf_core.batching import collate
    from egmf_core.train import Trainer

    opts = CheckOptions(size=size, device=device, steps=steps, samples=samples)
    dev = torch_device(device)
    model, encoder, _, data, cfg, _, _ = build_check_model(family, opts)
    enc = encoder.encode(data.train)
    batch = collate(enc, range(cfg.train.batch_size), with_answer=True)
    signals = Path(sync_dir)
    for tag, compiled in (("", False), ("c", True)):
        train_cfg = dataclasses.replace(cfg.train, compile=compiled)
        trainer = Trainer.build(model, train_cfg, total_steps=10_000)
        for _ in range(opts.warmup):
            trainer.step(batch)
        sync(dev)
        (signals / f"ready{tag}-{index}").touch()
        k = index + 1  # the first phase this worker joins
        while not (signals / "exit").exists() and not (not compiled and (signals / "compile").exists()):
            if (signals / f"go{tag}-{k}").exists():
                start = time.time()
                for _ in range(steps):
                    trainer.step(batch)
                sync(dev)
                (signals / f"done{tag}-{k}-{index}").write_text(json.dumps([start, time.time()]))
                k += 1
            time.sleep(0.01)
        if (signals / "exit").exists():
            break
    return 0


def _wait_for(folder: Path, names: list[str], timeout: float, procs: list[subprocess.Popen]) -> bool:
    """Wait until every file in ``names`` exists; False on timeout or when a worker has died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all((folder / n).exists() for n in names):
            return True
        if any(p.poll() is not None for p in procs):
            return False
        time.sleep(0.05)
    return False


# ---- the device ---------------------------------------------------------------------------------

def measured_peak_tflops(device) -> float | None:
    """bf16 dense matmul throughput of this GPU: 8192^3, 20 times, after warm-up."""
    import torch

    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ b
    end.record()
    end.synchronize()
    return 20 * 2 * 8192**3 / (start.elapsed_time(end) / 1e3) / 1e12


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def datasheet_tflops(name: str) -> float | None:
    """The bf16 dense peak of the planner's GPU table entry whose model this device is."""
    from benchmarks.execution.planner import GPUS

    return next((g.bf16_tflops for key, g in GPUS.items() if key.split("-")[0].upper() in name.upper()), None)


def torch_device(name: str):
    import torch

    return torch.device(name)


def _weight_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for n, p in module.named_parameters() if "lora_" not in n)


# ---- the whole check ----------------------------------------------------------------------------

def run_gpu_check(opts: CheckOptions) -> dict[str, Any]:
    """Measure every backbone asked; write the JSON after each one (a timeout keeps what was done)."""
    import torch

    from benchmarks.execution.provenance import package_versions, process_git_revision

    device = torch.device(opts.device)
    peak = measured_peak_tflops(device)
    name = device_name(device)
    result: dict[str, Any] = {
        "device": name, "size": opts.size, "profile": opts.profile, "steps": opts.steps,
        "peak_tflops_measured": peak, "peak_tflops_datasheet": datasheet_tflops(name),
        "versions": package_versions(), "git_revision": process_git_revision(), "backbones": {},
    }
    for family in opts.backbones:
        t0 = time.monotonic()
        try:
            result["backbones"][family] = measure_backbone(family, opts, peak)
        except Exception as e:  # one backbone's failure is a finding; the others still run
            result["backbones"][family] = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"}
        _free(device)
        if opts.groups and "error" not in result["backbones"][family]:  # the single run's model is freed first
            from benchmarks.perf.gpu_check_groups import measure_groups

            _phase(result["backbones"][family], "groups", lambda: measure_groups(family, opts, peak))
            _free(device)
        result["backbones"][family]["check_s"] = time.monotonic() - t0
        write_outputs(result, opts)
    result["total_s"] = time.monotonic() - opts.t_start
    write_outputs(result, opts)
    return result


def write_outputs(result: dict[str, Any], opts: CheckOptions) -> None:
    from benchmarks.perf.gpu_check_report import render_gpu_check
    from egmf_core.atomic import atomic_write_bytes

    if opts.json_path is not None:
        atomic_write_bytes(opts.json_path, (json.dumps(result, indent=1, default=float) + "\n").encode())
    if opts.report_path is not None:
        atomic_write_bytes(opts.report_path, render_gpu_check(result).encode())


def failed_backbones(result: dict[str, Any]) -> list[str]:
    """Backbones whose check raised, or whose training loss was not finite."""
    import math

    bad = []
    for family, r in result["backbones"].items():
        losses = r.get("losses", [])
        if "error" in r or any(not math.isfinite(x) for x in losses):
            bad.append(family)
        elif result["size"] == "tiny" and len(losses) >= 2 and not losses[-1] < losses[0]:
            bad.append(family)  # the same batch at the smoke lr must be learned; at the paper lr 14 steps are noise
        elif r.get("checkpoint_resumed_exactly") is False or r.get("errors") or r.get("grouped_equals_single") is False:
            bad.append(family)
    return bad


def main(argv: list[str] | None = None) -> int:
    """Worker entry point (``python -m benchmarks.perf.gpu_check --worker ...``) for packing."""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--worker", required=True)
    p.add_argument("--size", default="full")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--sync-dir", required=True)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--device", default="cuda")
    a = p.parse_args(argv)
    return worker_main(a.worker, a.size, a.steps, a.sync_dir, a.index, a.samples, a.device)


if __name__ == "__main__":
    raise SystemExit(main())
