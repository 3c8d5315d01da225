"""Text-centric cross-modal attention, Eq. 1-2: text queries the audio/visual vectors.

    Z_cross  = CrossAttention(H_text, H_av, H_av) + H_text      (Eq. 1)
    Z_self   = SelfAttention(Z_cross) + Z_cross                  (Eq. 2)
    f_fusion = GlobalPool(Z_self)                                ("global pooling" [S])

Choices where the paper is silent ([C]):
- Pre-LayerNorm: queries (H_text) and keys/values (H_av) are layer-normalised before the cross
  attention, and Z_cross before the self attention; the residuals use the un-normalised inputs,
  exactly as written in Eq. 1-2. No feed-forward block and no final norm (the paper has none).
- Dropout is applied to each attention's output before the residual add (nanoGPT's
  ``resid_dropout``), not to the attention weights: with only M <= 2 keys, dropping attention
  weights would silently drop a whole modality.
- Global pooling is the mean over valid (non-padding) text positions.
- ``fusion_heads`` heads (``ModelConfig.fusion_heads``) in both attentions.

Modality ablation ([C]):
- audio or visual removed: ``H_av`` stacks only the remaining vector (M = 1);
- both removed: ``H_av=None`` -> Z_cross = H_text (no cross attention at all);
- text removed: the caller passes ``LearnedQuery(d_h)(B)`` as H_text, shape (B, 1, d_h), with a
  mask of all True; the single learned token then queries the audio/visual vectors.

Direction ([C], ``ModelConfig.fusion_direction``): the seed summary calls the attention
"bidirectional" while Eq. 1 lets only text query. "text_queries" (default) is Eq. 1 as written;
"bidirectional" first lets the audio/visual vectors attend to the (masked) text,
``H_av <- CrossAttention(H_av, H_text, H_text) + H_av``, then applies Eq. 1-2 unchanged.

Padding never changes f_fusion: padded text positions are zeroed first, are masked as keys in the
self attention, and are excluded from the pooling. Every row needs at least one True in
``text_mask``.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class LearnedQuery(nn.Module):
    """One learned token standing in for H_text when the text modality is removed (B, 1, d_h)."""

    def __init__(self, d_h: int):
        super().__init__()
        self.token = nn.Parameter(torch.randn(1, 1, d_h) * 0.02)

    def forward(self, batch_size: int) -> torch.Tensor:
        return self.token.expand(batch_size, -1, -1)  # (B, 1, d_h) use with an all-True mask


class TextCentricFusion(nn.Module):
    """Eq. 1-2: text attends to the audio/visual vectors, then to itself; pooled to f_fusion."""

    def __init__(self, d_h: int, n_heads: int = 4, dropout: float = 0.1, direction: str = "text_queries"):
        super().__init__()
        self.direction = direction
        if direction == "bidirectional":  # created only when used: the default's parameters stay as they were
            self.norm_av_query = nn.LayerNorm(d_h)
            self.norm_text_kv = nn.LayerNorm(d_h)
            self.av_cross_attn = nn.MultiheadAttention(d_h, n_heads, batch_first=True)
        self.norm_query = nn.LayerNorm(d_h)
        self.norm_av = nn.LayerNorm(d_h)
        self.cross_attn = nn.MultiheadAttention(d_h, n_heads, batch_first=True)
        self.norm_self = nn.LayerNorm(d_h)
        self.self_attn = nn.MultiheadAttention(d_h, n_heads, batch_first=True)
        self.resid_drop = nn.Dropout(dropout)

    def forward(
        self,
        H_text: torch.Tensor,
        text_mask: torch.Tensor,
        H_av: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # H_text: (B, L_t, d_h), text_mask: (B, L_t) bool True = real token, H_av: (B, M, d_h) | None
        keep = text_mask.unsqueeze(-1)  # (B, L_t, 1)
        H_text = torch.where(keep, H_text, torch.zeros((), dtype=H_text.dtype, device=H_text.device))  # (B, L_t, d_h)

        if H_av is None or H_av.shape[1] == 0:
            Z_cross = H_text  # (B, L_t, d_h) no audio/visual: Eq. 1 reduces to the residual
        else:
            if self.direction == "bidirectional":
                H_av = self._av_attends_text(H_text, text_mask, H_av)  # (B, M, d_h)
            q = self.norm_query(H_text)  # (B, L_t, d_h)
            kv = self.norm_av(H_av)  # (B, M, d_h)
            cross, _ = self.cross_attn(q, kv, kv, need_weights=False)  # (B, L_t, d_h)
            Z_cross = self.resid_drop(cross) + H_text  # (B, L_t, d_h) Z_cross, Eq. 1

        z = self.norm_self(Z_cross)  # (B, L_t, d_h)
        attended, _ = self.self_attn(z, z, z, key_padding_mask=~text_mask, need_weights=False)  # (B, L_t, d_h)
        Z_self = self.resid_drop(attended) + Z_cross  # (B, L_t, d_h) Z_self, Eq. 2

        Z_self = torch.where(keep, Z_self, torch.zeros((), dtype=Z_self.dtype, device=Z_self.device))  # (B, L_t, d_h)
        n_valid = keep.sum(dim=1).clamp(min=1).to(Z_self.dtype)  # (B, 1)
        f_fusion = Z_self.sum(dim=1) / n_valid  # (B, d_h) f_fusion, mean over valid text positions
        return f_fusion

    def _av_attends_text(self, H_text: torch.Tensor, text_mask: torch.Tensor, H_av: torch.Tensor) -> torch.Tensor:
        """The "bidirectional" reading: each audio/visual vector attends to the valid text tokens."""
        kv = self.norm_text_kv(H_text)  # (B, L_t, d_h)
        q = self.norm_av_query(H_av)  # (B, M, d_h)
        attended, _ = self.av_cross_attn(q, kv, kv, key_padding_mask=~text_mask, need_weights=False)  # (B, M, d_h)
        return self.resid_drop(attended) + H_av  # (B, M, d_h)
