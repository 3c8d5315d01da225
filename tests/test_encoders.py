"""AudioVisualEncoder and TextProjection: shapes, padding invariance, pooling arithmetic."""

import pytest
import torch

from egmf_core.config import AV_ENCODER_KINDS
from egmf_core.encoders import AudioVisualEncoder, EncoderConfigError, TextProjection

D_IN, D_H, L = 6, 16, 7


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, L, D_IN, generator=g)
    lengths = torch.tensor([7, 3, 1])
    return x, lengths


@pytest.mark.parametrize("kind", AV_ENCODER_KINDS)
def test_output_is_one_vector_per_sample(kind):
    enc = AudioVisualEncoder(D_IN, D_H, kind=kind).eval()
    x, lengths = _batch()
    assert enc(x, lengths).shape == (3, D_H)


@pytest.mark.parametrize("kind", AV_ENCODER_KINDS)
@pytest.mark.parametrize("garbage", [1e6, float("nan"), float("inf")])
def test_padding_frames_never_change_the_output(kind, garbage):
    torch.manual_seed(0)
    enc = AudioVisualEncoder(D_IN, D_H, kind=kind).eval()
    x, lengths = _batch()
    clean = x.clone()
    for i, n in enumerate(lengths.tolist()):
        clean[i, n:] = 0.0
    dirty = clean.clone()
    for i, n in enumerate(lengths.tolist()):
        dirty[i, n:] = garbage * (torch.rand(L - n, D_IN) + 0.5)  # varied, so LayerNorm cannot cancel it
    out_clean, out_dirty = enc(clean, lengths), enc(dirty, lengths)
    assert torch.isfinite(out_dirty).all()
    torch.testing.assert_close(out_dirty, out_clean)


@pytest.mark.parametrize("kind", AV_ENCODER_KINDS)
def test_a_sample_alone_equals_the_sample_in_a_padded_batch(kind):
    torch.manual_seed(0)
    enc = AudioVisualEncoder(D_IN, D_H, kind=kind).eval()
    x, lengths = _batch()
    batched = enc(x, lengths)[1]
    alone = enc(x[1:2, :3], lengths[1:2])[0]  # sample 1 has 3 valid frames, no padding here
    torch.testing.assert_close(batched, alone)


def test_mean_pool_is_the_mean_of_projected_valid_frames():
    torch.manual_seed(0)
    enc = AudioVisualEncoder(D_IN, D_H, kind="mean_pool").eval()
    x, lengths = _batch()
    expected = enc.frames(x[1, :3]).mean(dim=0)  # 3 valid frames of sample 1
    torch.testing.assert_close(enc(x, lengths)[1], expected)


def test_attention_pool_with_one_valid_frame_returns_that_frame():
    torch.manual_seed(0)
    enc = AudioVisualEncoder(D_IN, D_H, kind="attn_pool").eval()
    x, lengths = _batch()
    torch.testing.assert_close(enc(x, lengths)[2], enc.frames(x[2, :1])[0])  # softmax over 1 frame = 1


def test_gradients_reach_every_parameter():
    for kind in AV_ENCODER_KINDS:
        enc = AudioVisualEncoder(D_IN, D_H, kind=kind)
        x, lengths = _batch()
        enc(x, lengths).sum().backward()
        missing = [n for n, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert missing == [], (kind, missing)


def test_unknown_kind_names_the_field():
    with pytest.raises(EncoderConfigError, match="model.av_encoder"):
        AudioVisualEncoder(D_IN, D_H, kind="transformer")


def test_text_projection_maps_each_token_to_d_h():
    proj = TextProjection(d_llm=32, d_h=D_H, dropout=0.0)
    E_text = torch.randn(2, 5, 32)
    H_text = proj(E_text)
    assert H_text.shape == (2, 5, D_H)
    # tokens are projected independently: changing token 4 leaves tokens 0..3 unchanged
    E_other = E_text.clone()
    E_other[:, 4] = 100.0
    torch.testing.assert_close(proj(E_other)[:, :4], H_text[:, :4])


def test_text_projection_accepts_bf16_embeddings():
    proj = TextProjection(d_llm=32, d_h=D_H, dropout=0.0)
    E_text = torch.randn(2, 5, 32)
    torch.testing.assert_close(proj(E_text.bfloat16()), proj(E_text.bfloat16().float()))
