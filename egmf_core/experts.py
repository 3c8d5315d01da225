"""The three experts E_k of Eq. 3, each a bottleneck network on f_fusion.

The paper [S] gives each expert a role, a bottleneck ratio and an activation:
E1 fine-grained local (1:8, Mish), E2 semantic correlation (1:4, GELU), E3 global context
(1:2, Swish); the pairing is the default of ``ModelConfig.expert_ratio`` and
``ModelConfig.expert_activation``. The rest of the structure is ours ([C]):

    E_k(f) = Linear_up(dropout(act(Linear_down(LayerNorm(f)))))

LayerNorm (so each expert sees a normalised f_fusion whatever its scale) and the
up-projection back to d_h (so E_k(f) can be summed with f in Eq. 3) are our additions.
The hidden width is ``d_h // ratio`` (d_h=256: 32, 64, 128 units).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from egmf_core.config import ACTIVATIONS

# The layer for each activation name of config.ACTIVATIONS (same order).
ACTIVATION_LAYERS = dict(zip(ACTIVATIONS, (nn.Mish, nn.GELU, nn.SiLU, nn.ReLU, nn.Tanh), strict=True))


class Expert(nn.Module):
    """One bottleneck expert E_k: LayerNorm -> Linear(d_h, d_h//ratio) -> act -> dropout -> Linear(., d_h)."""

    def __init__(self, d_h: int, ratio: int, activation: str, dropout: float = 0.1):
        super().__init__()  # ratio and activation checked once, by config.validate
        self.hidden = d_h // ratio  # bottleneck width, e.g. 256 // 8 = 32
        self.activation = activation
        self.norm = nn.LayerNorm(d_h)
        self.down = nn.Linear(d_h, self.hidden)
        self.act = ACTIVATION_LAYERS[activation]()
        self.drop = nn.Dropout(dropout)
        self.up = nn.Linear(self.hidden, d_h)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        # f: (B, d_h) f_fusion
        h = self.drop(self.act(self.down(self.norm(f))))  # (B, d_h // ratio)
        return self.up(h)  # (B, d_h) E_k(f_fusion)


class ExpertBank(nn.Module):
    """The selected experts, in the order given (canonical, from a validated config); stacks their outputs on axis K."""

    def __init__(
        self,
        d_h: int,
        names: list[str],
        ratios: dict[str, int],
        activations: dict[str, str],
        dropout: float = 0.1,
    ):
        super().__init__()
        self.names = list(names)  # K axis order: config.validate makes model.experts canonical (E1, E2, E3)
        self.experts = nn.ModuleDict(
            {n: Expert(d_h, ratios[n], activations[n], dropout) for n in self.names}
        )

    def __len__(self) -> int:
        return len(self.names)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        # f: (B, d_h) f_fusion
        return torch.stack([self.experts[n](f) for n in self.names], dim=1)  # (B, K, d_h) E_k(f_fusion)
