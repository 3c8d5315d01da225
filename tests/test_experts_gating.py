"""Experts and hierarchical gating (Eq. 3), and the GatingStats summary and collapse flag."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from egmf_core.config import ACTIVATIONS, ConfigError, ModelConfig, RunConfig, apply_overrides, validate
from egmf_core.experts import ExpertBank
from egmf_core.gating import (
    GateOutput,
    GatingStats,
    GatingStatsError,
    HierarchicalGating,
    sentiment_bin,
)

D_H = 64
CFG = ModelConfig()


def _bank(names):
    return ExpertBank(D_H, names, CFG.expert_ratio, CFG.expert_activation, dropout=0.0)


# ---- experts -------------------------------------------------------------------------------

def test_bottleneck_widths_and_activations_follow_the_config():
    bank = _bank(["E1", "E2", "E3"])
    assert [bank.experts[n].hidden for n in bank.names] == [8, 16, 32]  # 64/8, 64/4, 64/2
    assert [bank.experts[n].down.out_features for n in bank.names] == [8, 16, 32]
    assert isinstance(bank.experts["E1"].act, nn.Mish)
    assert isinstance(bank.experts["E2"].act, nn.GELU)
    assert isinstance(bank.experts["E3"].act, nn.SiLU)  # Swish
    swapped = ExpertBank(D_H, ["E1"], {"E1": 2, "E2": 4, "E3": 8}, {"E1": "tanh", "E2": "gelu", "E3": "relu"})
    assert swapped.experts["E1"].hidden == 32 and isinstance(swapped.experts["E1"].act, nn.Tanh)


def test_the_config_makes_the_experts_order_canonical_and_the_bank_stacks_in_it():
    given = RunConfig()
    given.model.experts = ["E3", "E1"]
    cfg = validate(given)
    assert cfg.model.experts == ["E1", "E3"] and given.model.experts == ["E3", "E1"]  # a new config, not in place
    assert apply_overrides(RunConfig(), {"model.experts": ["E3", "E1"]}).model.experts == ["E1", "E3"]
    bank = _bank(cfg.model.experts)
    assert bank.names == ["E1", "E3"] and len(bank) == 2
    f = torch.randn(5, D_H)
    out = bank(f)
    assert out.shape == (5, 2, D_H)
    torch.testing.assert_close(out[:, 1], bank.experts["E3"](f))


def test_expert_errors_name_the_field_at_the_boundary():
    with pytest.raises(ConfigError, match="model.experts"):
        apply_overrides(RunConfig(), {"model.experts": ["E4"]})
    with pytest.raises(ConfigError, match="model.expert_activation"):
        apply_overrides(RunConfig(), {"model.expert_activation": {"E1": "softplus", "E2": "gelu", "E3": "mish"}})
    assert set(ACTIVATIONS) == {"mish", "gelu", "swish", "relu", "tanh"}


# ---- gating --------------------------------------------------------------------------------

@pytest.mark.parametrize("names", [["E1", "E2", "E3"], ["E1", "E3"], ["E2"]])
@pytest.mark.parametrize("mode", ["hierarchical", "single_stage", "uniform"])
def test_alpha_is_a_distribution_over_the_selected_experts(names, mode):
    torch.manual_seed(0)
    bank, gate = _bank(names), HierarchicalGating(D_H, len(names), mode=mode)
    f = torch.randn(7, D_H)
    _, g = gate(f, bank(f))
    assert g.alpha.shape == (7, len(names)) and g.w.shape == (7, len(names)) and g.beta.shape == (7, 1)
    torch.testing.assert_close(g.alpha.sum(dim=1), torch.ones(7))
    if len(names) == 1:
        assert torch.equal(g.alpha, torch.ones(7, 1))


def test_uniform_mode_gives_exactly_one_over_k_and_builds_no_gate():
    gate = HierarchicalGating(D_H, 3, mode="uniform")
    _, g = gate(torch.randn(4, D_H), torch.randn(4, 3, D_H))
    assert torch.equal(g.alpha, torch.full((4, 3), 1.0 / 3)) and torch.equal(g.w, g.alpha)
    assert gate.gate_network is None and gate.alpha_mlp is None


def test_single_stage_alpha_equals_w():
    gate = HierarchicalGating(D_H, 3, mode="single_stage")
    _, g = gate(torch.randn(4, D_H), torch.randn(4, 3, D_H))
    assert torch.equal(g.alpha, g.w) and gate.alpha_mlp is None
    assert g.alpha.std() > 0  # input-dependent, not uniform


def test_hierarchical_alpha_differs_from_w_and_between_samples():
    torch.manual_seed(0)
    gate = HierarchicalGating(D_H, 3)
    _, g = gate(torch.randn(4, D_H), torch.randn(4, 3, D_H))
    assert (g.alpha - g.w).abs().max() > 1e-4
    assert (g.alpha[0] - g.alpha[1]).abs().max() > 1e-4


def test_beta_in_open_unit_interval_when_learned_and_one_when_fixed():
    f, e = torch.randn(16, D_H) * 10, torch.randn(16, 3, D_H)
    _, g = HierarchicalGating(D_H, 3, beta_mode="learned")(f, e)
    assert (g.beta > 0).all() and (g.beta < 1).all() and g.beta.std() > 0
    fixed = HierarchicalGating(D_H, 3, beta_mode="fixed")
    _, g = fixed(f, e)
    assert torch.equal(g.beta, torch.ones(16, 1)) and fixed.beta_head is None


@pytest.mark.parametrize("beta_mode", ["learned", "fixed"])
def test_f_enhanced_matches_eq3_by_hand(beta_mode):
    torch.manual_seed(0)
    bank, gate = _bank(["E1", "E2", "E3"]), HierarchicalGating(D_H, 3, beta_mode=beta_mode)
    f = torch.randn(5, D_H)
    experts = bank(f)
    f_enhanced, g = gate(f, experts)
    for i in range(5):
        by_hand = sum(g.alpha[i, k] * bank.experts[n](f[i : i + 1])[0] for k, n in enumerate(bank.names))
        by_hand = by_hand + g.beta[i, 0] * f[i]
        torch.testing.assert_close(f_enhanced[i], by_hand)
    # and the stage-2 formula: alpha = Softmax(MLP(Concat(f, w)))
    torch.testing.assert_close(g.alpha, torch.softmax(gate.alpha_mlp(torch.cat([f, g.w], dim=-1)), dim=-1))


def test_every_gate_parameter_gets_a_gradient():
    for mode in ["hierarchical", "single_stage", "uniform"]:
        gate = HierarchicalGating(D_H, 3, mode=mode)
        f, e = torch.randn(4, D_H), torch.randn(4, 3, D_H)
        out, _ = gate(f, e)
        (out ** 2).sum().backward()
        missing = [n for n, p in gate.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert missing == [], (mode, missing)


def test_gating_errors_name_the_field_at_the_boundary():
    with pytest.raises(ConfigError, match="model.gating"):
        apply_overrides(RunConfig(), {"model.gating": "softmax"})
    with pytest.raises(ConfigError, match="model.beta_mode"):
        apply_overrides(RunConfig(), {"model.beta_mode": "zero"})


# ---- GatingStats ---------------------------------------------------------------------------

def _stats(alpha, beta=None, labels=None) -> GatingStats:
    alpha = torch.as_tensor(alpha, dtype=torch.float32)
    beta = torch.full((alpha.shape[0], 1), 0.5) if beta is None else torch.as_tensor(beta).reshape(-1, 1)
    stats = GatingStats()
    half = alpha.shape[0] // 2  # two batches
    for sl in (slice(0, half), slice(half, None)):
        stats.update(GateOutput(alpha=alpha[sl], beta=beta[sl], w=alpha[sl]), None if labels is None else labels[sl])
    return stats


def test_stats_means_entropy_and_top_share_by_hand():
    alpha = [[0.5, 0.5], [1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    d = _stats(alpha, beta=[0.2, 0.4, 0.6, 0.8], labels=np.array([0, 0, 1, 1])).as_dict(
        ["E1", "E3"], label_names=["neutral", "joy"]
    )
    assert d["n_samples"] == 4 and d["experts"] == ["E1", "E3"]
    assert d["alpha_mean"] == pytest.approx({"E1": 0.5, "E3": 0.5})
    assert d["alpha_std"]["E1"] == pytest.approx(np.std([0.5, 1, 0.5, 0]))
    assert d["beta_mean"] == pytest.approx(0.5)
    assert d["entropy_mean"] == pytest.approx(math.log(2) / 2)  # two uniform rows, two one-hot rows
    assert d["entropy_normalised_mean"] == pytest.approx(0.5)
    assert d["top_expert_share"] == pytest.approx({"E1": 0.75, "E3": 0.25})  # ties go to the first
    assert d["alpha_mean_by_label"]["neutral"] == pytest.approx({"E1": 0.75, "E3": 0.25})
    assert d["alpha_mean_by_label"]["joy"] == pytest.approx({"E1": 0.25, "E3": 0.75})
    assert d["label_counts"] == {"neutral": 2, "joy": 2}
    json.dumps(d)  # plain floats, lists, dicts
    assert _stats(alpha).alphas().shape == (4, 2)


def test_collapse_flag_uniform_one_hot_and_varied():
    n = 40
    uniform = _stats(np.full((n, 3), 1 / 3)).as_dict(["E1", "E2", "E3"])
    assert uniform["gating_collapse"] and "uniform" in uniform["gating_collapse_reason"]
    one_hot = np.zeros((n, 3))
    one_hot[:, 1] = 0.99
    one_hot[:, 0] = 0.01
    dominated = _stats(one_hot).as_dict(["E1", "E2", "E3"])
    assert dominated["gating_collapse"] and "E2 dominates" in dominated["gating_collapse_reason"]
    rng = np.random.default_rng(0)
    varied = rng.dirichlet([0.7, 0.7, 0.7], size=n)
    v = _stats(varied).as_dict(["E1", "E2", "E3"])
    assert not v["gating_collapse"] and not v["gating_static"]
    single = _stats(np.ones((n, 1))).as_dict(["E1"])
    assert single["gating_collapse"] is False and single["gating_collapse_reason"] == "single expert"


def test_static_flag_for_input_independent_alpha():
    d = _stats(np.tile([0.6, 0.3, 0.1], (10, 1))).as_dict(["E1", "E2", "E3"])
    assert d["gating_static"] and not d["gating_collapse"]


def test_stats_on_a_real_gate_and_label_binning():
    gate, stats = HierarchicalGating(D_H, 2), GatingStats()
    scores = torch.tensor([-2.0, -0.5, 0.0, 0.3, 0.6, 3.0])
    bins = sentiment_bin(scores, neutral_band=0.5)
    assert bins.tolist() == [0, 1, 1, 1, 2, 2]
    _, g = gate(torch.randn(6, D_H), torch.randn(6, 2, D_H))
    stats.update(g, bins)
    d = stats.as_dict(["E1", "E2"], label_names=["negative", "neutral", "positive"])
    assert d["label_counts"] == {"negative": 1, "neutral": 3, "positive": 2}
    np.testing.assert_allclose(stats.alphas(), g.alpha.detach().numpy(), rtol=1e-6)
    with pytest.raises(GatingStatsError):
        GatingStats().as_dict(["E1"])


def test_a_reordered_expert_list_is_the_same_model_with_alphas_named_right():
    """["E3", "E1"] is ["E1", "E3"]: same run id, and alpha columns follow the K axis, not the list order."""
    from egmf_core.config import RunConfig, apply_overrides, config_hash

    base = RunConfig()
    a = apply_overrides(base, {"model.experts": ["E3", "E1"]})
    b = apply_overrides(base, {"model.experts": ["E1", "E3"]})
    assert a.model.experts == ["E1", "E3"] and config_hash(a) == config_hash(b)


def test_evaluate_names_alpha_columns_in_the_models_k_order():
    """E1's alpha is named E1: the boundary makes ["E3", "E1"] canonical and the K axis follows it."""
    import torch

    from egmf_core.batching import PromptEncoder
    from egmf_core.data.dataset import SPECS
    from egmf_core.run import build_model
    from egmf_core.train import evaluate
    from tests.conftest import make_split, tiny_model_config, tiny_train_config

    cfg = RunConfig(model=tiny_model_config(experts=["E3", "E1"]), train=tiny_train_config(eval_mode="score"))
    cfg = validate(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, name="meld")))
    split = make_split(12, "meld", seed=3)
    model, tok, _ = build_model(cfg, 6, 5, device=torch.device("cpu"))
    encoder = PromptEncoder(tok, SPECS["meld"], cfg.model)
    res = evaluate(model, encoder.encode(split), encoder, cfg.train, mode="score",
                   train_labels=split.labels)
    assert model.experts.names == ["E1", "E3"]
    assert list(res.gating["alpha_mean"]) == ["E1", "E3"]
