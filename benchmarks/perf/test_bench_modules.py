"""EGMF's own modules, forward + backward at the paper's sizes (LLM hidden 4096, d_h 256, batch 8, MOSEI).

Sizes: d_h is ModelConfig's default (the paper does not state it); MOSEI lengths text 50,
audio 500 (d_a 74), visual 375 (d_v 35), every sample at the maximum length. Inputs of modules in
the middle of the pipeline require grad, as they do in training. The last test measures EGMF's
share of a paper-scale training step (benchmarks/perf/overhead.py) and records it in cost.json.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.perf import overhead
from egmf_core.config import ModelConfig
from egmf_core.encoders import AudioVisualEncoder, TextProjection
from egmf_core.experts import ExpertBank
from egmf_core.fusion import TextCentricFusion
from egmf_core.gating import HierarchicalGating
from egmf_core.pseudo_tokens import PseudoTokenProjector

CFG = ModelConfig()
B, D_LLM, D_H = overhead.STEP_BATCH, 4096, CFG.d_h
L_T, L_A, L_V = overhead.MOSEI_LENGTHS
D_A, D_V = overhead.MOSEI_DIMS
K = len(CFG.experts)


def inputs(*shape: int, grad: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(sum(shape))
    return torch.randn(*shape, generator=g).requires_grad_(grad)


def forward_backward(module: torch.nn.Module, *args) -> torch.Tensor:
    """One training-mode forward and a backward from a scalar of the module's (first) output; returns it."""
    module.zero_grad(set_to_none=True)
    for a in args:
        if isinstance(a, torch.Tensor) and a.requires_grad:
            a.grad = None
    out = module(*args)
    out = out[0] if isinstance(out, tuple) else out
    out.float().pow(2).mean().backward()
    return out.detach()


def assert_trained(module: torch.nn.Module, out: torch.Tensor, shape: tuple[int, ...]) -> None:
    """The measured step gave the expected output shape, finite values and a gradient for every weight."""
    assert tuple(out.shape) == shape and torch.isfinite(out).all()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_audio_encoder(benchmark):
    enc = AudioVisualEncoder(D_A, D_H, CFG.av_encoder, CFG.dropout).train()
    x, lengths = inputs(B, L_A, D_A), torch.full((B,), L_A)
    assert_trained(enc, benchmark(forward_backward, enc, x, lengths), (B, D_H))  # H_a: (8, 256) from (8, 500, 74)


def test_visual_encoder(benchmark):
    enc = AudioVisualEncoder(D_V, D_H, CFG.av_encoder, CFG.dropout).train()
    x, lengths = inputs(B, L_V, D_V), torch.full((B,), L_V)
    assert_trained(enc, benchmark(forward_backward, enc, x, lengths), (B, D_H))  # H_v: (8, 256) from (8, 375, 35)


def test_text_projection(benchmark):
    proj = TextProjection(D_LLM, D_H, CFG.dropout).train()
    out = benchmark(forward_backward, proj, inputs(B, L_T, D_LLM))
    assert_trained(proj, out, (B, L_T, D_H))  # H_text: (8, 50, 256) from frozen embeddings


def test_text_centric_fusion(benchmark):
    fusion = TextCentricFusion(D_H, CFG.fusion_heads, CFG.dropout).train()
    h_text, mask, h_av = inputs(B, L_T, D_H, grad=True), torch.ones(B, L_T, dtype=torch.bool), inputs(B, 2, D_H, grad=True)
    assert_trained(fusion, benchmark(forward_backward, fusion, h_text, mask, h_av), (B, D_H))  # Eq. 1-2: f_fusion
    assert h_text.grad is not None and h_av.grad is not None  # the gradient reaches both inputs


def test_expert_bank(benchmark):
    experts = ExpertBank(D_H, list(CFG.experts), CFG.expert_ratio, CFG.expert_activation, CFG.dropout).train()
    assert_trained(experts, benchmark(forward_backward, experts, inputs(B, D_H, grad=True)), (B, K, D_H))  # E_k(f_fusion)


def test_hierarchical_gating(benchmark):
    gating = HierarchicalGating(D_H, K, mode=CFG.gating, beta_mode=CFG.beta_mode).train()
    out = benchmark(forward_backward, gating, inputs(B, D_H, grad=True), inputs(B, K, D_H, grad=True))
    assert_trained(gating, out, (B, D_H))  # Eq. 3: f_enhanced (8, 256)


def test_pseudo_token_projector(benchmark):
    proj = PseudoTokenProjector(D_H, D_LLM, CFG.n_tokens, CFG.pseudo_token_mode).train()
    out = benchmark(forward_backward, proj, inputs(B, D_H, grad=True))
    assert_trained(proj, out, (B, CFG.n_tokens, D_LLM))  # T_pseudo: (8, 4, 4096)


def test_all_egmf_modules_fuse(benchmark):
    model = overhead.paper_egmf(CFG)
    batch = overhead.mosei_paper_batch(B)
    benchmark(overhead.egmf_step_fn(model, batch))  # text + audio + visual -> T_pseudo and back
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert trainable and not missing, f"no gradient for {missing}"
    with torch.no_grad():
        t_pseudo, _ = model.fuse(batch)
    assert tuple(t_pseudo.shape) == (B, CFG.n_tokens, D_LLM) and torch.isfinite(t_pseudo).all()


def test_flop_formulas_agree_with_torch_flop_counter():
    """The analytic FLOPs used for the overhead ratio match a counted pass (small layer, paper EGMF)."""
    small = overhead.PaperBackbone("small", "LlamaDecoderLayer", 2, 256, 8, 2, 32, 896, 1000, False)
    counted = overhead.counted_flops(overhead.layer_step_fn(small, 4, 30, torch.device("cpu")))
    analytic = overhead.layer_flops(small, 4, 30, lora=False)["total"]
    assert analytic == pytest.approx(counted, rel=0.03)  # the counter misses CPU attention (~1.4% here)
    egmf_counted = overhead.counted_flops(overhead.egmf_step_fn(overhead.paper_egmf(CFG), overhead.mosei_paper_batch(B)))
    assert overhead.egmf_flops(CFG, B)["total"] == pytest.approx(egmf_counted, rel=0.05)


def test_egmf_share_of_a_paper_scale_training_step(capsys):
    """Measured once, not asserted on timing: printed and recorded in reports/smoke/cost.json."""
    result = overhead.measure(repeats=1, count=False)
    table = overhead.overhead_table(result)
    path = overhead.record_cost("overhead", result)
    with capsys.disabled():
        print("\n" + table + f"\n(recorded in {path} and {path.with_suffix('.md')})")
    assert {r["backbone"] for r in result["rows"]} == set(overhead.PAPER_BACKBONES)
    assert all(0 < r["egmf_share_flops"] < 1 and 0 < r["egmf_share_timed"] < 1 for r in result["rows"])
