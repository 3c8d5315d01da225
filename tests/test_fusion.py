"""TextCentricFusion (Eq. 1-2): padding invariance, modality ablations, gradient flow."""

import torch

from egmf_core.fusion import LearnedQuery, TextCentricFusion

D_H, HEADS, L_T = 16, 4, 6


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    H_text = torch.randn(3, L_T, D_H, generator=g)
    text_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] + [0] * 5], dtype=torch.bool)
    H_av = torch.randn(3, 2, D_H, generator=g)
    return H_text, text_mask, H_av


def _fusion(seed: int = 0) -> TextCentricFusion:
    torch.manual_seed(seed)
    return TextCentricFusion(D_H, HEADS, dropout=0.1).eval()


def test_output_is_one_vector_per_sample():
    H_text, mask, H_av = _inputs()
    assert _fusion()(H_text, mask, H_av).shape == (3, D_H)


def test_padded_text_positions_never_change_f_fusion():
    fusion = _fusion()
    H_text, mask, H_av = _inputs()
    dirty = H_text.clone()
    dirty[~mask] = torch.randn(int((~mask).sum()), D_H) * 1e3
    torch.testing.assert_close(fusion(dirty, mask, H_av), fusion(H_text, mask, H_av))
    dirty[~mask] = float("nan")
    torch.testing.assert_close(fusion(dirty, mask, H_av), fusion(H_text, mask, H_av))
    torch.testing.assert_close(fusion(dirty, mask, None), fusion(H_text, mask, None))


def test_sample_alone_equals_sample_in_padded_batch():
    fusion = _fusion()
    H_text, mask, H_av = _inputs()
    alone = fusion(H_text[1:2, :4], mask[1:2, :4], H_av[1:2])
    torch.testing.assert_close(fusion(H_text, mask, H_av)[1:2], alone)


def test_changing_audio_visual_changes_the_output():
    fusion = _fusion()
    H_text, mask, H_av = _inputs()
    before = fusion(H_text, mask, H_av)
    after = fusion(H_text, mask, H_av + torch.randn_like(H_av))
    assert (before - after).abs().max() > 1e-3


def test_without_audio_visual_the_output_depends_on_text_only():
    fusion = _fusion()
    H_text, mask, _ = _inputs()
    out = fusion(H_text, mask, None)
    # same as an empty (B, 0, d_h) stack, and equal to self-attention + residual on H_text alone
    torch.testing.assert_close(fusion(H_text, mask, H_text.new_zeros(3, 0, D_H)), out)
    z = fusion.norm_self(H_text[2:3, :1])
    attended, _ = fusion.self_attn(z, z, z, need_weights=False)
    torch.testing.assert_close(out[2], (attended + H_text[2:3, :1])[0, 0])  # 1 valid token: mean = itself


def test_one_modality_removed_uses_a_single_av_vector():
    fusion = _fusion()
    H_text, mask, H_av = _inputs()
    audio_only = fusion(H_text, mask, H_av[:, :1])
    assert audio_only.shape == (3, D_H)
    assert (audio_only - fusion(H_text, mask, H_av)).abs().max() > 1e-4


def test_text_removed_learned_query_attends_to_audio_visual():
    fusion, query = _fusion(), LearnedQuery(D_H)
    _, _, H_av = _inputs()
    q = query(3)
    assert q.shape == (3, 1, D_H)
    out = fusion(q, torch.ones(3, 1, dtype=torch.bool), H_av)
    assert out.shape == (3, D_H)
    assert (out[0] - out[1]).abs().max() > 1e-4  # same query, different audio/visual -> different f_fusion


def test_gradients_reach_every_parameter_used():
    torch.manual_seed(0)
    fusion, query = TextCentricFusion(D_H, HEADS, dropout=0.1), LearnedQuery(D_H)
    H_text, mask, H_av = _inputs()
    H_text.requires_grad_(True)
    H_av.requires_grad_(True)
    fusion(H_text, mask, H_av).sum().backward()
    missing = [n for n, p in fusion.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert H_av.grad.abs().sum() > 0 and H_text.grad[mask].abs().sum() > 0
    assert H_text.grad[~mask].abs().sum() == 0  # padding receives no gradient either
    fusion(query(3), torch.ones(3, 1, dtype=torch.bool), H_av.detach()).sum().backward()
    assert query.token.grad.abs().sum() > 0


def test_without_audio_visual_cross_attention_is_unused():
    fusion = TextCentricFusion(D_H, HEADS, dropout=0.0)
    H_text, mask, _ = _inputs()
    fusion(H_text, mask, None).sum().backward()
    assert fusion.cross_attn.in_proj_weight.grad is None
    assert fusion.self_attn.in_proj_weight.grad.abs().sum() > 0
