"""EGMF end to end on a tiny twin: padding, ablation switches, LoRA counts, prompts, decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from egmf_core.batching import PromptEncoder, collate
from egmf_core.config import RunConfig, TrainConfig
from egmf_core.data.dataset import SPECS
from egmf_core.run import build_model
from tests.conftest import make_split, tiny_model_config


def _build(**model_overrides):
    cfg = RunConfig(model=tiny_model_config(**model_overrides), seed=1)
    model, tok, info = build_model(cfg, audio_dim=6, vision_dim=5, device=torch.device("cpu"))
    model.eval()
    return model, tok, info, cfg


def _batch(model, tok, split, idx, with_answer, spec="meld"):
    enc = PromptEncoder(tok, SPECS[spec], model.cfg)
    e = enc.encode(split)
    return collate(e, idx, with_answer=with_answer), enc, e


@pytest.fixture(scope="module")
def split():
    return make_split(12, "meld", seed=3)


def test_padding_never_changes_the_loss_or_the_pseudo_tokens(split):
    model, tok, _, _ = _build()
    alone, _, _ = _batch(model, tok, split, [0], with_answer=True)
    # Sample 0 batched with longer samples gets padding in text, prompt, audio and vision.
    longest = int(np.argmax([len(t) for t in split.text]))
    together, _, _ = _batch(model, tok, split, [0, longest, 5], with_answer=True)
    with torch.no_grad():
        t_alone, _ = model.fuse(alone)
        t_tog, _ = model.fuse(together)
        assert torch.allclose(t_alone[0], t_tog[0], atol=1e-5)
        # Loss of sample 0 alone == per-token loss of row 0 inside the padded batch.
        emb, _ = model.prompt_embeds(together)
        logits = model.llm(inputs_embeds=emb, attention_mask=together["attention_mask"],
                           position_ids=together["position_ids"]).logits
        lab = together["labels"][0, 1:]
        row = torch.nn.functional.cross_entropy(logits[0, :-1][lab != -100], lab[lab != -100])
        loss_alone, _ = model(alone)
    assert torch.allclose(row, loss_alone, atol=1e-5)


@pytest.mark.parametrize("backbone", ["glm3-tiny", "glm4-tiny", "llama3-tiny"])
def test_the_answer_only_loss_equals_the_loss_over_all_logits(split, backbone):
    model, tok, _, _ = _build(backbone=backbone)
    batch, _, _ = _batch(model, tok, split, list(range(8)), with_answer=True)
    # eval mode: no dropout, so both passes see the same network; gradients flow all the same
    loss, _ = model(batch)
    emb, _ = model.prompt_embeds(batch)
    full = model.llm(inputs_embeds=emb, attention_mask=batch["attention_mask"], position_ids=batch["position_ids"],
                     labels=batch["labels"], use_cache=False).loss  # HF: the LM head over every position
    assert torch.allclose(loss, full, atol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    mine = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    ref = torch.autograd.grad(full, params, allow_unused=True)
    assert all((a is None and b is None) or torch.allclose(a, b, atol=1e-5) for a, b in zip(mine, ref))


def test_left_padded_prompts_give_the_same_next_token_logits(split):
    model, tok, _, _ = _build()
    alone, _, _ = _batch(model, tok, split, [2], with_answer=False)
    together, _, _ = _batch(model, tok, split, [2, 7, 9], with_answer=False)
    with torch.no_grad():
        la = model.llm(inputs_embeds=model.prompt_embeds(alone)[0], attention_mask=alone["attention_mask"],
                       position_ids=alone["position_ids"]).logits[0, -1]
        lt = model.llm(inputs_embeds=model.prompt_embeds(together)[0], attention_mask=together["attention_mask"],
                       position_ids=together["position_ids"]).logits[0, -1]
    assert torch.allclose(la, lt, atol=1e-4)


def test_alpha_sums_to_one_and_follows_the_expert_subset(split):
    model, tok, _, _ = _build(experts=["E1", "E3"])
    batch, _, _ = _batch(model, tok, split, range(4), with_answer=False)
    with torch.no_grad():
        _, gate = model.fuse(batch)
    assert gate.alpha.shape == (4, 2)
    assert torch.allclose(gate.alpha.sum(-1), torch.ones(4), atol=1e-6)
    assert list(model.experts.names) == ["E1", "E3"]


@pytest.mark.parametrize("drop", ["audio", "visual"])
def test_dropping_a_modality_removes_its_path(split, drop):
    mods = [m for m in ("text", "audio", "visual") if m != drop]
    model, tok, _, _ = _build(modalities=mods)
    assert (model.audio_enc is None) == (drop == "audio")
    assert (model.visual_enc is None) == (drop == "visual")
    batch, _, _ = _batch(model, tok, split, range(3), with_answer=False)
    key = "audio" if drop == "audio" else "vision"
    changed = dict(batch)
    changed[key] = batch[key] + 100.0
    with torch.no_grad():
        assert torch.equal(model.fuse(batch)[0], model.fuse(changed)[0])


def test_removing_text_removes_it_from_fusion_and_prompt(split):
    model, tok, _, _ = _build(modalities=["audio", "visual"])
    assert model.text_proj is None and model.text_query is not None
    enc = PromptEncoder(tok, SPECS["meld"], model.cfg)
    ids, _ = enc.prompt_ids(enc.utterance_ids(split.text[0]))
    utt = enc.utterance_ids(split.text[0])
    as_text = tok.decode(ids)
    assert split.text[0] not in as_text and "Utterance" not in as_text
    # The prompt is the same for every sample once the utterance is gone.
    assert ids == enc.prompt_ids(enc.utterance_ids(split.text[1]))[0]
    full_model, _, _, _ = _build()
    full_enc = PromptEncoder(tok, SPECS["meld"], full_model.cfg)
    full_ids, _ = full_enc.prompt_ids(utt)
    assert len(full_ids) > len(ids)


def test_text_in_prompt_switch_off_keeps_text_in_fusion_only(split):
    model, tok, _, _ = _build(text_in_prompt=False)
    enc = PromptEncoder(tok, SPECS["meld"], model.cfg)
    ids, _ = enc.prompt_ids(enc.utterance_ids(split.text[0]))
    assert "Utterance" not in tok.decode(ids)
    assert model.text_proj is not None


def _count(model, pred):
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and pred(n))


def test_lora_off_trains_only_egmf_and_lora_on_adds_exactly_the_adapters():
    off, _, _, _ = _build(lora=False)
    on, _, _, _ = _build(lora=True, lora_r=4)
    egmf_off = sum(p.numel() for p in off.egmf_parameters())
    assert _count(off, lambda n: True) == egmf_off
    assert _count(off, lambda n: n.startswith("llm.")) == 0
    # LoRA adds r * (in + out) per targeted Linear layer, nothing else.
    expected = 0
    for name, mod in on.llm.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            base = mod.base_layer
            expected += 4 * (base.in_features + base.out_features)
    assert expected > 0
    assert _count(on, lambda n: n.startswith("llm.")) == expected
    assert _count(on, lambda n: not n.startswith("llm.")) == egmf_off


def test_train_config_defaults_follow_the_proxy():
    t = TrainConfig()
    assert (t.lr, t.batch_size, t.adam_eps, t.warmup_ratio) == (5e-5, 8, 1e-4, 0.1)
