"""The gpu-check report: a pure function of its JSON (no torch)."""

from __future__ import annotations

from typing import Any

MFU_GOAL = 0.40  # issue 10: training-step MFU of the measured bf16 peak, aggregated over runs sharing a GPU


def _num(value: Any, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def params_text(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def _packing(jobs: dict[str, Any]) -> str:
    return ", ".join(f"K={k}: {v:,.0f}" for k, v in sorted(jobs.items()) if isinstance(v, (int, float)))


def _row(family: str, r: dict[str, Any]) -> list[str]:
    if "error" in r:
        return [family, f"failed: {r['error']}"] + [""] * 11
    packing = _packing(r.get("jobs_per_gpu", {}))
    if r.get("jobs_per_gpu_compiled"):
        packing += "; compiled: " + _packing(r["jobs_per_gpu_compiled"])
    comp = r.get("compile", {})
    comp_text = (f"{comp['step_time_s'] * 1e3:.1f} ms (compile {comp['compile_s']:.0f} s)"
                 if "step_time_s" in comp else comp.get("skipped", "off"))
    return [
        family, params_text(r["params"]), _num(r.get("weight_gib"), ".1f"), _num(r.get("build_s"), ".1f"),
        _num(r.get("step_time_s", 0) * 1e3 if "step_time_s" in r else None, ".1f"),
        _num(r.get("tokens_per_s"), ",.0f"), _num(r.get("tflops"), ".1f"),
        _num(None if r.get("mfu") is None else 100 * r["mfu"], ".1f"),
        _num(r.get("peak_mem_gib"), ".1f"), str(r.get("launches_per_step", "n/a")),
        str(r.get("host_syncs_per_step", "n/a")), packing or "n/a", comp_text,
    ]


def render_gpu_check(result: dict[str, Any]) -> str:
    """Markdown: the device and its peak, one row per backbone, the evaluation and checkpoint lines."""
    peak, sheet = result.get("peak_tflops_measured"), result.get("peak_tflops_datasheet")
    lines = [
        f"# GPU check ({result['profile']} profile, {result['size']} size) on {result['device']}",
        "",
        f"git revision {result.get('git_revision', 'unknown')}; versions: "
        + ", ".join(f"{k} {v}" for k, v in sorted(result.get("versions", {}).items())),
        "",
        f"bf16 peak measured here (8192^3 matmul): {_num(peak, '.0f')} TFLOP/s; datasheet dense: "
        f"{_num(sheet, '.0f')} TFLOP/s. MFU below is against the measured peak. Random weights: only the "
        "weights differ from a real run; the losses show the step trains, not what it learns.",
        "",
        "| backbone | params | bf16 weights GiB | build s | step ms (median) | tokens/s | TFLOP/s | MFU % | "
        "peak mem GiB | kernel launches/step | host syncs/step (CUDA) | aggregate tokens/s, K runs per GPU | compiled step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    backbones = result.get("backbones", {})
    lines += ["| " + " | ".join(_row(f, r)) + " |" for f, r in backbones.items()]
    lines += ["", "## Per backbone", ""]
    for family, r in backbones.items():
        if "error" in r or "step_time_s" not in r:
            continue
        best = f"{r.get('best_jobs_per_gpu')}{' (compiled)' if r.get('best_compiled') else ''}"
        mfu_best = r.get("mfu_best_jobs")
        goal = "" if mfu_best is None else (" (goal {:.0f}%: {})".format(
            100 * MFU_GOAL, "met" if mfu_best >= MFU_GOAL else "not met"))
        lines += [
            f"- **{family}**: batch {r['batch_size']} x {r['seq_len']} tokens ({r['tokens_per_step']} real), "
            f"{r['flops_per_step'] / 1e9:,.1f} GFLOP per step; best K = {best} runs per GPU, aggregate MFU "
            f"{_num(None if mfu_best is None else 100 * mfu_best, '.1f')}%{goal}; "
            f"{r.get('aten_ops_per_step', 'n/a')} aten ops and {r.get('value_reads_per_step', 'n/a')} tensor reads "
            "(`.item()`, incl. the optimizer's CPU step counters) per step; "
            f"losses {', '.join(f'{x:.3f}' for x in r['losses'])}; "
            f"eval batch of {r.get('eval_batch_size')}: generation {_num(r.get('eval_generate_s_per_batch'), '.2f')} s, "
            f"label scoring {_num(r.get('eval_score_s_per_batch'), '.2f')} s; checkpoint "
            f"{_num(r.get('checkpoint_mib'), '.1f')} MiB saved in {_num(r.get('checkpoint_save_s'), '.2f')} s, "
            f"resumed in {_num(r.get('checkpoint_resume_s'), '.2f')} s, exactly: {r.get('checkpoint_resumed_exactly')}.",
        ]
    lines += _groups_section(backbones)
    for family, r in backbones.items():
        for phase, err in (r.get("errors") or {}).items():
            lines.append(f"- **{family}**: {phase} failed: {err}")
    if "total_s" in result:
        lines += ["", f"Whole check: {result['total_s']:.0f} s."]
    return "\n".join(lines) + "\n"


def _groups_section(backbones: dict[str, Any]) -> list[str]:
    """Run groups (``--group``): one row per backbone and group size, and the equivalence check."""
    rows = [(f, k, g) for f, r in backbones.items() for k, g in sorted((r.get("groups") or {}).items(),
                                                                        key=lambda kv: int(kv[0]))]
    if not rows:
        return []
    out = ["", "## Run groups: K runs over one copy of the backbone", "",
           "| backbone | K | step ms (median) | aggregate tokens/s | aggregate TFLOP/s | aggregate_mfu % | "
           "peak mem GiB | launches/step (CUDA) | aten ops/step |", "|---|---|---|---|---|---|---|---|---|"]
    for family, k, g in rows:
        if "step_time_s" not in g:
            out.append(f"| {family} | {k} | {g.get('error') or g.get('skipped')} | | | | | | |")
            continue
        mfu = g.get("aggregate_mfu")
        out.append(f"| {family} | {k} | {1e3 * g['step_time_s']:.1f} | {g['aggregate_tokens_per_s']:,.0f} | "
                   f"{g['aggregate_tflops']:.2f} | {_num(None if mfu is None else 100 * mfu, '.1f')} | "
                   f"{g['peak_mem_gib']:.1f} | {g.get('launches_per_step', 'n/a')} | {g['aten_ops_per_step']} |")
    out.append("")
    for family, r in backbones.items():
        if "grouped_equals_single" in r:
            out.append(f"- **{family}**: best K = {r.get('best_group')} "
                       f"({r.get('best_group_tokens_per_s', 0):,.0f} tokens/s); one grouped step of "
                       f"{r['equivalence_k']} runs vs each run stepped alone: largest parameter difference "
                       f"{r['equivalence_max_rel_diff']:.1e} of the step's largest change (bar "
                       f"{r['equivalence_tolerance']:.0e}): {'equal' if r['grouped_equals_single'] else '**NOT equal**'}.")
    return out
