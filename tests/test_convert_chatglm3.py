"""ChatGLM3 -> native Glm conversion: config fields, tensor split, round trips, forward equivalence, tokenizer ids."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, GlmForCausalLM

from egmf_core import convert_chatglm3 as cv
from egmf_core.tokenizer_twin import train_sentencepiece

CHATGLM3_6B = {  # the released chatglm3-6b config.json (fields the converter reads)
    "model_type": "chatglm",
    "add_bias_linear": False,
    "add_qkv_bias": True,
    "apply_residual_connection_post_layernorm": False,
    "ffn_hidden_size": 13696,
    "hidden_size": 4096,
    "kv_channels": 128,
    "layernorm_epsilon": 1e-05,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "num_attention_heads": 32,
    "num_layers": 28,
    "original_rope": True,
    "padded_vocab_size": 65024,
    "post_layer_norm": True,
    "rmsnorm": True,
    "seq_length": 8192,
    "eos_token_id": 2,
    "pad_token_id": 0,
}


def tiny_chatglm_config(multi_query: bool = True, **over) -> dict:
    cfg = dict(CHATGLM3_6B)
    cfg.update(
        num_layers=2, hidden_size=32, ffn_hidden_size=40, kv_channels=8, num_attention_heads=4,
        multi_query_attention=multi_query, multi_query_group_num=2, padded_vocab_size=96, seq_length=64,
    )
    cfg.update(over)
    return cfg


def random_chatglm_state_dict(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under ChatGLM3's real key names, with its shape relations."""
    g = torch.Generator().manual_seed(seed)
    H, hd, nh, ffn, V = cfg["hidden_size"], cfg["kv_channels"], cfg["num_attention_heads"], cfg["ffn_hidden_size"], cfg["padded_vocab_size"]
    ng = cfg["multi_query_group_num"] if cfg["multi_query_attention"] else nh
    rnd = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    sd = {"transformer.embedding.word_embeddings.weight": rnd(V, H)}
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        sd[p + "input_layernorm.weight"] = 1 + rnd(H)
        sd[p + "self_attention.query_key_value.weight"] = rnd((nh + 2 * ng) * hd, H)
        sd[p + "self_attention.query_key_value.bias"] = rnd((nh + 2 * ng) * hd)
        sd[p + "self_attention.dense.weight"] = rnd(H, nh * hd)
        sd[p + "post_attention_layernorm.weight"] = 1 + rnd(H)
        sd[p + "mlp.dense_h_to_4h.weight"] = rnd(2 * ffn, H)
        sd[p + "mlp.dense_4h_to_h.weight"] = rnd(H, ffn)
    sd["transformer.encoder.final_layernorm.weight"] = 1 + rnd(H)
    sd["transformer.output_layer.weight"] = rnd(V, H)
    rot = hd // 2
    sd["transformer.rotary_pos_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, rot, 2).float() / rot))
    return sd


def chatglm3_reference_logits(sd: dict, cfg: dict, ids: torch.Tensor) -> torch.Tensor:
    """ChatGLM3's forward written from its description (fused qkv, half-dim interleaved RoPE, swiglu): (B, T, V)."""
    hd, nh = cfg["kv_channels"], cfg["num_attention_heads"]
    mq = cfg["multi_query_attention"]
    ng = cfg["multi_query_group_num"] if mq else nh
    eps = cfg["layernorm_epsilon"]
    B, T = ids.shape

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    rot = hd // 2
    theta = 1.0 / ((10000 * cfg.get("rope_ratio", 1.0)) ** (torch.arange(0, rot, 2).float() / rot))
    ang = torch.arange(T).float()[:, None] * theta[None]  # (T, rot/2)
    cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]

    def rope(t):  # (B, T, n, hd): pairs (2i, 2i+1) of the first half rotate by angle i
        r, rest = t[..., :rot], t[..., rot:]
        x0, x1 = r[..., 0::2], r[..., 1::2]
        out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], -1).flatten(-2)
        return torch.cat([out, rest], -1)

    x = sd["transformer.embedding.word_embeddings.weight"][ids]  # (B, T, H)
    causal = torch.full((T, T), float("-inf")).triu(1)
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        h = rms(x, sd[p + "input_layernorm.weight"])
        qkv = h @ sd[p + "self_attention.query_key_value.weight"].T + sd[p + "self_attention.query_key_value.bias"]
        if mq:
            q, k, v = qkv.split([nh * hd, ng * hd, ng * hd], -1)
            q, k, v = q.view(B, T, nh, hd), k.view(B, T, ng, hd), v.view(B, T, ng, hd)
        else:
            q, k, v = qkv.view(B, T, nh, 3 * hd).split(hd, -1)
        q, k = rope(q), rope(k)
        k = k.unsqueeze(3).expand(B, T, ng, nh // ng, hd).reshape(B, T, nh, hd)
        v = v.unsqueeze(3).expand(B, T, ng, nh // ng, hd).reshape(B, T, nh, hd)
        att = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd) + causal
        ctx = torch.einsum("bhqk,bkhd->bqhd", att.softmax(-1), v).reshape(B, T, nh * hd)
        x = x + ctx @ sd[p + "self_attention.dense.weight"].T
        h = rms(x, sd[p + "post_attention_layernorm.weight"])
        a, b = (h @ sd[p + "mlp.dense_h_to_4h.weight"].T).chunk(2, -1)
        x = x + (torch.nn.functional.silu(a) * b) @ sd[p + "mlp.dense_4h_to_h.weight"].T
    x = rms(x, sd["transformer.encoder.final_layernorm.weight"])
    return x @ sd["transformer.output_layer.weight"].T


def native_model(cfg: dict, sd: dict) -> GlmForCausalLM:
    model = GlmForCausalLM(cv.convert_config(cfg)).eval()
    missing, unexpected = model.load_state_dict(cv.convert_state_dict(sd, cfg), strict=False)
    assert not unexpected and not missing
    return model


def test_convert_config_maps_the_chatglm3_6b_fields():
    g = cv.convert_config(CHATGLM3_6B)
    assert (g.vocab_size, g.hidden_size, g.intermediate_size, g.num_hidden_layers) == (65024, 4096, 13696, 28)
    assert (g.num_attention_heads, g.num_key_value_heads, g.head_dim) == (32, 2, 128)
    assert g.rope_parameters["rope_theta"] == 10000.0 and g.rope_parameters["partial_rotary_factor"] == 0.5
    assert g.attention_bias is True and g.rms_norm_eps == 1e-5 and g.tie_word_embeddings is False
    assert (g.pad_token_id, g.eos_token_id, g.max_position_embeddings) == (0, 2, 8192)
    assert cv.convert_config({**CHATGLM3_6B, "rope_ratio": 50}).rope_parameters["rope_theta"] == 500000.0
    assert cv.convert_config({**CHATGLM3_6B, "multi_query_attention": False}).num_key_value_heads == 32


@pytest.mark.parametrize(
    "change, field",
    [({"add_bias_linear": True}, "add_bias_linear"), ({"rmsnorm": False}, "rmsnorm"), ({"pre_seq_len": 8}, "pre_seq_len")],
)
def test_convert_config_refuses_what_glm_cannot_express(change, field):
    with pytest.raises(cv.ChatGLMConversionError, match=field):
        cv.convert_config({**CHATGLM3_6B, **change})


def test_convert_config_names_a_missing_field():
    cfg = dict(CHATGLM3_6B)
    del cfg["kv_channels"]
    with pytest.raises(cv.ChatGLMConversionError, match="kv_channels"):
        cv.convert_config(cfg)


def test_state_dict_split_shapes_and_rows():
    cfg = tiny_chatglm_config()
    sd = random_chatglm_state_dict(cfg)
    out = cv.convert_state_dict(sd, cfg)
    fused = sd["transformer.encoder.layers.1.self_attention.query_key_value.weight"]  # (4*8 + 2*2*8, 32)
    p = "model.layers.1.self_attn."
    assert out[p + "q_proj.weight"].shape == (32, 32) and out[p + "k_proj.weight"].shape == (16, 32)
    assert out[p + "v_proj.bias"].shape == (16,)
    assert torch.equal(out[p + "q_proj.weight"], fused[:32])
    assert torch.equal(out[p + "k_proj.weight"], fused[32:48])
    assert torch.equal(out[p + "v_proj.weight"], fused[48:64])
    assert out["model.layers.0.mlp.gate_up_proj.weight"].shape == (80, 32)
    assert "transformer.rotary_pos_emb.inv_freq" not in out and "lm_head.weight" in out
    assert len(out) == 3 + 2 * 11  # embed, norm, lm_head + per layer: 2 norms, q/k/v weight+bias, o, gate_up, down


@pytest.mark.parametrize("multi_query", [True, False])
def test_invert_then_convert_is_the_identity_both_ways(multi_query):
    cfg = tiny_chatglm_config(multi_query)
    sd = random_chatglm_state_dict(cfg)
    glm_sd = cv.convert_state_dict(sd, cfg)
    back = cv.invert_state_dict(glm_sd, cv.convert_config(cfg))
    assert back.keys() == sd.keys()
    assert all(torch.allclose(back[k], sd[k]) for k in sd)
    again = cv.convert_state_dict(back, cfg)
    assert all(torch.equal(again[k], glm_sd[k]) for k in glm_sd)
    assert cv.convert_config(cv.invert_config(cv.convert_config(cfg))).to_dict() == cv.convert_config(cfg).to_dict()


@pytest.mark.parametrize("multi_query", [True, False])
def test_converted_glm_matches_chatglm3_reference_forward(multi_query):
    cfg = tiny_chatglm_config(multi_query, rope_ratio=2.0)
    sd = random_chatglm_state_dict(cfg, seed=1)
    ids = torch.randint(0, 96, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = native_model(cfg, sd)(input_ids=ids).logits
    ref = chatglm3_reference_logits(sd, cfg, ids)
    assert ref.std() > 0.1  # not a degenerate comparison
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_reference_forward_detects_a_wrong_rotary_layout():
    """The equivalence test can fail: de-interleaving q/k rows (Llama's permutation) changes the logits."""
    cfg = tiny_chatglm_config()
    sd = random_chatglm_state_dict(cfg, seed=2)
    model = native_model(cfg, sd)
    perm = torch.cat([torch.arange(0, 4, 2), torch.arange(1, 4, 2), torch.arange(4, 8)])  # first half of hd=8
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                n = proj.weight.shape[0] // 8
                idx = torch.cat([h * 8 + perm for h in range(n)])
                proj.weight.copy_(proj.weight[idx])
                proj.bias.copy_(proj.bias[idx])
        ids = torch.arange(10)[None]
        assert not torch.allclose(model(input_ids=ids).logits, chatglm3_reference_logits(sd, cfg, ids), atol=1e-3)


def test_unexpected_key_and_wrong_rows_are_named():
    cfg = tiny_chatglm_config()
    sd = random_chatglm_state_dict(cfg)
    with pytest.raises(cv.ChatGLMConversionError, match="prefix_encoder"):
        cv.convert_state_dict({**sd, "transformer.prefix_encoder.embedding.weight": torch.zeros(1)}, cfg)
    bad = dict(sd)
    bad["transformer.encoder.layers.0.self_attention.query_key_value.weight"] = torch.zeros(10, 32)
    with pytest.raises(cv.ChatGLMConversionError, match="query_key_value.weight has 10 rows"):
        cv.convert_state_dict(bad, cfg)
    del bad["transformer.encoder.layers.0.self_attention.query_key_value.weight"]
    del bad["transformer.encoder.layers.0.self_attention.query_key_value.bias"]
    with pytest.raises(cv.ChatGLMConversionError, match="missing tensor"):
        cv.convert_state_dict(bad, cfg)


def test_state_dict_loads_from_bin_and_sharded_safetensors(tmp_path):
    from safetensors.torch import save_file

    sd = random_chatglm_state_dict(tiny_chatglm_config())
    (tmp_path / "bin").mkdir()
    torch.save(sd, tmp_path / "bin" / "pytorch_model.bin")
    loaded = cv.load_chatglm_state_dict(tmp_path / "bin")
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    keys = sorted(sd)
    shard = tmp_path / "st"
    shard.mkdir()
    save_file({k: sd[k] for k in keys[:5]}, str(shard / "a.safetensors"))
    save_file({k: sd[k] for k in keys[5:]}, str(shard / "b.safetensors"))
    weight_map = {k: ("a" if i < 5 else "b") + ".safetensors" for i, k in enumerate(keys)}
    (shard / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert cv.load_chatglm_state_dict(shard).keys() == sd.keys()
    with pytest.raises(cv.ChatGLMConversionError, match="no weights found"):
        cv.load_chatglm_state_dict(tmp_path)


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sp")
    train_sentencepiece(None, d / "tokenizer.model")
    return d


TEXTS = [
    "The emotion is joy. Answer: neutral",
    "这句话的情绪是愤怒，分数是 -2.5。",
    "people develop philosophy; sop and eop are plain words here",
    "emoji 😀🎉 and 混合 text\nwith a newline  and  two spaces",
    "Unseen: Ωmega ½ ﬁ ünïcödé 龘",
]


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_ids_equal_sentencepiece_encode(sp_dir, text):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_dir / "tokenizer.model"))
    tok = cv.convert_tokenizer(sp_dir)
    assert tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text)
    ids = tok(text)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == text == sp.decode(sp.encode(text))


def test_tokenizer_specials_follow_the_sp_vocabulary(sp_dir):
    import sentencepiece as spm

    n = spm.SentencePieceProcessor(model_file=str(sp_dir / "tokenizer.model")).get_piece_size()
    tok = cv.convert_tokenizer(sp_dir)
    names = [cv.FAST_SPELLING.get(t, t) for t in cv.CHATGLM3_SPECIAL_TOKENS]
    assert tok.convert_tokens_to_ids(names) == list(range(n, n + 9))
    assert len(tok) == n + 9
    assert tok("hi")["input_ids"][:2] == [n + 1, n + 3]  # [gMASK] sop, as ChatGLM3's prefix tokens
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.padding_side) == (0, 1, 2, "left")
    assert tok("<|user|>")["input_ids"][2:] == [n + 6]


def test_cli_converts_a_real_layout_twin(tmp_path):
    from egmf_core.twins import load_twin, save_twin_real_layout

    src = save_twin_real_layout("glm3-tiny", tmp_path / "chatglm3", cache_dir=tmp_path / "cache")
    assert cv.main([str(src), str(tmp_path / "native")]) == 0
    assert json.loads((tmp_path / "native" / "config.json").read_text())["model_type"] == "glm"
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "native", local_files_only=True, dtype=torch.float32)
    twin, tok = load_twin("glm3-tiny", cache_dir=tmp_path / "cache")
    batch = tok(["情绪是愤怒", "the emotion is joy"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(converted(**batch).logits, twin(**batch).logits, atol=0, rtol=0)


@pytest.mark.parametrize("settings", [{}, {"add_dummy_prefix": False}], ids=["sp-defaults-nfkc", "no-dummy-prefix"])
def test_tokenizer_ids_follow_other_sentencepiece_settings(tmp_path, settings):
    """Real ChatGLM3 settings are read from its proto: sp's NFKC defaults and no dummy prefix also match."""
    import io

    import sentencepiece as spm

    from egmf_core.tokenizer_twin import training_lines

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_lines(None)), model_writer=buf, model_type="bpe", vocab_size=800,
        hard_vocab_limit=False, byte_fallback=True, character_coverage=1.0, num_threads=1, minloglevel=2, **settings,
    )
    (tmp_path / "tokenizer.model").write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    tok = cv.convert_tokenizer(tmp_path)
    for text in TEXTS + ["  leading and trailing  ", "ＡＢＣ全角１２３"]:
        assert tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text), text
