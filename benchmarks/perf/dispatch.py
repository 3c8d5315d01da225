"""Operators dispatched and values read back per training step, through ``egmf_core.train.fit``.

``python benchmarks/perf/dispatch.py [--json PATH]`` trains each tiny twin for ``STEPS`` steps
on the synthetic MELD twin (no validation pass inside the window) under torch's profiler and
counts, per step: aten operators dispatched, and ``Tensor.item`` / ``Tensor.__bool__`` calls made
by egmf_core's own code (each one a host-device synchronisation on a GPU). It imports only
``egmf_core`` APIs that older revisions have too, and calls ``fit`` with whichever signature the
checkout has (older ones also took the tokenizer, spec, training labels and key metric), so the
same file measures a checkout of another revision (``PYTHONPATH=<old checkout> python benchmarks/perf/dispatch.py``): that is how
the before/after table in ``reports/smoke/step_dispatch.md`` was made. ``nox -s bench`` reports
the same counts in ``test_bench_step.py``'s ``extra_info``.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from egmf_core.twins import TWIN_NAMES

STEPS = 20


def measure(twin: str, steps: int = STEPS) -> dict[str, float]:
    """aten ops and egmf_core value reads per step of ``fit`` for one tiny twin (CPU, one thread):
    the difference between a fit of 2 x ``steps`` and one of ``steps`` steps, divided by ``steps``,
    so the final validation pass and the setup cancel out."""
    short, long = _fit_counts(twin, steps), _fit_counts(twin, 2 * steps)
    return {"aten_ops_per_step": (long[0] - short[0]) / steps,
            "host_reads_per_step": (long[1] - short[1]) / steps, "steps": steps}


def _fit_counts(twin: str, steps: int) -> tuple[int, int]:
    """(aten ops, egmf_core value reads) of one whole ``fit`` of ``steps`` steps."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from egmf_core.batching import PromptEncoder
    from egmf_core.config import RunConfig, apply_overrides
    from egmf_core.data.synth import generate
    from egmf_core.run import build_model
    from egmf_core.train import fit

    torch.set_num_threads(1)
    data = generate("meld", seed=0, size=64)
    cfg = apply_overrides(RunConfig(), {"model.backbone": twin, "data.name": "meld", "model.d_h": 64,
                                        "train.batch_size": 16, "train.max_steps": steps,
                                        "train.eval_every": 1000, "train.lr": 5e-3})
    model, tok, _ = build_model(cfg, data.audio_dim, data.vision_dim, device=torch.device("cpu"))
    encoder = PromptEncoder(tok, data.spec, cfg.model)
    enc = encoder.encode(data.train)
    valid = encoder.encode(data.valid.subset(range(4)))
    args, extra = (model, enc, valid, encoder, cfg.train), {}
    reads = [0]
    real_item, real_bool = torch.Tensor.item, torch.Tensor.__bool__

    def ours() -> bool:
        return "egmf_core" in traceback.extract_stack()[-3].filename

    def item(self):
        reads[0] += ours()
        return real_item(self)

    def as_bool(self):
        reads[0] += ours()
        return real_bool(self)

    torch.Tensor.item, torch.Tensor.__bool__ = item, as_bool
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fit(*args, seed=cfg.seed, **extra)
    finally:
        torch.Tensor.item, torch.Tensor.__bool__ = real_item, real_bool
    return sum(e.name.startswith("aten::") for e in prof.events()), reads[0]


def render_comparison(before: dict, after: dict, before_rev: str, after_rev: str) -> str:
    """The before/after table of two ``--json`` outputs (a pure function of them)."""
    lines = [f"# Dispatch per training step (smoke twins, CPU): {before_rev} -> {after_rev}", "",
             "Made by `benchmarks/perf/dispatch.py` on each revision (one thread, MELD twin, batch 16, the "
             f"difference of a {2 * STEPS}- and a {STEPS}-step fit). Host reads: `Tensor.item` / `__bool__` "
             "calls by egmf_core's own code, each a host-device synchronisation on a GPU.", "",
             "| twin | aten ops/step before | after | host reads/step before | after |", "|---|---|---|---|---|"]
    for twin in after:
        b, a = before[twin], after[twin]
        lines.append(f"| {twin} | {b['aten_ops_per_step']:,.0f} | {a['aten_ops_per_step']:,.0f} | "
                     f"{b['host_reads_per_step']:.2f} | {a['host_reads_per_step']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``--json OUT``: measure this checkout; ``--compare BEFORE AFTER BEFORE_REV AFTER_REV``: the table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--compare"]:
        before, after = (json.loads(Path(p).read_text()) for p in argv[1:3])
        print(render_comparison(before, after, argv[3], argv[4]), end="")
        return 0
    result = {twin: measure(twin) for twin in sorted(TWIN_NAMES)}
    text = json.dumps(result, indent=1)
    if argv[:1] == ["--json"]:
        Path(argv[1]).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
