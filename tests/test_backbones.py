"""Backbones and tiny twins: family traits, cache, tokenizers, freezing, LoRA counts, real-layout loading, errors."""

from __future__ import annotations

import json

import pytest
import torch

from egmf_core import backbones as bb
from egmf_core.config import ModelConfig
from egmf_core.tokenizer_twin import build_bpe_tokenizer, default_corpus
from egmf_core.twins import TWIN_NAMES, build_twin, load_twin, save_twin_real_layout, twin_dir

FAMILIES = {"llama3-tiny": "llama3", "glm4-tiny": "glm4", "glm3-tiny": "glm3"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("egmf_cache")


@pytest.fixture(autouse=True)
def _isolated_cache(cache, monkeypatch):
    monkeypatch.setenv("EGMF_CACHE", str(cache))
    monkeypatch.delenv("EGMF_MODEL_ROOT", raising=False)


def logits(model, tokenizer, texts=("The emotion is joy.", "这句话的情绪是愤怒。")):
    batch = tokenizer(list(texts), return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def test_twins_keep_their_family_traits():
    llama, tok = load_twin("llama3-tiny")
    c = llama.config
    assert (c.model_type, c.hidden_size, c.num_hidden_layers, c.head_dim) == ("llama", 64, 2, 16)
    assert (c.num_attention_heads, c.num_key_value_heads) == (4, 1)  # GQA ratio 4 as 32/8
    assert c.rope_parameters["rope_theta"] == 500000.0 and not c.attention_bias and not c.mlp_bias
    assert c.vocab_size == len(tok) and tok("x")["input_ids"][0] == tok.convert_tokens_to_ids("<|begin_of_text|>")
    assert tok.eos_token == "<|eot_id|>"

    glm4, tok4 = load_twin("glm4-tiny")
    c = glm4.config
    assert (c.model_type, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == ("glm", 4, 1, 16)
    assert c.rope_parameters == {"rope_type": "default", "rope_theta": 5e6, "partial_rotary_factor": 0.5}
    assert c.attention_bias and glm4.model.layers[0].self_attn.q_proj.bias is not None
    assert tok4.convert_ids_to_tokens(tok4("x")["input_ids"][:2]) == ["[gMASK]", "<sop>"]
    assert c.eos_token_id == tok4.convert_tokens_to_ids(["<|endoftext|>", "<|user|>", "<|observation|>"])

    glm3, tok3 = load_twin("glm3-tiny")
    c = glm3.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.rope_parameters["rope_theta"]) == (4, 2, 10000.0)
    assert c.rope_parameters["partial_rotary_factor"] == 0.5 and c.attention_bias
    assert (tok3.pad_token, tok3.eos_token, c.pad_token_id, c.eos_token_id) == ("<unk>", "</s>", 0, 2)
    for model, t in ((glm4, tok4), (glm3, tok3)):  # GLM pads the embedding rows past the tokenizer
        assert model.config.vocab_size % 64 == 0 and len(t) <= model.config.vocab_size < len(t) + 64


@pytest.mark.parametrize("name", TWIN_NAMES)
def test_twin_build_is_deterministic_and_cached_copy_is_identical(name, cache):
    m1, t1 = build_twin(name, seed=0)
    m2, t2 = build_twin(name, seed=0)
    assert t1.backend_tokenizer.to_str() == t2.backend_tokenizer.to_str()
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    m3, _ = build_twin(name, seed=1)
    assert not torch.equal(m1.lm_head.weight, m3.lm_head.weight)
    cached, tok = load_twin(name)
    assert (twin_dir(name) / "twin.json").is_file() and str(twin_dir(name)).startswith(str(cache))
    assert torch.equal(logits(m1, t1), logits(cached, tok))


def test_fingerprint_changes_with_seed_and_corpus():
    assert twin_dir("glm4-tiny", seed=0) != twin_dir("glm4-tiny", seed=1)
    assert twin_dir("glm4-tiny") != twin_dir("glm4-tiny", corpus=["other text"])
    assert twin_dir("glm4-tiny") == twin_dir("glm4-tiny")


TEXTS = ["Hello, the emotion is surprise!", "情绪是高兴，分数 0.6。", "emoji 😀🎉 ok", "  tabs\tand\nlines  "]


@pytest.mark.parametrize("name", TWIN_NAMES)
def test_twin_tokenizers_round_trip_english_chinese_emoji(name):
    _, tok = load_twin(name)
    assert 256 + 6 < len(tok) <= 2100  # 256 bytes + merges + specials, kept small: the LM head dominates tiny-model cost
    for text in TEXTS:
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_bpe_tokenizer_is_deterministic_and_keeps_corpus_cjk_whole():
    corpus = ["情绪标签：愤怒、厌恶、恐惧、高兴、平静、悲伤、惊讶。", "The emotion is calm."]
    a, b = build_bpe_tokenizer("llama3", corpus), build_bpe_tokenizer("llama3", corpus)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    for ch in "愤怒厌恶恐惧高兴平静悲伤惊讶":  # each label character is one token, not 3 bytes
        assert len(a(ch, add_special_tokens=False)["input_ids"]) == 1, ch


def test_default_corpus_covers_both_languages_and_labels():
    text = "\n".join(default_corpus())
    for word in ("emotion", "sentiment", "score", "neutral", "disgust", "愤怒", "平静", "情感", "-", "."):
        assert word in text


@pytest.mark.parametrize("name", TWIN_NAMES)
def test_build_backbone_twin_is_frozen_float32_on_cpu(name):
    model, tok, info = bb.build_backbone(ModelConfig(backbone=name), device="cpu")
    assert all(not p.requires_grad for p in model.parameters())
    assert (info.family, info.hidden_size, info.n_layers, info.dtype, info.device) == (FAMILIES[name], 64, 2, "float32", "cpu")
    assert info.source == "tiny twin (seed 0)" and info.hf_class == type(model).__name__
    assert info.vocab_size == model.get_input_embeddings().num_embeddings >= info.tokenizer_len == len(tok)
    assert info.n_params == sum(p.numel() for p in model.parameters())
    assert tok.pad_token_id is not None


# Hand count for llama3-tiny, r=8 (A is r x in, B is out x r): q,o 64->64: 8*128 each; k,v 64->16: 8*80 each;
# gate,up 64->224, down 224->64: 8*288 each. Per layer 2*1024 + 2*640 + 3*2304 = 10240; two layers: 20480.
HAND_COUNTS = {"llama3-tiny": 20480, "glm4-tiny": 2 * (2 * 1024 + 2 * 640 + 8 * (64 + 432) + 8 * (216 + 64)),
               "glm3-tiny": 2 * (2 * 1024 + 2 * 8 * (64 + 32) + 8 * (64 + 432) + 8 * (216 + 64))}


@pytest.mark.parametrize("name", TWIN_NAMES)
def test_lora_trains_exactly_the_adapter_matrices(name):
    cfg = ModelConfig(backbone=name, lora_r=8)
    model, _, info = bb.build_backbone(cfg, device="cpu")
    expected = bb.expected_lora_params(model, info.lora_targets, r=8)
    n_backbone = bb.backbone_param_count(model)
    peft_model = bb.apply_lora(model, cfg)
    trainable = {n: p.numel() for n, p in peft_model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == expected == HAND_COUNTS[name]
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert bb.backbone_param_count(peft_model) == n_backbone  # LoRA weights are not backbone weights
    assert bb.trainable_param_count(peft_model) == expected


def test_lora_off_returns_the_frozen_model_and_bad_targets_are_named():
    model, _, _ = bb.build_backbone(ModelConfig(backbone="llama3-tiny"), device="cpu")
    assert bb.apply_lora(model, ModelConfig(backbone="llama3-tiny", lora=False)) is model
    with pytest.raises(bb.BackboneError, match="model.lora_targets: 'gate_up_proj'"):
        bb.apply_lora(model, ModelConfig(backbone="llama3-tiny", lora_targets=["q_proj", "gate_up_proj"]))
    assert bb.default_lora_targets(model) == bb.LORA_TARGETS["llama"]


def test_lora_step_changes_only_adapters_and_lowers_loss():
    cfg = ModelConfig(backbone="glm3-tiny", lora_r=4)
    model, tok, _ = bb.build_backbone(cfg, device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = bb.apply_lora(model, cfg)
    peft_model.train()
    batch = tok(["情绪是愤怒", "the emotion is joy"], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss = peft_model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    base = peft_model.get_base_model()
    for name, tensor in base.state_dict().items():
        if "lora_" not in name:
            assert torch.equal(tensor, before[name.replace(".base_layer", "")]), name


@pytest.mark.parametrize("family", ["glm3", "glm4", "llama3"])
def test_real_layout_loads_to_the_same_logits_as_the_twin(family, tmp_path):
    twin_name = f"{family}-tiny"
    out = save_twin_real_layout(twin_name, tmp_path / family, shards=2 if family == "glm3" else 1)
    model, tok, info = bb.build_backbone(ModelConfig(backbone=family, model_path=str(out)), device="cpu")
    twin, twin_tok = load_twin(twin_name)
    assert torch.equal(logits(model, tok), logits(twin, twin_tok))
    assert tok("情绪 joy 😀")["input_ids"] == twin_tok("情绪 joy 😀")["input_ids"]
    assert info.source == str(out) and info.hf_class == type(twin).__name__
    assert all(not p.requires_grad for p in model.parameters())


def test_glm3_real_layout_is_chatglm3s(tmp_path):
    from safetensors import safe_open

    out = save_twin_real_layout("glm3-tiny", tmp_path / "chatglm3-6b")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "chatglm" and cfg["multi_query_group_num"] == 2 and cfg["kv_channels"] == 16
    assert (out / "tokenizer.model").is_file()
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("transformer.encoder.layers.0.self_attention.query_key_value.weight").shape == (128, 64)
    assert "transformer.output_layer.weight" in keys and "transformer.rotary_pos_emb.inv_freq" in keys


def test_model_root_env_finds_the_family_directory(tmp_path, monkeypatch):
    save_twin_real_layout("glm3-tiny", tmp_path / "chatglm3-6b")
    monkeypatch.setenv("EGMF_MODEL_ROOT", str(tmp_path))
    assert bb.resolve_model_dir(ModelConfig(backbone="glm3")) == tmp_path / "chatglm3-6b"
    with pytest.raises(bb.BackboneError, match="glm-4-9b-hf does not exist"):
        bb.resolve_model_dir(ModelConfig(backbone="glm4"))


def test_missing_directory_errors_name_the_dir_and_how_to_set_it(tmp_path):
    with pytest.raises(bb.BackboneError, match="EGMF_MODEL_ROOT") as e:
        bb.build_backbone(ModelConfig(backbone="llama3"), device="cpu")
    assert "\n" not in str(e.value) and "Meta-Llama-3-8B-Instruct" in str(e.value)
    with pytest.raises(bb.BackboneError, match="nowhere.*model_path|model_path.*nowhere"):
        bb.build_backbone(ModelConfig(backbone="llama3", model_path=str(tmp_path / "nowhere")), device="cpu")


def test_wrong_architecture_is_refused_naming_dir_and_model_type(tmp_path):
    llama_dir = save_twin_real_layout("llama3-tiny", tmp_path / "Meta-Llama-3-8B-Instruct")
    with pytest.raises(bb.BackboneError) as e:
        bb.build_backbone(ModelConfig(backbone="glm4", model_path=str(llama_dir)), device="cpu")
    msg = str(e.value)
    assert str(llama_dir) in msg and "model_type='llama'" in msg and "glm4" in msg and "\n" not in msg
    glm3_dir = save_twin_real_layout("glm3-tiny", tmp_path / "chatglm3-6b")
    with pytest.raises(bb.BackboneError, match="trust_remote_code"):
        bb.build_backbone(ModelConfig(backbone="glm4", model_path=str(glm3_dir)), device="cpu")


def test_pad_falls_back_to_eos_else_error_names_the_tokenizer():
    tok = build_bpe_tokenizer("llama3")
    tok.pad_token = None
    bb.ensure_pad_token(tok, "/models/x")
    assert tok.pad_token == "<|eot_id|>"
    tok.pad_token, tok.eos_token = None, None
    with pytest.raises(bb.BackboneError, match="/models/x.*pad_token.*eos_token"):
        bb.ensure_pad_token(tok, "/models/x")


def test_llama3_without_pad_gets_eos_as_pad(tmp_path):
    out = save_twin_real_layout("llama3-tiny", tmp_path / "llama")
    tc = json.loads((out / "tokenizer_config.json").read_text())
    tc["pad_token"] = None  # as the real Llama-3-8B-Instruct release
    (out / "tokenizer_config.json").write_text(json.dumps(tc))
    _, tok, _ = bb.build_backbone(ModelConfig(backbone="llama3", model_path=str(out)), device="cpu")
    assert tok.pad_token == "<|eot_id|>"


def test_placement_bf16_on_cuda_float32_on_cpu_and_one_gpu_per_run(monkeypatch):
    assert bb.backbone_dtype(torch.device("cpu")) == torch.float32
    assert bb.backbone_dtype(torch.device("cuda", 0)) == torch.bfloat16
    assert bb._device_map(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert bb._device_map(torch.device("cuda")) == {"": 0}  # whole on one GPU; split only if it does not fit
    assert bb._device_map(torch.device("cuda", 1)) == {"": 1}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert bb._device_map(torch.device("cuda")) == {"": 0}


def test_remote_code_is_opt_in_and_its_failure_is_one_line(tmp_path):
    out = save_twin_real_layout("glm3-tiny", tmp_path / "chatglm3-6b")  # no remote-code files shipped
    with pytest.raises(bb.BackboneError) as e:
        bb.build_backbone(ModelConfig(backbone="glm3", model_path=str(out), trust_remote_code=True), device="cpu")
    assert str(out) in str(e.value) and "chatglm" in str(e.value) and "\n" not in str(e.value)


def test_lora_init_follows_the_seed_argument_not_the_global_rng():
    cfg = ModelConfig(backbone="llama3-tiny")

    def lora_a(seed, noise):
        torch.manual_seed(noise)  # whatever the caller did before
        model, _, _ = bb.build_backbone(cfg, device="cpu")
        peft_model = bb.apply_lora(model, cfg, seed=seed)
        return next(p for n, p in peft_model.named_parameters() if "lora_A" in n).detach().clone()

    assert torch.equal(lora_a(3, noise=0), lora_a(3, noise=1))
    assert not torch.equal(lora_a(3, noise=0), lora_a(4, noise=0))


def test_building_a_twin_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_twin("glm4-tiny", seed=0)
    assert torch.equal(torch.rand(3), expected)
