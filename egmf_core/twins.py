"""Tiny randomly initialised twins of the paper's backbones, built offline in about a second and cached on disk.

A twin uses the same transformers class as its real backbone and keeps the family's traits that
the class supports, at toy width (hidden 64, 2 layers, head_dim 16):

=============  =====================  =========================================================
twin           class                  traits kept (real model in brackets)
=============  =====================  =========================================================
llama3-tiny    LlamaForCausalLM       GQA 4 heads / 1 kv (32/8: ratio 4), rope_theta 5e5, no bias,
                                      ffn 3.5x hidden (14336/4096), byte-level BPE tokenizer
glm4-tiny      GlmForCausalLM         GQA 4 heads / 1 kv (32/2), qkv bias, half-dim interleaved RoPE,
                                      theta 10000*500, fused gate_up MLP, [gMASK]<sop> prefix,
                                      eos = [<|endoftext|>, <|user|>, <|observation|>]
glm3-tiny      GlmForCausalLM         ChatGLM3 after conversion: multi-query 4 heads / 2 groups
                                      (32/2), qkv bias, half-dim RoPE theta 10000, SentencePiece
                                      tokenizer with ChatGLM3's specials, pad = <unk>
=============  =====================  =========================================================

The glm3 twin is defined by a ChatGLM3 ``config.json`` dict and made native with
:func:`egmf_core.convert_chatglm3.convert_config`, exactly as a real ChatGLM3 checkpoint is.
:func:`save_twin_real_layout` writes a twin in its backbone's release layout (ChatGLM3's key names
and ``tokenizer.model`` for glm3), so the paper profile's loading path is tested end to end.

Cache: ``<EGMF_CACHE or <repo>/.cache>/twins/<name>-<fingerprint>/``, fingerprint = hash of the
twin's spec, corpus, seed, library versions and the source of the modules that build it; loaded with ``local_files_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenizers
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, GlmConfig, GlmForCausalLM, LlamaConfig, LlamaForCausalLM

from egmf_core import convert_chatglm3
from egmf_core.paths import default_cache_dir
from egmf_core.tokenizer_twin import build_twin_tokenizer, default_corpus

TWIN_FORMAT_VERSION = 1  # bump when the twin recipe changes in a way the spec below does not show
_DONE_MARKER = "twin.json"

# Width shared by every twin; the per-family traits are in TWIN_SPECS.
_HIDDEN, _LAYERS, _HEAD_DIM = 64, 2, 16

# A trained LM's output layer gives confident logits. Drawn with transformers' default std 0.02 at
# width 64, a frozen random head caps the logit gap between two tokens near 2, so no adapter or
# pseudo token could make the twin answer anything with confidence (measured: the loss stalls at
# ~5.8 nats). We draw the output layer with std 0.4 (logit std ~3) instead; everything else keeps
# the class's own initialisation.
OUTPUT_LAYER_STD = 0.4


@dataclass(frozen=True)
class TwinSpec:
    """What defines a twin: its family, class and the architecture fields that are not derived from the tokenizer."""

    name: str
    family: str  # "glm3" | "glm4" | "llama3"
    hf_class: str
    arch: dict[str, Any]


TWIN_SPECS: dict[str, TwinSpec] = {
    "llama3-tiny": TwinSpec(
        "llama3-tiny",
        "llama3",
        "LlamaForCausalLM",
        {
            "hidden_size": _HIDDEN,
            "intermediate_size": 224,  # 3.5 x hidden, as 14336 / 4096
            "num_hidden_layers": _LAYERS,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,  # GQA ratio 4, as 32 / 8
            "head_dim": _HEAD_DIM,
            "rope_theta": 500000.0,
            "rms_norm_eps": 1e-5,
            "max_position_embeddings": 8192,
        },
    ),
    "glm4-tiny": TwinSpec(
        "glm4-tiny",
        "glm4",
        "GlmForCausalLM",
        {
            "hidden_size": _HIDDEN,
            "intermediate_size": 216,  # ~3.34 x hidden, as 13696 / 4096
            "num_hidden_layers": _LAYERS,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,  # GLM-4-9B: 32 heads / 2 kv
            "head_dim": _HEAD_DIM,
            "rope_theta": 10000.0 * 500,
            "rms_norm_eps": 1.5625e-07,
            "max_position_embeddings": 131072,
        },
    ),
    "glm3-tiny": TwinSpec(
        "glm3-tiny",
        "glm3",
        "GlmForCausalLM",
        {  # a ChatGLM3 config.json (padded_vocab_size is filled in from the tokenizer)
            "num_layers": _LAYERS,
            "hidden_size": _HIDDEN,
            "ffn_hidden_size": 216,  # ~3.34 x hidden, as 13696 / 4096
            "kv_channels": _HEAD_DIM,
            "num_attention_heads": 4,
            "multi_query_attention": True,
            "multi_query_group_num": 2,  # ChatGLM3-6B: 32 heads / 2 groups
            "add_qkv_bias": True,
            "add_bias_linear": False,
            "rmsnorm": True,
            "layernorm_epsilon": 1e-05,
            "seq_length": 8192,
            "rope_ratio": 1.0,
            "original_rope": True,
            "apply_residual_connection_post_layernorm": False,
            "post_layer_norm": True,
            "eos_token_id": 2,
            "pad_token_id": 0,
        },
    ),
}
TWIN_NAMES = tuple(TWIN_SPECS)


class TwinError(ValueError):
    """An unknown twin name or a broken twin cache directory; the message names it."""


def _spec(name: str) -> TwinSpec:
    if name not in TWIN_SPECS:
        raise TwinError(f"unknown twin {name!r} (known: {', '.join(TWIN_NAMES)})")
    return TWIN_SPECS[name]


def _padded(n: int, multiple: int = 64) -> int:
    """GLM releases pad the embedding rows past the tokenizer (65024, 151552); so do the GLM twins."""
    return -(-n // multiple) * multiple


def twin_config(name: str, tokenizer) -> LlamaConfig | GlmConfig:
    """The transformers config of a twin, sized by ``len(tokenizer)`` and with in-vocabulary special ids."""
    spec = _spec(name)
    a = dict(spec.arch)
    if spec.family == "llama3":
        theta = a.pop("rope_theta")
        return LlamaConfig(
            vocab_size=len(tokenizer),
            **a,
            rope_parameters={"rope_type": "default", "rope_theta": theta},
            attention_bias=False,
            mlp_bias=False,
            tie_word_embeddings=False,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    if spec.family == "glm4":
        theta = a.pop("rope_theta")
        stops = [tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")]
        return GlmConfig(
            vocab_size=_padded(len(tokenizer)),
            **a,
            rope_parameters={"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": 0.5},
            attention_bias=True,
            tie_word_embeddings=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=stops,  # as GLM-4-9B's config: end of text, or the next turn starting
            bos_token_id=None,
        )
    return convert_chatglm3.convert_config(chatglm3_twin_config(tokenizer))


def chatglm3_twin_config(tokenizer) -> dict[str, Any]:
    """The glm3 twin's ChatGLM3-format config.json dict."""
    return {"model_type": "chatglm", **TWIN_SPECS["glm3-tiny"].arch, "padded_vocab_size": _padded(len(tokenizer))}


def build_twin(
    name: str, seed: int = 0, corpus: list[str] | None = None, workdir: str | Path | None = None
) -> tuple[torch.nn.Module, Any]:
    """A freshly built twin (model in eval mode, float32, CPU) and its tokenizer; glm3 writes tokenizer.model to workdir."""
    spec = _spec(name)
    if spec.family == "glm3" and workdir is None:
        with tempfile.TemporaryDirectory() as tmp:
            return build_twin(name, seed, corpus, tmp)
    tokenizer = build_twin_tokenizer(spec.family, corpus, workdir)
    config = twin_config(name, tokenizer)
    cls = LlamaForCausalLM if spec.hf_class == "LlamaForCausalLM" else GlmForCausalLM
    with torch.random.fork_rng(devices=[]):  # the twin's seed must not reset the caller's RNG
        torch.manual_seed(seed)
        model = cls(config).to(torch.float32).eval()
        with torch.no_grad():
            model.get_output_embeddings().weight.normal_(0.0, OUTPUT_LAYER_STD)
    return model, tokenizer


def twin_fingerprint(name: str, seed: int = 0, corpus: list[str] | None = None) -> str:
    """12 hex digits identifying everything a twin is built from."""
    spec = _spec(name)
    corpus = default_corpus() if corpus is None else list(corpus)
    blob = json.dumps(
        {
            "format": TWIN_FORMAT_VERSION,
            "recipe": _recipe_hash(),
            "spec": [spec.name, spec.family, spec.hf_class, spec.arch],
            "corpus": corpus,
            "seed": seed,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "torch": torch.__version__.split("+")[0],
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def _recipe_hash() -> str:
    """Hash of the modules that define a twin, so editing the recipe never serves a stale cache."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in ("twins.py", "tokenizer_twin.py", "convert_chatglm3.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def twin_dir(name: str, seed: int = 0, corpus: list[str] | None = None, cache_dir: str | Path | None = None) -> Path:
    """Where a twin is (or will be) cached."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "twins" / f"{name}-{twin_fingerprint(name, seed, corpus)}"


def ensure_twin(name: str, seed: int = 0, corpus: list[str] | None = None, cache_dir: str | Path | None = None) -> Path:
    """Build and save the twin unless its cache directory is complete; return the directory."""
    target = twin_dir(name, seed, corpus, cache_dir)
    if (target / _DONE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model, tokenizer = build_twin(name, seed, corpus, workdir=tmp)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record = {"name": name, "seed": seed, "fingerprint": target.name.rsplit("-", 1)[1], "format": TWIN_FORMAT_VERSION}
        (tmp / _DONE_MARKER).write_text(json.dumps(record, indent=1))
        try:
            tmp.rename(target)  # atomic: a concurrent builder either wins or finds it done
        except OSError:
            if not (target / _DONE_MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_twin(
    name: str, cache_dir: str | Path | None = None, seed: int = 0, corpus: list[str] | None = None
) -> tuple[torch.nn.Module, Any]:
    """The cached twin (model float32 on CPU, eval mode) and its tokenizer, building it on first use."""
    path = ensure_twin(name, seed, corpus, cache_dir)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer


def save_twin_real_layout(
    name: str,
    out_dir: str | Path,
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    shards: int = 1,
) -> Path:
    """Write a twin in its backbone's release layout (glm3: ChatGLM3's keys, config and tokenizer.model)."""
    spec = _spec(name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = ensure_twin(name, seed, cache_dir=cache_dir)
    model, tokenizer = load_twin(name, cache_dir=cache_dir, seed=seed)
    if spec.family != "glm3":
        model.save_pretrained(out)  # Llama-3 / GLM-4-9B-hf: config.json, model.safetensors, generation_config
        tokenizer.save_pretrained(out)
        return out
    chatglm_cfg = chatglm3_twin_config(tokenizer)
    chatglm_cfg.update({"torch_dtype": "float32", "transformers_version": transformers.__version__})
    (out / "config.json").write_text(json.dumps(chatglm_cfg, indent=2))
    sd = convert_chatglm3.invert_state_dict(model.state_dict(), model.config)
    _save_safetensors(sd, out, shards)
    shutil.copyfile(src / "tokenizer.model", out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {  # ChatGLM3's tokenizer_config.json, minus the auto_map to remote code we do not ship
                "tokenizer_class": "ChatGLMTokenizer",
                "padding_side": "left",
                "clean_up_tokenization_spaces": False,
                "do_lower_case": False,
                "remove_space": False,
            },
            indent=2,
        )
    )
    return out


def _save_safetensors(sd: dict[str, torch.Tensor], out: Path, shards: int) -> None:
    """model.safetensors, or ``shards`` files plus model.safetensors.index.json (ChatGLM3 ships 7)."""
    from safetensors.torch import save_file

    keys = list(sd)
    if shards <= 1:
        save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    per = -(-len(keys) // shards)
    weight_map = {}
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k] for k in keys[i * per : (i + 1) * per]}
        save_file(part, str(out / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
