"""gpu-check's run-group phase (``--group 1,2,4,...``): K runs over one backbone, one step each.

For each group size K it builds K runs (seeds 1..K, the check's config) around ONE copy of the
backbone (``egmf_core.group``) and measures a grouped training step: its time (median of
``--steps``), the tokens all K runs train on, aggregate tokens/s, FLOPs (torch's counter) and
``aggregate_mfu`` (against the measured bf16 peak; None on CPU, which has no measured peak),
peak memory and, on CUDA, kernel launches per step (aten operators on CPU).

Equivalence: for the largest K it measures (at most EQUIVALENCE_K), one grouped step is compared
with the same K runs each stepped alone (fresh runs, same seeds, same batches): the largest
difference in any trainable parameter after the step, relative to the largest change the step
made. bf16 on a GPU rounds the grouped (larger) GEMMs differently, so the bar is BF16_TOLERANCE
there and FP32_TOLERANCE in fp32.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

EQUIVALENCE_K = 4
BF16_TOLERANCE = 5e-2  # relative to the step's largest parameter change (bf16 has 8 mantissa bits)
FP32_TOLERANCE = 1e-4


def shared_backbone(family: str, opts):
    """The check's config and data, and the group's shared backbone (no data files needed)."""
    import torch

    from benchmarks.perf.check_setup import CHECK_DATASET, check_config
    from egmf_core.backbones import build_backbone
    from egmf_core.config import apply_overrides
    from egmf_core.data.synth import generate
    from egmf_core.group import SharedBackbone
    from egmf_core.lora import install_grouped_lora

    cfg = apply_overrides(check_config(family, opts.size), {"train.max_steps": 100_000, "train.eval_every": 100_000,
                                                            "train.warmup_ratio": 0.0})  # the first step moves the weights
    data = generate(CHECK_DATASET, seed=0, size=opts.samples, full=opts.size == "full")
    device = torch.device(opts.device)
    llm, tokenizer, info = build_backbone(cfg.model, device=device)
    shared = SharedBackbone(llm, install_grouped_lora(llm, []), tokenizer, info, data, ".", data.train, device)
    return cfg, shared


def new_group(shared, cfg, k: int, *, first_seed: int = 1):
    from dataclasses import replace

    from egmf_core.group import GroupItem, RunGroup, build_run

    group = RunGroup(shared, k, "longest", None, None)
    group.runs = [build_run(shared, GroupItem(replace(cfg, seed=first_seed + i), i, None, i)) for i in range(k)]
    return group


def group_batches(group):
    from egmf_core.batching import collate

    return [collate(r.loop.train, r.loop.next_indices(), with_answer=True) for r in group.runs]


def grouped_step(group, batches) -> list[float]:
    """One grouped optimizer step on the given batches (as RunGroup.train_step, batches fixed)."""
    import torch

    from egmf_core.group import grouped_loss

    losses = grouped_loss(group, batches)
    for r in group.runs:
        r.loop.trainer.opt.zero_grad(set_to_none=True)
    torch.stack(losses).sum().backward()
    for r in group.runs:
        r.loop.trainer.update()
    return [float(x) for x in losses]


def measure_group(shared, cfg, k: int, opts, peak_tflops: float | None) -> dict[str, Any]:
    """Step time, aggregate tokens/s and MFU, memory and launches for a group of k runs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.perf.check_setup import LAUNCH_EVENTS
    from benchmarks.perf.overhead import sync

    device = shared.device
    group = new_group(shared, cfg, k)
    batches = group_batches(group)  # the same k batches every step: a steady shape, as the single check
    tokens = int(sum(int(b["attention_mask"].sum()) for b in batches))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses = [grouped_step(group, batches) for _ in range(opts.warmup)]
    times = []
    for _ in range(opts.steps):
        sync(device)
        t0 = time.perf_counter()
        grouped_step(group, batches)
        sync(device)
        times.append(time.perf_counter() - t0)
    losses.append(grouped_step(group, batches))
    with FlopCounterMode(display=False) as counter:
        grouped_step(group, batches)
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        grouped_step(group, batches)
        sync(device)
    names = [e.name for e in prof.events()]
    step_s = statistics.median(times)
    flops = int(counter.get_total_flops())
    out = {"runs": k, "step_time_s": step_s, "tokens_per_step": tokens, "aggregate_tokens_per_s": tokens / step_s,
           "flops_per_step": flops, "aggregate_tflops": flops / step_s / 1e12,
           "aggregate_mfu": flops / step_s / 1e12 / peak_tflops if peak_tflops else None,
           "peak_mem_gib": (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0) / 2**30,
           "aten_ops_per_step": sum(n.startswith("aten::") for n in names),
           "first_losses": losses[0], "last_losses": losses[-1]}
    if device.type == "cuda":
        out["launches_per_step"] = sum(n in LAUNCH_EVENTS for n in names)
    del group
    return out


def grouped_equals_single(shared, cfg, k: int) -> dict[str, Any]:
    """One grouped step of k runs against the same k runs each stepped alone (same seeds, same batches)."""
    group = new_group(shared, cfg, k)
    batches = group_batches(group)
    before = [_trainable(r) for r in group.runs]
    grouped_step(group, batches)
    grouped = [_trainable(r) for r in group.runs]
    worst, change = 0.0, 0.0
    for i in range(k):
        alone = new_group(shared, cfg, 1, first_seed=1 + i)
        grouped_step(alone, [batches[i]])
        single = _trainable(alone.runs[0])
        for name, p0 in before[i].items():
            change = max(change, float((grouped[i][name] - p0).abs().max()))
            worst = max(worst, float((grouped[i][name] - single[name]).abs().max()))
        del alone
    bf16 = shared.device.type == "cuda" and (cfg.train.mixed_precision != "no" or "bfloat16" in shared.info.dtype)
    tolerance = BF16_TOLERANCE if bf16 else FP32_TOLERANCE
    rel = worst / change if change > 0 else float("inf")
    return {"equivalence_k": k, "equivalence_max_rel_diff": rel, "equivalence_tolerance": tolerance,
            "grouped_equals_single": bool(rel <= tolerance)}


def _trainable(run) -> dict[str, Any]:
    return {n: p.detach().float().clone() for n, p in run.model.named_parameters() if p.requires_grad}


def measure_groups(family: str, opts, peak_tflops: float | None) -> dict[str, Any]:
    """``groups``: per K the measurements above; ``best_group`` by aggregate tokens/s; the equivalence check."""
    from benchmarks.perf.check_setup import free_device as _free

    cfg, shared = shared_backbone(family, opts)
    out: dict[str, Any] = {"groups": {}}
    for k in opts.groups:
        if k > 1 and opts.left() < 30:
            out["groups"][str(k)] = {"skipped": "time budget"}
            continue
        try:
            out["groups"][str(k)] = measure_group(shared, cfg, k, opts, peak_tflops)
        except Exception as e:  # e.g. out of memory at a large K: a finding, the smaller ones stand
            out["groups"][str(k)] = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
            _free(shared.device)
    measured = {int(k): g for k, g in out["groups"].items() if "aggregate_tokens_per_s" in g}
    if measured:
        best = max(measured, key=lambda k: measured[k]["aggregate_tokens_per_s"])
        out.update(best_group=best, best_group_tokens_per_s=measured[best]["aggregate_tokens_per_s"],
                   best_group_mfu=measured[best]["aggregate_mfu"])
    ks = [k for k in measured if 1 < k <= EQUIVALENCE_K]
    if ks:
        out.update(grouped_equals_single(shared, cfg, max(ks)))
    return out
