"""The baselines behind EGMF's interface (egmf_core/baselines.py): built from model.method, trained by
the one loop, scored by the one evaluate(); TFN never loads an LLM; the main tables' baseline rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.execution.grid import GridArgs, expand
from benchmarks.execution.tables import load_table
from egmf_core.baselines import MSEAdapterModel, TFNModel
from egmf_core.batching import PromptEncoder, collate
from egmf_core.config import RunConfig
from egmf_core.outcome import RunOutcome
from egmf_core.run import build_model, evaluate_splits
from egmf_core.train import evaluate, fit
from tests.conftest import make_dataset, tiny_model_config, tiny_train_config


def _cfg(method: str, dataset: str, **model) -> RunConfig:
    lora = model.pop("lora", False)
    return RunConfig(seed=3, model=tiny_model_config(method=method, lora=lora, **model),
                     train=tiny_train_config(max_steps=6, eval_every=3), data=RunConfig().data.__class__(name=dataset))


def _train(method: str, dataset: str, **model):
    cfg = _cfg(method, dataset, **model)
    data = make_dataset(dataset)
    net, tok, info = build_model(cfg, data.audio_dim, data.vision_dim)
    encoder = PromptEncoder(tok, data.spec, cfg.model)
    enc = {s: encoder.encode(getattr(data, s)) for s in ("train", "valid", "test")}
    fr = fit(net, enc["train"], enc["valid"], encoder, cfg.train, seed=cfg.seed)
    return cfg, net, info, encoder, enc, fr


def test_collate_carries_each_samples_label_as_target():
    data = make_dataset("mosei")
    tok = build_model(_cfg("tfn", "mosei"), data.audio_dim, data.vision_dim)[1]
    enc = PromptEncoder(tok, data.spec, tiny_model_config()).encode(data.train)
    batch = collate(enc, [3, 0, 5], with_answer=True)
    assert torch.allclose(batch["target"].float(), torch.tensor(enc.labels[[3, 0, 5]]).float())


@pytest.fixture
def no_llm(monkeypatch):
    """Any way of building or reading LLM weights fails the test."""
    import transformers

    from egmf_core import backbones, twins

    def refuse(*a, **k):
        raise AssertionError("TFN loaded an LLM")

    monkeypatch.setattr(backbones, "build_backbone", refuse)
    monkeypatch.setattr(twins, "load_twin", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", refuse)


@pytest.mark.parametrize("dataset", ["mosei", "meld"])
def test_tfn_trains_and_evaluates_without_an_llm(dataset, no_llm):
    cfg, net, info, encoder, enc, fr = _train("tfn", dataset)
    assert isinstance(net, TFNModel) and fr.steps == 6 and info.n_params == 0 and "no LLM" in info.source
    assert not any("llm" in n for n, _ in net.named_parameters())
    res = evaluate(net, enc["test"], encoder, cfg.train, mode="generate", train_labels=enc["train"].labels)
    assert res.mode == "direct" and res.invalid_rate == 0.0 and res.gating == {} and res.valid.all()
    assert set(res.metrics) >= {encoder.spec.key_metric}
    if dataset == "mosei":
        assert np.all(np.abs(res.predictions) <= 3.0)  # clipped to the label range, as a parsed answer is
    outcome = RunOutcome(status="ok")
    evaluate_splits(outcome, net, enc, encoder, cfg)
    assert outcome.eval_modes == {"valid": "direct", "test": "direct"} and outcome.invalid_rate["test"] == 0.0


def test_mse_adapter_trains_behind_the_frozen_llm_without_lora():
    cfg, net, info, encoder, enc, fr = _train("mse_adapter", "meld")
    assert isinstance(net, MSEAdapterModel) and fr.steps == 6
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("adapter.") for n in trainable)  # LLM frozen, no LoRA
    assert not hasattr(net, "experts")  # none of EGMF's own modules
    res = evaluate(net, enc["test"], encoder, cfg.train, mode="generate", train_labels=enc["train"].labels)
    assert res.mode == "generate" and res.gating == {} and len(res.answers) == len(enc["test"])
    t_pseudo, gate = net.fuse(collate(enc["test"], [0, 1], with_answer=False))
    assert gate is None and t_pseudo.shape == (2, cfg.model.n_tokens, info.hidden_size)


def test_mse_adapter_with_lora_trains_the_adapters_too():
    net = _train("mse_adapter", "sims_v2", lora=True)[1]
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert any("lora" in n for n in trainable) and any(n.startswith("adapter.") for n in trainable)


def test_mse_adapter_uses_the_per_dataset_lstm_widths_unless_set():
    data = make_dataset("meld")
    net = build_model(_cfg("mse_adapter", "meld"), data.audio_dim, data.vision_dim)[0]
    assert (net.adapter.audio_enc.lstm.hidden_size, net.adapter.vision_enc.lstm.hidden_size) == (64, 32)
    net = build_model(_cfg("mse_adapter", "meld", mse_audio_lstm_hidden=8), data.audio_dim, data.vision_dim)[0]
    assert net.adapter.audio_enc.lstm.hidden_size == 8


@pytest.mark.parametrize("table", ["main_msa", "main_erc"])
def test_main_tables_train_each_baseline_on_egmfs_seeds(table):
    spec = load_table(table)
    assert [r.name for r in spec.rows] == ["EGMF", "MSE-Adapter", "TFN"]
    cells = expand(spec, "smoke", GridArgs())
    by_row: dict[str, set] = {}
    for c in cells:
        by_row.setdefault(c.row, set()).add((c.dataset, c.seed))
    assert by_row["MSE-Adapter"] == by_row["TFN"] == by_row["EGMF"]
    methods = {c.row: c.config.model.method for c in cells}
    assert methods == {"EGMF": "egmf", "MSE-Adapter": "mse_adapter", "TFN": "tfn"}
    mse = next(c.config for c in cells if c.row == "MSE-Adapter")
    tfn = next(c.config for c in cells if c.row == "TFN")
    assert mse.model.lora is False and mse.model.mse_d_mix == 64  # smoke size
    assert tfn.model.tfn_post_fusion_dim == 32 and tfn.train.lr == 5e-3
    paper = next(c.config for c in expand(spec, "paper", GridArgs(), check_roots=False) if c.row == "TFN")
    assert paper.model.tfn_post_fusion_dim == 128 and paper.train.lr == 5e-3  # the paper sizes


def test_baseline_claims_are_declared_per_dataset_and_not_planted():
    for table in ("main_msa", "main_erc"):
        spec = load_table(table)
        ids = {c.id for c in spec.claims if c.id.startswith("egmf_beats_")}
        assert ids == {f"egmf_beats_{m}_{d}" for m in ("mse_adapter", "tfn") for d in spec.datasets}
        assert not any(c.planted for c in spec.claims if c.id in ids)
