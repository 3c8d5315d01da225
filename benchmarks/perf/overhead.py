"""EGMF's own modules against the frozen backbone at paper scale: their share of one training step.

    python -m benchmarks.perf.overhead [--backbones llama3,glm3,glm4] [--batch 8] [--tokens 120]
        [--repeats 2] [--device cpu] [--threads N] [--out reports/smoke/cost.json]

Two estimates, printed side by side and recorded in ``cost.json`` / ``cost.md``:

1. **Timed.** One real decoder layer of each paper backbone (``LlamaDecoderLayer`` /
   ``GlmDecoderLayer`` built from the 8B / 6B / 9B dimensions, random weights, frozen) runs
   forward + backward on ``batch x tokens`` hidden states that require grad, as in LoRA training
   (no weight gradients, every activation gradient). Its median time times the depth (32 / 28 /
   40) is the backbone's step; EGMF's modules (``EGMF.fuse`` at ModelConfig's defaults, d_h 256,
   on a MOSEI batch at the full lengths 50 / 500 / 375) run forward + backward on the same
   machine. The backbone estimate leaves out the embedding, the LM head, LoRA and the optimizer,
   so it is a lower bound and EGMF's share an upper bound.
2. **Counted (FLOPs).** Analytic formulas (``layer_flops``, ``lm_head_flops``, ``egmf_flops``) for
   the whole step: every decoder layer, the LM head over all positions, LoRA r=8 on every
   targeted projection, and EGMF; backward = forward for frozen matmuls (input gradient only),
   2x forward for trained ones. ``torch.utils.flop_counter`` counts one real pass of a layer and
   of EGMF as a check of the formulas (it does not see CPU attention kernels, about 1%).

On a GPU the picture can differ: EGMF launches some 200 small kernels per step, which cost
microseconds each whatever their size; run this script with ``--device cuda`` there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from egmf_core.config import ModelConfig

DEFAULT_OUT = Path("reports") / "smoke" / "cost.json"
STEP_BATCH = 8  # [P] batch 8
STEP_TOKENS = 120  # [C] a MOSEI prompt: ~20 template + 4 pseudo + <=50 utterance + ~20 task + answer
MOSEI_LENGTHS = (50, 500, 375)  # text, audio, visual maxima of CMU-MOSEI unaligned_50 (datasets.md)
MOSEI_DIMS = (74, 35)  # d_a (COVAREP), d_v (Facet)
LORA_R = 8  # [P]


@dataclass(frozen=True)
class PaperBackbone:
    """The dimensions of one paper backbone that set the cost of a training step."""

    name: str
    layer_class: str  # the transformers decoder layer this family uses
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    qkv_bias: bool

    @property
    def layer_key(self) -> tuple:
        """Backbones with equal keys have identical decoder layers (timed once)."""
        return (self.layer_class, self.hidden, self.heads, self.kv_heads, self.head_dim, self.intermediate,
                self.qkv_bias)


PAPER_BACKBONES: dict[str, PaperBackbone] = {
    # Meta-Llama-3-8B-Instruct config.json
    "llama3": PaperBackbone("llama3", "LlamaDecoderLayer", 32, 4096, 32, 8, 128, 14336, 128256, False),
    # ChatGLM3-6B config.json: multi_query_group_num 2, ffn_hidden_size 13696, padded vocab 65024
    "glm3": PaperBackbone("glm3", "GlmDecoderLayer", 28, 4096, 32, 2, 128, 13696, 65024, True),
    # GLM-4-9B (glm-4-9b-hf, GlmConfig's defaults)
    "glm4": PaperBackbone("glm4", "GlmDecoderLayer", 40, 4096, 32, 2, 128, 13696, 151552, True),
}


# ---- building the pieces --------------------------------------------------------------------------

def decoder_layer(spec: PaperBackbone, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """One frozen decoder layer of ``spec`` (random weights, float32) and its rotary embedding."""
    if spec.layer_class == "LlamaDecoderLayer":
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer as Layer
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding as Rotary

        config = LlamaConfig(hidden_size=spec.hidden, num_attention_heads=spec.heads,
                             num_key_value_heads=spec.kv_heads, head_dim=spec.head_dim,
                             intermediate_size=spec.intermediate, vocab_size=spec.vocab,
                             attention_bias=spec.qkv_bias, attn_implementation="sdpa",
                             rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    else:
        from transformers import GlmConfig
        from transformers.models.glm.modeling_glm import GlmDecoderLayer as Layer
        from transformers.models.glm.modeling_glm import GlmRotaryEmbedding as Rotary

        config = GlmConfig(hidden_size=spec.hidden, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
                           head_dim=spec.head_dim, intermediate_size=spec.intermediate, vocab_size=spec.vocab,
                           attention_bias=spec.qkv_bias, attn_implementation="sdpa", pad_token_id=0)
    layer = Layer(config, layer_idx=0).to(device).requires_grad_(False)  # frozen: no weight gradients
    return layer, Rotary(config).to(device)


class EmbeddingOnlyLLM(nn.Module):
    """Stands in for the frozen LLM where EGMF.fuse() needs only its input embeddings (d_llm wide).

    The table has few rows: a lookup costs the same whatever the vocabulary.
    """

    def __init__(self, d_llm: int = 4096, rows: int = 1024):
        super().__init__()
        self.embed = nn.Embedding(rows, d_llm).requires_grad_(False)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed


def paper_egmf(cfg: ModelConfig | None = None, *, d_llm: int = 4096, dims: tuple[int, int] = MOSEI_DIMS,
               device: torch.device = torch.device("cpu")) -> nn.Module:
    """EGMF's modules at the paper's sizes (ModelConfig defaults: d_h 256) around an embedding-only LLM."""
    from egmf_core.model import EGMF

    torch.manual_seed(0)
    model = EGMF(cfg or ModelConfig(), EmbeddingOnlyLLM(d_llm), *dims).to(device)
    return model.train()


def mosei_paper_batch(batch: int = STEP_BATCH, *, lengths: tuple[int, int, int] = MOSEI_LENGTHS,
                      dims: tuple[int, int] = MOSEI_DIMS, rows: int = 1024,
                      device: torch.device = torch.device("cpu")) -> dict[str, torch.Tensor]:
    """A MOSEI-sized batch for EGMF.fuse(), every sample at the maximum lengths (the costliest case)."""
    g = torch.Generator().manual_seed(0)
    lt, la, lv = lengths
    out = {
        "utt_ids": torch.randint(0, rows, (batch, lt), generator=g),  # (B, L_t)
        "utt_mask": torch.ones(batch, lt, dtype=torch.bool),  # (B, L_t)
        "audio": torch.randn(batch, la, dims[0], generator=g),  # (B, L_a, d_a)
        "audio_lengths": torch.full((batch,), la, dtype=torch.long),  # (B,)
        "vision": torch.randn(batch, lv, dims[1], generator=g),  # (B, L_v, d_v)
        "vision_lengths": torch.full((batch,), lv, dtype=torch.long),  # (B,)
    }
    return {k: v.to(device) for k, v in out.items()}


# ---- timing -----------------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], repeats: int, device: torch.device, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def layer_step_fn(spec: PaperBackbone, batch: int, tokens: int, device: torch.device) -> Callable[[], None]:
    """Forward + backward of one frozen decoder layer on activations that require grad (LoRA training)."""
    layer, rotary = decoder_layer(spec, device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, tokens, spec.hidden, generator=g).to(device).requires_grad_(True)  # (B, T, H)
    positions = torch.arange(tokens, device=device).unsqueeze(0).expand(batch, -1)  # (B, T)
    cos_sin = rotary(x, positions)
    grad_out = torch.randn(batch, tokens, spec.hidden, generator=g).to(device)  # (B, T, H)

    def step() -> None:
        x.grad = None
        out = layer(x, position_embeddings=cos_sin)  # (B, T, H) causal attention (no mask: sdpa is_causal)
        out.backward(grad_out)

    return step


def egmf_step_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    """Forward + backward of EGMF's modules: fuse() to T_pseudo, then a gradient back through it."""
    def step() -> None:
        model.zero_grad(set_to_none=True)
        t_pseudo, _ = model.fuse(batch)  # (B, n, d_llm)
        t_pseudo.float().pow(2).mean().backward()

    return step


def counted_flops(fn: Callable[[], None]) -> int:
    """FLOPs of one call as torch.utils.flop_counter counts them (matmuls and GPU attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# ---- analytic FLOPs -----------------------------------------------------------------------------------

def layer_flops(spec: PaperBackbone, batch: int, tokens: int, lora_r: int = LORA_R, lora: bool = True) -> dict:
    """Forward and backward FLOPs of one decoder layer on batch x tokens (causal attention).

    Frozen projections: backward = forward (input gradient only). Attention: backward = 2x forward.
    LoRA (A: r x in, B: out x r) on q, k, v, o and the MLP projections: backward = 2x forward.
    """
    n = batch * tokens
    h, q_out, kv_out = spec.hidden, spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    shapes = [(h, q_out), (h, kv_out), (h, kv_out), (q_out, h),  # q, k, v, o
              (h, spec.intermediate), (h, spec.intermediate), (spec.intermediate, h)]  # gate, up, down
    proj = sum(2 * n * i * o for i, o in shapes)
    attn = 2 * 2 * batch * spec.heads * spec.head_dim * tokens * (tokens + 1) // 2  # QK^T and AV, causal
    lora_fwd = sum(2 * n * lora_r * (i + o) for i, o in shapes) if lora else 0
    fwd = proj + attn + lora_fwd
    bwd = proj + 2 * attn + 2 * lora_fwd
    return {"forward": fwd, "backward": bwd, "total": fwd + bwd, "frozen_matmul_forward": proj}


def lm_head_flops(spec: PaperBackbone, batch: int, tokens: int) -> int:
    """LM head over every position (HF computes all logits with labels), forward + input gradient."""
    return 2 * (2 * batch * tokens * spec.hidden * spec.vocab)


def egmf_flops(cfg: ModelConfig, batch: int, *, d_llm: int = 4096, lengths=MOSEI_LENGTHS, dims=MOSEI_DIMS) -> dict:
    """Forward FLOPs of EGMF's modules (matmuls) on one batch; backward = 2x (weights + inputs)."""
    d, (lt, la, lv), (d_a, d_v) = cfg.d_h, lengths, dims
    mods = set(cfg.modalities)
    m = int("audio" in mods) + int("visual" in mods)  # H_av rows
    f = {}
    f["text_projection"] = 2 * batch * lt * d_llm * d if "text" in mods else 0
    pool = 4 if cfg.av_encoder == "attn_pool" else 0  # scores + weighted sum, per frame and width
    f["audio_encoder"] = (2 * batch * la * d_a * d + pool * batch * la * d) if "audio" in mods else 0
    f["visual_encoder"] = (2 * batch * lv * d_v * d + pool * batch * lv * d) if "visual" in mods else 0
    lq = lt if "text" in mods else 1
    cross = (2 * batch * lq * d * d * 2 + 2 * batch * m * d * d * 2 + 2 * 2 * batch * lq * m * d) if m else 0
    self_attn = 2 * batch * lq * d * d * 4 + 2 * 2 * batch * lq * lq * d
    f["fusion"] = cross + self_attn  # Eq. 1-2: q/o projections, k/v projections, scores and AV
    f["experts"] = sum(2 * batch * 2 * d * (d // cfg.expert_ratio[e]) for e in cfg.experts)
    k, hidden = len(cfg.experts), cfg.gate_hidden or d
    gate = 0
    if cfg.gating != "uniform" and k > 1:
        gate += 2 * batch * d * k
        if cfg.gating == "hierarchical":
            gate += 2 * batch * ((d + k) * hidden + hidden * k)
    if cfg.beta_mode == "learned":
        gate += 2 * batch * (d + k)
    f["gating"] = gate
    out = d_llm if cfg.pseudo_token_mode == "repeat" else d_llm * cfg.n_tokens
    f["pseudo_token_projector"] = 2 * batch * d * out
    fwd = sum(f.values())
    return {"forward": fwd, "backward": 2 * fwd, "total": 3 * fwd, "by_module": f}


# ---- the measurement ------------------------------------------------------------------------------------

def measure(backbones: list[str] | None = None, *, batch: int = STEP_BATCH, tokens: int = STEP_TOKENS,
            repeats: int = 2, device: str | torch.device = "cpu", count: bool = True,
            log: Callable[[str], None] = lambda s: None) -> dict:
    """Time and count EGMF against each backbone's step; a JSON-ready dict (see the module doc)."""
    device = torch.device(device)
    names = list(backbones or PAPER_BACKBONES)
    cfg = ModelConfig()
    model = paper_egmf(cfg, device=device)
    fuse_batch = mosei_paper_batch(batch, device=device)
    egmf_fn = egmf_step_fn(model, fuse_batch)
    # EGMF is timed before and after every layer timing, so that a change in the machine's load
    # during the minutes the layers take moves both sides of the ratio alike.
    egmf_samples = [median_seconds(egmf_fn, 3, device, warmup=2)]
    egmf_analytic = egmf_flops(cfg, batch)
    egmf_counted = counted_flops(egmf_fn) if count else None
    layer_cache: dict[tuple, tuple[float, int | None]] = {}
    for name in names:
        spec = PAPER_BACKBONES[name]
        if spec.layer_key not in layer_cache:
            fn = layer_step_fn(spec, batch, tokens, device)
            seconds = median_seconds(fn, repeats, device)
            layer_cache[spec.layer_key] = (seconds, counted_flops(fn) if count else None)
            del fn
            log(f"{spec.layer_class} ({name} dims): {seconds:.2f} s forward+backward per layer")
            egmf_samples.append(median_seconds(egmf_fn, 3, device, warmup=0))
    egmf_s = statistics.median(egmf_samples)
    log(f"EGMF modules (d_h {cfg.d_h}, batch {batch}, MOSEI lengths {MOSEI_LENGTHS}): {1000 * egmf_s:.1f} ms "
        f"forward+backward (median of {', '.join(f'{1000 * t:.0f}' for t in egmf_samples)} ms)")
    egmf = {"s": egmf_s, "flops": egmf_analytic["total"], "flops_counted": egmf_counted}
    rows = [_overhead_row(name, layer_cache[PAPER_BACKBONES[name].layer_key], egmf, batch, tokens) for name in names]
    return {
        "what": "EGMF's own modules vs the frozen backbone in one LoRA training step at paper scale",
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "egmf_samples_s": egmf_samples,
        "batch": batch,
        "tokens": tokens,
        "egmf_config": {"d_h": cfg.d_h, "fusion_heads": cfg.fusion_heads, "n_tokens": cfg.n_tokens,
                        "av_encoder": cfg.av_encoder, "mosei_lengths": list(MOSEI_LENGTHS)},
        "egmf_flops_by_module": egmf_analytic["by_module"],
        "backbones": {n: asdict(PAPER_BACKBONES[n]) for n in names},
        "rows": rows,
    }


def _overhead_row(name: str, layer: tuple[float, int | None], egmf: dict, batch: int, tokens: int) -> dict:
    """One backbone's row: its step (one timed layer x layers, analytic FLOPs) against EGMF's."""
    spec = PAPER_BACKBONES[name]
    layer_s, layer_counted = layer
    backbone_s = layer_s * spec.layers
    lf = layer_flops(spec, batch, tokens)
    backbone_flops = spec.layers * lf["total"] + lm_head_flops(spec, batch, tokens)
    return {
        "backbone": name,
        "layer_class": spec.layer_class,
        "layers": spec.layers,
        "layer_s": layer_s,
        "backbone_step_s": backbone_s,
        "egmf_s": egmf["s"],
        "egmf_share_timed": egmf["s"] / (egmf["s"] + backbone_s),
        "layer_flops_analytic": lf["total"],
        "layer_flops_analytic_no_lora": layer_flops(spec, batch, tokens, lora=False)["total"],
        "layer_flops_counted": layer_counted,
        "backbone_flops": backbone_flops,
        "egmf_flops": egmf["flops"],
        "egmf_flops_counted": egmf["flops_counted"],
        "egmf_share_flops": egmf["flops"] / (egmf["flops"] + backbone_flops),
    }


def _fmt_flops(x: float | None) -> str:
    if x is None:
        return "–"
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} FLOP"


def overhead_table(result: dict) -> str:
    """Markdown table of one ``measure`` result."""
    head = ("| backbone | layers | one layer fwd+bwd (s, timed) | backbone step (s, timed x depth) | EGMF fwd+bwd "
            "(ms, timed) | EGMF share (timed) | backbone step (FLOPs, analytic) | EGMF (FLOPs, analytic) | "
            "EGMF share (FLOPs) | layer FLOPs analytic (no LoRA) / counted |")
    lines = [head, "|" + "---|" * 10]
    for r in result["rows"]:
        check = (f"{r['layer_flops_analytic_no_lora'] / r['layer_flops_counted']:.3f}" if r["layer_flops_counted"]
                 else "–")
        lines.append(f"| {r['backbone']} | {r['layers']} | {r['layer_s']:.2f} | {r['backbone_step_s']:.1f} | "
                     f"{1000 * r['egmf_s']:.1f} | {100 * r['egmf_share_timed']:.3f}% | "
                     f"{_fmt_flops(r['backbone_flops'])} | {_fmt_flops(r['egmf_flops'])} | "
                     f"{100 * r['egmf_share_flops']:.4f}% | {check} |")
    return "\n".join(lines)


# ---- the cost record (cost.json + cost.md) --------------------------------------------------------------

def record_cost(section: str, data: dict, path: Path = DEFAULT_OUT) -> Path:
    """Store ``data`` under ``section`` in the cost JSON (other sections kept) and re-render cost.md."""
    from egmf_core.atomic import atomic_write_bytes

    path = Path(path)
    record = json.loads(path.read_text("utf-8")) if path.is_file() else {}
    record[section] = data
    atomic_write_bytes(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    atomic_write_bytes(path.with_suffix(".md"), render_cost_md(record).encode("utf-8"))
    return path


def render_cost_md(record: dict) -> str:
    """cost.md: the paper-scale overhead table and the scoring-vs-generation table, when measured."""
    lines = ["# Cost of EGMF: measured ratios", "",
             "Written by `python -m benchmarks.perf.overhead` and `nox -s bench` (benchmarks/perf). Timings "
             "come from one run on the machine named below; they move with its load.", ""]
    over = record.get("overhead")
    if over:
        lines += ["## EGMF's modules vs the backbone in one training step (paper scale)", "",
                  f"Device {over['device']} ({over['torch_threads']} torch thread(s)), batch {over['batch']} x "
                  f"{over['tokens']} tokens; EGMF at d_h {over['egmf_config']['d_h']} on MOSEI lengths "
                  f"{tuple(over['egmf_config']['mosei_lengths'])}. Timed: one real decoder layer (random weights, "
                  "frozen, activations with grad) times the depth, without LM head, LoRA or optimizer (a lower "
                  "bound on the backbone, so EGMF's share is an upper bound). FLOPs: analytic, whole step "
                  "including the LM head and LoRA r=8; the last column checks the layer formula against "
                  "torch.utils.flop_counter (CPU attention kernels are not counted by it).", "",
                  overhead_table(over), ""]
    score = record.get("scoring_vs_generation")
    if score:
        lines += ["## Label scoring vs free generation per evaluation batch (tiny twins)", "",
                  f"{score['note']}", "",
                  "| twin | batch | generate (ms) | prefill (ms) | score (ms) | speed-up | LLM forwards generate / score "
                  "| valid generations | identical where valid |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in score["rows"]:
            prefill = f"{1000 * r['prefill_s']:.1f}" if "prefill_s" in r else "–"
            forwards = f"{r['forwards_generate']} / {r['forwards_score']}" if "forwards_generate" in r else "–"
            lines.append(f"| {r['twin']} | {r['batch']} | {1000 * r['generate_s']:.1f} | {prefill} | "
                         f"{1000 * r['score_s']:.1f} | {r['speedup']:.2f}x | {forwards} | {100 * r['valid_share']:.1f}% | "
                         f"{'yes' if r['identical_where_valid'] else '**no**'} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.perf.overhead", description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default=",".join(PAPER_BACKBONES), help="comma-separated: llama3,glm3,glm4")
    p.add_argument("--batch", type=int, default=STEP_BATCH)
    p.add_argument("--tokens", type=int, default=STEP_TOKENS, help="tokens per training sequence")
    p.add_argument("--repeats", type=int, default=2, help="timed repetitions per decoder layer (median)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is steadier on a busy CPU)")
    p.add_argument("--no-count", action="store_true", help="skip the torch.utils.flop_counter check pass")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="cost JSON (cost.md is written beside it)")
    args = p.parse_args(argv)
    unknown = [b for b in args.backbones.split(",") if b not in PAPER_BACKBONES]
    if unknown:
        p.error(f"--backbones: unknown {unknown[0]!r} (known: {', '.join(PAPER_BACKBONES)})")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args.backbones.split(","), batch=args.batch, tokens=args.tokens, repeats=args.repeats,
                     device=args.device, count=not args.no_count, log=print)
    print(overhead_table(result))
    worst = max(max(r["egmf_share_timed"], r["egmf_share_flops"]) for r in result["rows"])
    print(f"largest EGMF share: {100 * worst:.3f}% (target: at most 3%) -> {'met' if worst <= 0.03 else 'NOT met'}")
    print(f"written: {record_cost('overhead', result, args.out)} and {Path(args.out).with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
