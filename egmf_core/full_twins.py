"""Full-size random twins of the paper's backbones: the published architectures, random weights.

A full twin is the real model class at the real configuration (ChatGLM3-6B as converted to the
native Glm layout, GLM-4-9B-hf, Llama-3-8B-Instruct) with randomly drawn weights, so every
CUDA code path of the paper profile (memory, kernels, LoRA at real width, a 65k-152k vocabulary)
runs without the real checkpoints. Only the weights differ from a real run.

Construction never holds an fp32 copy on the host: the module tree is built on the ``meta``
device, materialised on the target device in the target dtype (``to_empty``), then initialised
there from a seeded generator (:func:`init_on_device`). ``device="meta"`` stops after the first
step: parameter counts and weight memory from the real architectures, no memory at all.

=========  ===================  =====================================================  ========
backbone   class                architecture (from the release's config.json)           params
=========  ===================  =====================================================  ========
glm3       GlmForCausalLM       28 layers, 4096 hidden, 13696 ffn, 32 heads / 2 kv,     6.24e9
                                qkv bias, half-dim RoPE, 65024 embedding rows
glm4       GlmForCausalLM       40 layers, 4096 hidden, 13696 ffn, 32 heads / 2 kv,     9.40e9
                                qkv bias, half-dim RoPE, 151552 embedding rows
llama3     LlamaForCausalLM     32 layers, 4096 hidden, 14336 ffn, 32 heads / 8 kv,     8.03e9
                                rope_theta 5e5, 128256 embedding rows
=========  ===================  =====================================================  ========

The twin tokenizer is the family's tiny twin tokenizer with its vocabulary padded to the real
tokenizer's length (:data:`TOKENIZER_LENGTHS`) by entries no text ever produces: ids, embedding
rows and the LM head have the real sizes; the token counts of a sentence are the twin's.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GlmConfig, GlmForCausalLM, LlamaConfig, LlamaForCausalLM

from egmf_core import convert_chatglm3
from egmf_core.paths import FAMILIES

INIT_STD = 0.02  # transformers' initializer_range for all three releases

# ChatGLM3-6B's config.json (THUDM/chatglm3-6b), in its own field names; converted as a real one is.
CHATGLM3_6B: dict[str, Any] = {
    "model_type": "chatglm", "num_layers": 28, "hidden_size": 4096, "ffn_hidden_size": 13696,
    "kv_channels": 128, "num_attention_heads": 32, "multi_query_attention": True, "multi_query_group_num": 2,
    "add_qkv_bias": True, "add_bias_linear": False, "rmsnorm": True, "layernorm_epsilon": 1e-05,
    "seq_length": 8192, "rope_ratio": 1.0, "original_rope": True, "padded_vocab_size": 65024,
    "apply_residual_connection_post_layernorm": False, "post_layer_norm": True,
    "eos_token_id": 2, "pad_token_id": 0,
}
# GLM-4-9B in the HF format (THUDM/glm-4-9b-chat-hf config.json).
GLM4_9B: dict[str, Any] = {
    "hidden_size": 4096, "intermediate_size": 13696, "num_hidden_layers": 40, "num_attention_heads": 32,
    "num_key_value_heads": 2, "head_dim": 128, "attention_bias": True, "rms_norm_eps": 1.5625e-07,
    "vocab_size": 151552, "max_position_embeddings": 131072, "tie_word_embeddings": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
    "pad_token_id": 151329, "eos_token_id": [151329, 151336, 151338], "bos_token_id": None,
}
# Meta-Llama-3-8B-Instruct's config.json.
LLAMA3_8B: dict[str, Any] = {
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-05, "vocab_size": 128256,
    "max_position_embeddings": 8192, "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
    "bos_token_id": 128000, "eos_token_id": 128009,
}
# len(tokenizer) of the real releases (base vocabulary plus special tokens).
TOKENIZER_LENGTHS = {"glm3": 64798, "glm4": 151343, "llama3": 128256}


@dataclass(frozen=True)
class FullTwin:
    """What a full twin build returns besides the model: its size and how long it took."""

    family: str
    hf_class: str
    n_params: int
    weight_bytes: int
    build_s: float


def full_config(family: str) -> LlamaConfig | GlmConfig:
    """The transformers config of a backbone's published architecture."""
    if family == "glm3":
        return convert_chatglm3.convert_config(dict(CHATGLM3_6B))
    if family == "glm4":
        return GlmConfig(**GLM4_9B)
    if family == "llama3":
        return LlamaConfig(**LLAMA3_8B)
    raise ValueError(f"unknown backbone family {family!r} (known: {', '.join(FAMILIES)})")


def _model_class(family: str):
    return LlamaForCausalLM if family == "llama3" else GlmForCausalLM


def build_full_twin(family: str, *, device: str | torch.device, dtype: torch.dtype = torch.bfloat16,
                    seed: int = 0) -> tuple[torch.nn.Module, FullTwin]:
    """A full-size twin (eval mode) built on ``device`` in ``dtype``; on ``meta`` it has no storage."""
    import time

    t0 = time.perf_counter()
    config = full_config(family)
    dev = torch.device(device)
    with torch.device("meta"):
        model = _model_class(family)(config).to(dtype)
    if dev.type != "meta":
        model = model.to_empty(device=dev)
        init_on_device(model, seed=seed)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    n_params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    info = FullTwin(family, type(model).__name__, n_params, weight_bytes, time.perf_counter() - t0)
    return model.eval(), info


@torch.no_grad()
def init_on_device(model: torch.nn.Module, *, seed: int = 0, std: float = INIT_STD) -> None:
    """Draw every weight where it lives: N(0, std) matrices, unit norms, zero biases; RoPE recomputed.

    The generator lives on the parameters' device, so nothing crosses the bus. Non-persistent
    buffers (RoPE's ``inv_freq``) are not parameters: each rotary module is rebuilt from its
    config, as its constructor computes them, and its buffers copied over.
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        elif name.endswith(".bias"):
            p.zero_()
        else:
            p.normal_(0.0, std, generator=gen)
    for module in model.modules():
        if type(module).__name__.endswith("RotaryEmbedding"):
            with torch.device("cpu"):  # a few KB; the constructor's signature varies across 5.x
                fresh = type(module)(module.config)
            for key, buf in fresh.named_buffers(recurse=False):
                getattr(module, key).copy_(buf)


def pad_vocabulary(tokenizer, length: int):
    """The tokenizer with unreachable vocabulary entries appended until ``len(tokenizer) == length``.

    Entries are added to the model's vocabulary (BPE or Unigram), not as added tokens: no text
    ever maps to them and encoding stays as fast as the twin's. Ids already used are kept.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    missing = length - len(tokenizer)
    if missing <= 0:
        return tokenizer
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state["model"]
    # Deserialising re-numbers added tokens from the model's vocabulary size; so that the specials
    # keep their ids, each also becomes a vocabulary entry at its own id, then fillers follow.
    entries = {t["id"]: t["content"] for t in state["added_tokens"]}
    start = len(tokenizer)
    entries.update({start + i: f"<|twin_unused_{i}|>" for i in range(missing)})
    if model["type"] == "BPE":
        model["vocab"].update({content: i for i, content in entries.items()})
    elif model["type"] == "Unigram":
        first = len(model["vocab"])
        if sorted(entries) != list(range(first, length)):
            raise ValueError("pad_vocabulary: added token ids do not follow the Unigram vocabulary")
        model["vocab"].extend([entries[i], -100.0] for i in range(first, length))
    else:
        raise ValueError(f"pad_vocabulary: unsupported tokenizer model {model['type']!r}")
    backend = Tokenizer.from_str(json.dumps(state))
    padded = PreTrainedTokenizerFast(tokenizer_object=backend, **_special_kwargs(tokenizer))
    padded.padding_side = tokenizer.padding_side
    return padded


def _special_kwargs(tokenizer) -> dict[str, Any]:
    keys = ("bos_token", "eos_token", "pad_token", "unk_token")
    out = {k: getattr(tokenizer, k) for k in keys if getattr(tokenizer, k, None) is not None}
    out["clean_up_tokenization_spaces"] = False
    out["model_max_length"] = tokenizer.model_max_length
    return out


def full_twin_tokenizer(family: str):
    """The family's twin tokenizer at the real release's length (:data:`TOKENIZER_LENGTHS`).

    glm3's twin is a SentencePiece model, as ChatGLM3's; where it cannot be converted exactly
    (``sentencepiece`` not installed, or transformers < 5.24: :func:`convert_chatglm3.convert_tokenizer`
    refuses), the glm4 twin's byte-level BPE stands in: the ids, embedding rows and special-token
    handling a step sees keep their sizes, only how text splits differs.
    """
    from egmf_core.convert_chatglm3 import ChatGLMConversionError
    from egmf_core.tokenizer_twin import build_bpe_tokenizer, build_twin_tokenizer

    if family == "glm3" and not _has_sentencepiece():
        return pad_vocabulary(build_bpe_tokenizer("glm4"), TOKENIZER_LENGTHS[family])
    with tempfile.TemporaryDirectory() as tmp:
        try:
            tok = build_twin_tokenizer(family, None, tmp if family == "glm3" else None)
        except ChatGLMConversionError:
            tok = build_bpe_tokenizer("glm4")
    return pad_vocabulary(tok, TOKENIZER_LENGTHS[family])


def _has_sentencepiece() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("sentencepiece", "google.protobuf"))
