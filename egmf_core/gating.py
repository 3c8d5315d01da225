"""Hierarchical dynamic gating over the experts, Eq. 3, and the statistics that watch it.

    w_i        = GateNetwork(f_fusion_i)                              stage 1: expert preferences
    alpha_i    = Softmax(MLP(Concat(f_fusion_i, w_i)))                stage 2: context-aware weights
    f_enhanced = sum_k alpha_ik * E_k(f_fusion_i) + beta_i * f_fusion_i

Choices where the paper is silent ([C]):
- GateNetwork = Linear(d_h, K) followed by a softmax, so w_i is a distribution over experts.
- MLP = Linear(d_h + K, hidden) -> GELU -> Linear(hidden, K); ``hidden`` is
  ``ModelConfig.gate_hidden``, d_h when unset.
- beta_i (``ModelConfig.beta_mode``): "learned" = sigmoid(Linear(Concat(f_fusion_i, w_i))), a
  per-sample residual weight in (0, 1); "fixed" = 1, a plain residual connection.
- Modes (``ModelConfig.gating``): "hierarchical" (both stages), "single_stage" (alpha = w, the
  MLP is not built), "uniform" (alpha = w = 1/K, neither GateNetwork nor MLP is built).
- With one expert (K = 1) alpha = w = 1 and no gate layers are built: a softmax over one
  logit is constant, so they could never learn anything.

Only the layers a mode uses are built, so every parameter of this module receives a gradient.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn

# Collapse thresholds for GatingStats (the paper's failure signature: "all alpha_i converge to
# a uniform distribution"; the opposite failure, one expert always winning, is checked too).
# Normalised entropy H(alpha)/log K above 0.98 means alpha is within about 0.07 of 1/K per
# expert (K=3: (0.40, 0.33, 0.27) scores 0.988; K=2: (0.58, 0.42) scores 0.981).
UNIFORM_ENTROPY_THRESHOLD = 0.98
# One expert above 0.95 means the others together get under 5%: the gate is a hard selector.
DOMINANT_ALPHA_THRESHOLD = 0.95
# "(Nearly) all samples": a collapse is declared when at least this share of samples shows it,
# so that a handful of outliers cannot hide it.
COLLAPSE_SAMPLE_SHARE = 0.95
# Static gating: alpha's standard deviation across samples below this for every expert means the
# gate ignores its input (context-independent), reported as ``gating_static`` beside collapse.
STATIC_ALPHA_STD = 0.01

# Regression labels are binned by sign for per-bin alpha means: negative / neutral / positive,
# neutral when |y| <= the dataset spec's ``neutral_band`` (egmf_core/data/dataset.py).
SENTIMENT_BIN_NAMES = ("negative", "neutral", "positive")


class GatingStatsError(ValueError):
    """GatingStats was fed inconsistent batches or asked for statistics before any sample."""


class GateOutput(NamedTuple):
    """The gate's per-sample coefficients of Eq. 3."""

    alpha: torch.Tensor  # (B, K) alpha_i, sums to 1 over K
    beta: torch.Tensor  # (B, 1) beta_i, residual weight
    w: torch.Tensor  # (B, K) w_i, stage-1 expert preferences


class HierarchicalGating(nn.Module):
    """Eq. 3: two-stage gate (w_i, then alpha_i) mixing expert outputs plus a beta_i residual."""

    def __init__(
        self,
        d_h: int,
        n_experts: int,
        mode: str = "hierarchical",
        beta_mode: str = "learned",
        hidden: int | None = None,
    ):
        super().__init__()  # mode, beta_mode and the experts checked once, by config.validate
        self.n_experts = n_experts
        self.mode = mode
        self.beta_mode = beta_mode
        hidden = hidden or d_h
        K = n_experts
        learns_gate = mode != "uniform" and K > 1
        self.gate_network = nn.Linear(d_h, K) if learns_gate else None
        self.alpha_mlp = (
            nn.Sequential(nn.Linear(d_h + K, hidden), nn.GELU(), nn.Linear(hidden, K))
            if learns_gate and mode == "hierarchical"
            else None
        )
        self.beta_head = nn.Linear(d_h + K, 1) if beta_mode == "learned" else None

    def forward(self, f_fusion: torch.Tensor, expert_out: torch.Tensor) -> tuple[torch.Tensor, GateOutput]:
        # f_fusion: (B, d_h), expert_out: (B, K, d_h) stacked E_k(f_fusion)
        B, K = f_fusion.shape[0], self.n_experts
        if self.gate_network is not None:
            w = torch.softmax(self.gate_network(f_fusion).float(), dim=-1)  # (B, K) w_i = GateNetwork(f_fusion_i)
        else:
            w = torch.full((B, K), 1.0 / K, device=f_fusion.device)  # (B, K) uniform / single expert
        f_w = torch.cat([f_fusion, w.to(f_fusion.dtype)], dim=-1)  # (B, d_h + K) Concat(f_fusion_i, w_i)

        if self.alpha_mlp is not None:
            alpha = torch.softmax(self.alpha_mlp(f_w).float(), dim=-1)  # (B, K) alpha_i = Softmax(MLP(.))
        else:
            alpha = w  # (B, K) single_stage: alpha_i = w_i; uniform: 1/K; K = 1: 1

        if self.beta_head is not None:
            beta = torch.sigmoid(self.beta_head(f_w).float())  # (B, 1) beta_i in (0, 1)
        else:
            beta = torch.ones(B, 1, device=f_fusion.device)  # (B, 1) beta_i = 1, plain residual

        mixed = torch.einsum("bk,bkd->bd", alpha.to(expert_out.dtype), expert_out)  # (B, d_h) sum_k alpha_ik E_k
        f_enhanced = mixed + beta.to(f_fusion.dtype) * f_fusion  # (B, d_h) f_enhanced, Eq. 3
        return f_enhanced, GateOutput(alpha=alpha, beta=beta, w=w)


def sentiment_bin(scores, neutral_band: float) -> np.ndarray:
    """Bins sentiment scores into 0 negative, 1 neutral (|y| <= band), 2 positive (int64).

    >>> sentiment_bin([-1.2, -0.5, 0.0, 0.4, 2.0], neutral_band=0.5).tolist()
    [0, 1, 1, 1, 2]
    """
    y = np.asarray(scores, dtype=np.float64).reshape(-1)
    bins = np.where(y < -neutral_band, 0, np.where(y > neutral_band, 2, 1))
    return bins.astype(np.int64)


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


class GatingStats:
    """Accumulates alpha_i and beta_i over evaluation batches and summarises them (JSON-ready).

    Usage: ``stats.update(gate_output, labels)`` per batch (labels: class indices, or regression
    scores already binned by ``sentiment_bin``), then ``stats.as_dict(expert_names, label_names)``.
    """

    def __init__(self):
        self._alpha: list[np.ndarray] = []
        self._beta: list[np.ndarray] = []
        self._labels: list[np.ndarray | None] = []

    def __len__(self) -> int:
        return sum(a.shape[0] for a in self._alpha)

    def update(self, gate_output: GateOutput, labels=None) -> None:
        alpha = _to_numpy(gate_output.alpha).astype(np.float64)  # (B, K)
        beta = _to_numpy(gate_output.beta).astype(np.float64).reshape(-1)  # (B,)
        if self._alpha and alpha.shape[1] != self._alpha[0].shape[1]:
            raise GatingStatsError(
                f"GatingStats.update: alpha has K={alpha.shape[1]}, earlier batches K={self._alpha[0].shape[1]}"
            )
        if self._labels and (labels is None) != (self._labels[0] is None):
            raise GatingStatsError("GatingStats.update: labels given for some batches and not others")
        if labels is not None:
            labels = _to_numpy(labels).astype(np.int64).reshape(-1)
            if labels.shape[0] != alpha.shape[0]:
                raise GatingStatsError(f"GatingStats.update: {labels.shape[0]} labels for {alpha.shape[0]} samples")
        self._alpha.append(alpha)
        self._beta.append(beta)
        self._labels.append(labels)

    def alphas(self) -> np.ndarray:
        """Per-sample alpha, (N, K)."""
        return np.concatenate(self._alpha, axis=0) if self._alpha else np.zeros((0, 0))

    def betas(self) -> np.ndarray:
        """Per-sample beta, (N,)."""
        return np.concatenate(self._beta, axis=0) if self._beta else np.zeros((0,))

    def labels(self) -> np.ndarray | None:
        """Per-sample integer labels, (N,), or None when none were given."""
        if not self._labels or self._labels[0] is None:
            return None
        return np.concatenate(self._labels, axis=0)

    def as_dict(self, expert_names: list[str], label_names: list[str] | None = None) -> dict:
        """Summary statistics as plain floats, lists and dicts.

        Keys: n_samples, experts, alpha_mean / alpha_std {expert: float} (std across samples),
        beta_mean, beta_std, entropy_mean (nats), entropy_normalised_mean (H / log K; 1.0 =
        uniform), top_expert_share {expert: share of samples whose argmax alpha is it; ties go
        to the earlier expert}, and when labels were given label_counts {label: n} and
        alpha_mean_by_label {label: {expert: float}} (labels without a name keep their index as
        a string), gating_collapse (bool), gating_collapse_reason (str), gating_static (bool).
        """
        alpha, beta, labels = self.alphas(), self.betas(), self.labels()
        if alpha.shape[0] == 0:
            raise GatingStatsError("GatingStats.as_dict: no samples were recorded")
        N, K = alpha.shape
        if len(expert_names) != K:
            raise GatingStatsError(f"GatingStats.as_dict: expert_names has {len(expert_names)} names for K={K}")
        names = list(expert_names)

        p = np.clip(alpha, 1e-12, 1.0)
        entropy = -(alpha * np.log(p)).sum(axis=1)  # (N,) H(alpha_i) in nats, 0 log 0 = 0
        norm_entropy = entropy / math.log(K) if K > 1 else np.zeros(N)  # (N,) 1.0 = uniform
        top = alpha.argmax(axis=1)  # (N,)

        out: dict = {
            "n_samples": int(N),
            "experts": names,
            "alpha_mean": {n: float(alpha[:, k].mean()) for k, n in enumerate(names)},
            "alpha_std": {n: float(alpha[:, k].std()) for k, n in enumerate(names)},
            "beta_mean": float(beta.mean()),
            "beta_std": float(beta.std()),
            "entropy_mean": float(entropy.mean()),
            "entropy_normalised_mean": float(norm_entropy.mean()) if K > 1 else 0.0,
            "top_expert_share": {n: float((top == k).mean()) for k, n in enumerate(names)},
        }

        if labels is not None:
            present = sorted(set(labels.tolist()))
            def label_name(j: int) -> str:
                return label_names[j] if label_names is not None and 0 <= j < len(label_names) else str(j)
            out["label_counts"] = {label_name(j): int((labels == j).sum()) for j in present}
            out["alpha_mean_by_label"] = {
                label_name(j): {n: float(alpha[labels == j, k].mean()) for k, n in enumerate(names)}
                for j in present
            }

        out["gating_collapse"], out["gating_collapse_reason"] = _collapse_verdict(alpha, norm_entropy, names)
        out["gating_static"] = bool(K > 1 and float(alpha.std(axis=0).max()) < STATIC_ALPHA_STD)
        return out


def _collapse_verdict(alpha: np.ndarray, norm_entropy: np.ndarray, names: list[str]) -> tuple[bool, str]:
    """(collapsed, reason): near-uniform alpha everywhere, or one expert dominating everywhere."""
    K = alpha.shape[1]
    if K == 1:
        return False, "single expert"
    uniform_share = float((norm_entropy > UNIFORM_ENTROPY_THRESHOLD).mean())
    if uniform_share >= COLLAPSE_SAMPLE_SHARE:
        return True, (
            f"near-uniform alpha: normalised entropy > {UNIFORM_ENTROPY_THRESHOLD} "
            f"on {uniform_share:.1%} of samples"
        )
    dominant_share = (alpha > DOMINANT_ALPHA_THRESHOLD).mean(axis=0)  # (K,)
    k = int(dominant_share.argmax())
    if dominant_share[k] >= COLLAPSE_SAMPLE_SHARE:
        return True, (
            f"expert {names[k]} dominates: alpha > {DOMINANT_ALPHA_THRESHOLD} "
            f"on {float(dominant_share[k]):.1%} of samples"
        )
    return False, (
        f"no collapse: near-uniform on {uniform_share:.1%}, "
        f"{names[k]} dominant on {float(dominant_share[k]):.1%} of samples"
    )
