"""Pseudo tokens: T_pseudo = Repeat(Linear_proj(f_enhanced), n_tokens), injected into the prompt."""

from __future__ import annotations

import torch
from torch import nn


class PseudoTokenProjector(nn.Module):
    """Project f_enhanced to the LLM's hidden size and repeat it as n pseudo tokens.

    mode "repeat" is the paper's Repeat(Linear_proj(.)) [S]: n identical tokens, so the LLM tells
    them apart only by position. mode "distinct" [C] (a design-study option, off by default)
    projects to n different tokens.
    """

    def __init__(self, d_h: int, d_llm: int, n_tokens: int, mode: str = "repeat"):
        super().__init__()
        self.n_tokens = n_tokens
        self.mode = mode
        out = d_llm if mode == "repeat" else d_llm * n_tokens
        self.proj = nn.Linear(d_h, out)  # Linear_proj
        self.d_llm = d_llm

    def forward(self, f_enhanced: torch.Tensor) -> torch.Tensor:
        # f_enhanced: (B, d_h)
        z = self.proj(f_enhanced)  # (B, d_llm) or (B, n * d_llm)
        if self.mode == "repeat":
            return z.unsqueeze(1).expand(-1, self.n_tokens, -1)  # T_pseudo: (B, n, d_llm)
        return z.view(z.shape[0], self.n_tokens, self.d_llm)  # (B, n, d_llm)


def inject_pseudo_tokens(embeds: torch.Tensor, pseudo_index: torch.Tensor, t_pseudo: torch.Tensor) -> torch.Tensor:
    """Place T_pseudo at the placeholder positions of the embedded prompt.

    embeds (B, L, H) are E_prefix/E_suffix/P_task embeddings with placeholders; pseudo_index (B, n)
    holds each row's n placeholder positions, filled in order with t_pseudo (B, n, H):
    I_wrapped = [E_prefix; T_pseudo; E_suffix; P_task]. Positions come from the collator (host
    side), so the scatter needs no host sync, unlike a boolean mask. The collator sized its
    placeholders from the ModelConfig the encoder was given; they must be the model's n_tokens
    (a narrower index would scatter only part of T_pseudo, silently).
    """
    if pseudo_index.shape[1] != t_pseudo.shape[1]:  # shapes only: no host sync
        raise ValueError(f"model.n_tokens: the prompts hold {pseudo_index.shape[1]} placeholders, the model makes "
                         f"{t_pseudo.shape[1]} pseudo tokens (encode with the model's ModelConfig)")
    index = pseudo_index.unsqueeze(-1).expand(-1, -1, embeds.shape[-1])  # (B, n, H)
    return embeds.scatter(1, index, t_pseudo.to(embeds.dtype))  # (B, L, H)
