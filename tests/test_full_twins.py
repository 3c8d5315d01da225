"""Full-size twins: the published architectures' sizes (meta device), and on-device init (scaled down)."""

from __future__ import annotations

import pytest
import torch

from egmf_core import full_twins
from egmf_core.full_twins import build_full_twin, full_twin_tokenizer, pad_vocabulary

PUBLISHED = {"glm3": 6.24e9, "glm4": 9.40e9, "llama3": 8.03e9}


@pytest.mark.parametrize("family", sorted(PUBLISHED))
def test_meta_build_has_the_published_parameter_count(family):
    model, built = build_full_twin(family, device="meta")
    assert abs(built.n_params - PUBLISHED[family]) / PUBLISHED[family] < 0.01
    assert built.weight_bytes == 2 * built.n_params  # bf16
    assert all(p.device.type == "meta" for p in model.parameters())


SMALL = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 300}


@pytest.mark.parametrize("family", ["glm4", "llama3"])
def test_init_on_device_draws_weights_and_recomputes_rope(monkeypatch, family):
    name = "GLM4_9B" if family == "glm4" else "LLAMA3_8B"
    monkeypatch.setattr(full_twins, name, {**getattr(full_twins, name), **SMALL,
                                           "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": None})
    model, built = build_full_twin(family, device="cpu", dtype=torch.float32, seed=3)
    reference = full_twins._model_class(family)(full_twins.full_config(family))
    assert torch.equal(model.model.rotary_emb.inv_freq, reference.model.rotary_emb.inv_freq)
    assert torch.all(model.model.norm.weight == 1)
    std = model.model.layers[0].mlp.down_proj.weight.std().item()
    assert 0.015 < std < 0.025
    again, _ = build_full_twin(family, device="cpu", dtype=torch.float32, seed=3)
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)  # seeded
    logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 300) and torch.isfinite(logits).all()


@pytest.mark.parametrize("family", ["glm3", "glm4", "llama3"])
def test_twin_tokenizer_has_the_real_length_and_encodes_like_the_tiny_one(tmp_path, family):
    from egmf_core.tokenizer_twin import build_twin_tokenizer

    tiny = build_twin_tokenizer(family, None, tmp_path)
    full = full_twin_tokenizer(family)
    text = "the movie was good, 电影很好"
    assert len(full) == full_twins.TOKENIZER_LENGTHS[family]
    assert full(text)["input_ids"] == tiny(text)["input_ids"]
    assert (full.eos_token_id, full.pad_token_id) == (tiny.eos_token_id, tiny.pad_token_id)
    assert pad_vocabulary(full, 10) is full  # already long enough: unchanged
