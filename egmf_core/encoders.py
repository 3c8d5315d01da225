"""Modality encoders: audio/visual frame sequences to one vector each, text embeddings to d_h.

The paper [S] says only that "an AudioVisualEncoder extracts features from audio and visual
data while text uses LLM embeddings"; its structure is open. Our choices, each selectable with
``ModelConfig.av_encoder``:

- ``"attn_pool"`` (default, [C]): a per-frame projection, then attention pooling with one learned
  query, so that salient frames (a laugh, a frown) can dominate the utterance vector.
- ``"mean_pool"``: the same per-frame projection, then the mean over valid frames.
- ``"gru"``: the same per-frame projection, then a 1-layer GRU whose last valid hidden state is
  the utterance vector (the usual choice in MSA baselines such as the proxy's).

Padding never changes an output: frames at or past ``lengths`` are zeroed before any arithmetic
(so NaN or garbage there cannot leak) and are excluded from every pooling. Every sample must
have at least one valid frame (``lengths >= 1``), which the dataset loaders guarantee.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence

from egmf_core.config import AV_ENCODER_KINDS


class EncoderConfigError(ValueError):
    """An encoder was built with an unknown kind; the message names the field."""


def valid_frame_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, L) bool mask, True where the frame index is below the sample's length."""
    positions = torch.arange(max_len, device=lengths.device)  # (L,)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)  # (B, L)


class FrameProjection(nn.Module):
    """Per-frame LayerNorm -> Linear(d_in, d_h) -> GELU -> dropout, shared by every encoder kind.

    LayerNorm first because raw COVAREP/Facet features have very different scales per dimension.
    """

    def __init__(self, d_in: int, d_h: int, dropout: float = 0.1):
        super().__init__()
        self.norm = nn.LayerNorm(d_in)
        self.proj = nn.Linear(d_in, d_h)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, L, d_in)
        return self.drop(self.act(self.proj(self.norm(x))))  # (B, L, d_h)


class AttentionPool(nn.Module):
    """Masked attention pooling with one learned query: softmax over the valid frames only."""

    def __init__(self, d_h: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(d_h) * 0.02)  # learned query q in R^{d_h}
        self.scale = 1.0 / math.sqrt(d_h)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # h: (B, L, d_h), mask: (B, L) bool
        scores = (h @ self.query) * self.scale  # (B, L)
        scores = scores.masked_fill(~mask, float("-inf"))  # (B, L) padding gets zero weight
        weights = torch.softmax(scores, dim=-1)  # (B, L)
        return torch.einsum("bl,bld->bd", weights, h)  # (B, d_h)


class AudioVisualEncoder(nn.Module):
    """Encodes one non-text modality's frame sequence into H_a or H_v in R^{d_h}.

    Args:
        d_in: feature width of the modality (MOSEI: 74 audio, 35 visual).
        d_h: fusion width (``ModelConfig.d_h``).
        kind: ``ModelConfig.av_encoder``: "attn_pool" | "mean_pool" | "gru" (see module doc).
        dropout: dropout after the per-frame projection.
    """

    def __init__(self, d_in: int, d_h: int, kind: str = "attn_pool", dropout: float = 0.1):
        super().__init__()
        if kind not in AV_ENCODER_KINDS:
            raise EncoderConfigError(
                f"egmf_core/encoders.py: model.av_encoder={kind!r} must be one of {AV_ENCODER_KINDS}"
            )
        self.kind = kind
        self.frames = FrameProjection(d_in, d_h, dropout)
        if kind == "attn_pool":
            self.pool = AttentionPool(d_h)
        elif kind == "gru":
            self.gru = nn.GRU(d_h, d_h, num_layers=1, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # x: (B, L, d_in) float, lengths: (B,) long with 1 <= lengths <= L
        mask = valid_frame_mask(lengths, x.shape[1])  # (B, L)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        x = torch.where(mask.unsqueeze(-1), x, zero)  # (B, L, d_in) padding -> 0, NaN included
        h = self.frames(x)  # (B, L, d_h)
        if self.kind == "attn_pool":
            return self.pool(h, mask)  # (B, d_h) H_a / H_v
        if self.kind == "mean_pool":
            m = mask.unsqueeze(-1).to(h.dtype)  # (B, L, 1)
            return (h * m).sum(dim=1) / m.sum(dim=1)  # (B, d_h) H_a / H_v
        packed = pack_padded_sequence(h, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, h_last = self.gru(packed)  # (1, B, d_h): state after each sample's last valid frame
        return h_last[-1]  # (B, d_h) H_a / H_v


class TextProjection(nn.Module):
    """Projects the frozen LLM's input embeddings of the utterance to H_text in R^{L_t x d_h}.

    LayerNorm first ([C]): LLM embedding tables have their own scale (and may arrive in bf16);
    normalising makes the projection's input scale the same for every backbone.
    kind "linear" is one Linear; kind "mlp" ([C], model.text_proj) adds a GELU hidden layer of
    width `hidden`, so that each token can be mapped non-linearly before the attention pools it.
    """

    def __init__(self, d_llm: int, d_h: int, dropout: float = 0.1, kind: str = "linear", hidden: int | None = None):
        super().__init__()
        self.norm = nn.LayerNorm(d_llm)
        if kind == "mlp":
            width = hidden or 4 * d_h
            self.proj = nn.Sequential(nn.Linear(d_llm, width), nn.GELU(), nn.Linear(width, d_h))
        else:
            self.proj = nn.Linear(d_llm, d_h)
        self.drop = nn.Dropout(dropout)

    def forward(self, E_text: torch.Tensor) -> torch.Tensor:
        # E_text: (B, L_t, d_llm) the LLM's input embeddings of the utterance tokens
        E_text = E_text.to(self.norm.weight.dtype)  # (B, L_t, d_llm) frozen LLM may be bf16
        return self.drop(self.proj(self.norm(E_text)))  # (B, L_t, d_h) H_text
