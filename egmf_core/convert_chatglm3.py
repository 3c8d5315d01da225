"""Convert a ChatGLM3 checkpoint (remote-code ``chatglm`` layout) into transformers' native ``GlmForCausalLM``.

transformers 5.x has no ``chatglm`` class and ChatGLM3's remote code targets 4.x. ChatGLM3-6B is,
layer for layer, the architecture that ``GlmForCausalLM`` implements (GLM-4-9B's HF format), so
the conversion only renames and splits tensors:

==============================================================  =====================================
ChatGLM3 key                                                    native Glm key
==============================================================  =====================================
transformer.embedding.word_embeddings.weight                    model.embed_tokens.weight
transformer.encoder.layers.N.input_layernorm.weight             model.layers.N.input_layernorm.weight
...self_attention.query_key_value.{weight,bias}  (fused q;k;v)  ...self_attn.{q,k,v}_proj.{weight,bias}
...self_attention.dense.weight                                  ...self_attn.o_proj.weight
...post_attention_layernorm.weight                              ...post_attention_layernorm.weight
...mlp.dense_h_to_4h.weight  (fused [gate; up])                 ...mlp.gate_up_proj.weight
...mlp.dense_4h_to_h.weight                                     ...mlp.down_proj.weight
transformer.encoder.final_layernorm.weight                      model.norm.weight
transformer.output_layer.weight                                 lm_head.weight
transformer.rotary_pos_emb.inv_freq                             (dropped; recomputed)
==============================================================  =====================================

Why no permutation is needed (checked against the installed ``models/glm/modeling_glm.py``):

- Rotary: ChatGLM3 rotates the first ``kv_channels/2`` dims of each head in interleaved pairs
  ``(2i, 2i+1)`` with ``theta_i = base^(-2i/(kv_channels/2))``, ``base = 10000 * rope_ratio``.
  Glm's ``apply_rotary_pos_emb`` uses ``partial_rotary_factor=0.5`` of ``head_dim``, repeats each
  frequency twice (``repeat_interleave(2)``) and ``rotate_half`` pairs ``x[0::2]`` with ``x[1::2]``:
  the same rotation, so q/k rows keep their order (unlike Llama's HF conversion).
- MLP: ChatGLM3's swiglu chunks ``dense_h_to_4h(x)`` into two halves, ``silu(first) * second``;
  ``GlmMLP`` chunks ``gate_up_proj(x)`` the same way, ``up * silu(gate)`` with gate the first half.
- Attention: with ``multi_query_attention`` the fused rows are ``[q (heads*hd); k (groups*hd);
  v (groups*hd)]`` and head ``h`` reads group ``h // (heads/groups)``, which is ``repeat_kv``'s
  mapping. Without it, rows are per head ``[q_h; k_h; v_h]`` (also handled).
- Norms are RMSNorm with ``layernorm_epsilon``; scaling is ``1/sqrt(hd)`` in both (ChatGLM3's
  ``apply_query_key_layer_scaling`` multiplies and divides by the layer number: no effect).

Tokenizer: ChatGLM3 ships a SentencePiece ``tokenizer.model``; its nine special tokens take ids
``sp_size + i``. The fast tokenizer is built from the sp model's own settings (transformers'
``SpmConverter.build_tokenizer_from_spm_proto``, so ids equal ``SentencePieceProcessor.encode``)
and gets the specials appended in ChatGLM3's order. ``sop``/``eop`` are spelled ``<sop>``/``<eop>``
in the fast tokenizer: added tokens match anywhere in raw text, and a bare ``eop`` would split
words such as "people" (their ids are unchanged). Encodings start with ``[gMASK] <sop>`` as in
ChatGLM3's ``build_inputs_with_special_tokens``; pad is ``<unk>`` (id 0) and padding is on the
left, as in ChatGLM3's tokenizer.

Checkpoints are read with safetensors or ``torch.load(weights_only=True)`` only.
CLI: ``python -m egmf_core.convert_chatglm3 SRC DST``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from transformers import GlmConfig, PreTrainedTokenizerFast

from egmf_core.lfs import is_lfs_pointer, lfs_pointer_message, load_failure_message

CHATGLM3_SPECIAL_TOKENS = [
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "sop",
    "eop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
]
# How each special is spelled in the fast tokenizer (ids are unchanged; see the module docstring).
FAST_SPELLING = {"sop": "<sop>", "eop": "<eop>"}

_LAYER_KEY = re.compile(r"^transformer\.encoder\.layers\.(\d+)\.(.+)$")
_GLM_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_LAYER_RENAMES = {  # ChatGLM3 suffix -> Glm suffix, for the 1:1 tensors
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
_TOP_RENAMES = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}
_DROPPED = {"transformer.rotary_pos_emb.inv_freq"}
_REQUIRED_FIELDS = (
    "num_layers",
    "padded_vocab_size",
    "hidden_size",
    "ffn_hidden_size",
    "kv_channels",
    "num_attention_heads",
    "layernorm_epsilon",
)
# Variants of the ChatGLM architecture that Glm cannot express: field -> the value Glm needs.
_SUPPORTED_VALUES = {
    "rmsnorm": True,
    "apply_residual_connection_post_layernorm": False,
    "post_layer_norm": True,
    "add_bias_linear": False,
    "pre_seq_len": None,
}


class ChatGLMConversionError(ValueError):
    """A ChatGLM3 checkpoint cannot be converted; the message names the file or field."""


# --------------------------------------------------------------------------- config


def _heads(cfg: dict[str, Any]) -> tuple[int, int, int]:
    """(attention heads, key/value groups, head dim) of a ChatGLM config."""
    n_heads = int(cfg["num_attention_heads"])
    n_groups = int(cfg["multi_query_group_num"]) if cfg.get("multi_query_attention", False) else n_heads
    return n_heads, n_groups, int(cfg["kv_channels"])


def check_chatglm_config(cfg: dict[str, Any], source: str = "config.json") -> None:
    """Raise ChatGLMConversionError naming the field if ``cfg`` is not a convertible ChatGLM3 config."""
    if cfg.get("model_type", "chatglm") != "chatglm":
        raise ChatGLMConversionError(f"{source}: model_type={cfg.get('model_type')!r}, expected 'chatglm'")
    for name in _REQUIRED_FIELDS:
        if name not in cfg:
            raise ChatGLMConversionError(f"{source}: missing field {name!r} of a ChatGLM3 config")
    if cfg.get("multi_query_attention", False) and "multi_query_group_num" not in cfg:
        raise ChatGLMConversionError(f"{source}: multi_query_attention is set but multi_query_group_num is missing")
    for name, needed in _SUPPORTED_VALUES.items():
        if name in cfg and cfg[name] != needed:
            raise ChatGLMConversionError(
                f"{source}: field {name}={cfg[name]!r} is not supported by GlmForCausalLM (needs {needed!r})"
            )
    n_heads, n_groups, _ = _heads(cfg)
    if n_heads % n_groups:
        raise ChatGLMConversionError(
            f"{source}: num_attention_heads={n_heads} is not a multiple of multi_query_group_num={n_groups}"
        )


def convert_config(chatglm_config: dict[str, Any]) -> GlmConfig:
    """The ``GlmConfig`` equivalent of a ChatGLM3 ``config.json`` (as a dict)."""
    cfg = chatglm_config
    check_chatglm_config(cfg)
    n_heads, n_groups, head_dim = _heads(cfg)
    eos = cfg.get("eos_token_id", 2)  # ChatGLM3's sp model: <unk>=0 <s>=1 </s>=2, pad = unk
    return GlmConfig(
        vocab_size=int(cfg["padded_vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["ffn_hidden_size"]),
        num_hidden_layers=int(cfg["num_layers"]),
        num_attention_heads=n_heads,
        num_key_value_heads=n_groups,
        head_dim=head_dim,
        hidden_act="silu",
        rms_norm_eps=float(cfg["layernorm_epsilon"]),
        attention_bias=bool(cfg.get("add_qkv_bias", False) or cfg.get("add_bias_linear", False)),
        attention_dropout=float(cfg.get("attention_dropout", 0.0)),
        max_position_embeddings=int(cfg.get("seq_length", 8192)),
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0 * float(cfg.get("rope_ratio", 1.0)),
            "partial_rotary_factor": 0.5,  # ChatGLM3 rotates half of each head
        },
        tie_word_embeddings=False,
        pad_token_id=cfg.get("pad_token_id", 0),
        eos_token_id=eos,
        bos_token_id=cfg.get("bos_token_id"),
        use_cache=bool(cfg.get("use_cache", True)),
    )


def invert_config(glm_config: GlmConfig, **extra: Any) -> dict[str, Any]:
    """A ChatGLM3 ``config.json`` dict describing the same network as ``glm_config`` (for real-layout twins)."""
    g = glm_config
    rope = g.rope_parameters or {}
    if abs(float(rope.get("partial_rotary_factor", 0.5)) - 0.5) > 1e-9:
        raise ChatGLMConversionError("invert_config: ChatGLM3 needs rope_parameters.partial_rotary_factor=0.5")
    multi_query = g.num_key_value_heads != g.num_attention_heads
    cfg: dict[str, Any] = {
        "_name_or_path": "THUDM/chatglm3-6b",
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "add_bias_linear": False,
        "add_qkv_bias": bool(g.attention_bias),
        "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False,
        "attention_dropout": float(g.attention_dropout),
        "attention_softmax_in_fp32": True,
        "bias_dropout_fusion": True,
        "ffn_hidden_size": g.intermediate_size,
        "fp32_residual_connection": False,
        "hidden_dropout": 0.0,
        "hidden_size": g.hidden_size,
        "kv_channels": g.head_dim,
        "layernorm_epsilon": g.rms_norm_eps,
        "multi_query_attention": multi_query,
        "multi_query_group_num": g.num_key_value_heads,
        "num_attention_heads": g.num_attention_heads,
        "num_layers": g.num_hidden_layers,
        "original_rope": True,
        "padded_vocab_size": g.vocab_size,
        "post_layer_norm": True,
        "rmsnorm": True,
        "rope_ratio": float(rope.get("rope_theta", 10000.0)) / 10000.0,
        "seq_length": g.max_position_embeddings,
        "use_cache": True,
        "tie_word_embeddings": False,
        "eos_token_id": g.eos_token_id,
        "pad_token_id": g.pad_token_id,
    }
    cfg.update(extra)
    return cfg


# --------------------------------------------------------------------------- weights


def convert_state_dict(sd: dict[str, torch.Tensor], chatglm_config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """ChatGLM3 tensors renamed and split into the native Glm layout (no copies where a view suffices)."""
    check_chatglm_config(chatglm_config)
    n_heads, n_groups, hd = _heads(chatglm_config)
    multi_query = bool(chatglm_config.get("multi_query_attention", False))
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        if key in _DROPPED:
            continue
        if key in _TOP_RENAMES:
            out[_TOP_RENAMES[key]] = tensor
            continue
        m = _LAYER_KEY.match(key)
        if m is None:
            raise ChatGLMConversionError(f"state dict: unexpected ChatGLM3 key {key!r}")
        layer, suffix = m.groups()
        prefix = f"model.layers.{layer}."
        if suffix in _LAYER_RENAMES:
            out[prefix + _LAYER_RENAMES[suffix]] = tensor
        elif suffix.startswith("self_attention.query_key_value."):
            kind = suffix.rsplit(".", 1)[1]  # weight | bias
            q, k, v = _split_qkv(tensor, n_heads, n_groups, hd, multi_query, key)
            for name, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                out[f"{prefix}self_attn.{name}.{kind}"] = part
        else:
            raise ChatGLMConversionError(f"state dict: unexpected ChatGLM3 key {key!r}")
    _check_complete(out, int(chatglm_config["num_layers"]), bool(chatglm_config.get("add_qkv_bias", False)))
    return out


def _split_qkv(t: torch.Tensor, n_heads: int, n_groups: int, hd: int, multi_query: bool, key: str):
    """Split a fused query_key_value weight (rows, hidden) or bias (rows,) into q, k, v."""
    rows = (n_heads + 2 * n_groups) * hd
    if t.shape[0] != rows:
        raise ChatGLMConversionError(
            f"state dict: {key} has {t.shape[0]} rows, expected (heads + 2*groups) * kv_channels = {rows}"
        )
    if multi_query:
        return torch.split(t, [n_heads * hd, n_groups * hd, n_groups * hd], dim=0)
    per_head = t.reshape(n_heads, 3, hd, *t.shape[1:])  # rows are [q_h; k_h; v_h] per head
    return tuple(per_head[:, i].reshape(n_heads * hd, *t.shape[1:]) for i in range(3))


def _check_complete(out: dict[str, torch.Tensor], n_layers: int, qkv_bias: bool) -> None:
    expected = set(_TOP_RENAMES.values())
    for i in range(n_layers):
        p = f"model.layers.{i}."
        expected |= {p + s for s in _LAYER_RENAMES.values()}
        expected |= {f"{p}self_attn.{n}_proj.weight" for n in "qkv"}
        if qkv_bias:
            expected |= {f"{p}self_attn.{n}_proj.bias" for n in "qkv"}
    missing = sorted(expected - set(out))
    if missing:
        raise ChatGLMConversionError(f"state dict: missing tensor for {missing[0]} ({len(missing)} missing in all)")


def invert_state_dict(sd: dict[str, torch.Tensor], glm_config: GlmConfig) -> dict[str, torch.Tensor]:
    """Native Glm tensors in ChatGLM3's layout and key names (the inverse of :func:`convert_state_dict`)."""
    top = {v: k for k, v in _TOP_RENAMES.items()}
    per_layer = {v: k for k, v in _LAYER_RENAMES.items()}
    n_heads, n_groups, hd = glm_config.num_attention_heads, glm_config.num_key_value_heads, glm_config.head_dim
    multi_query = n_groups != n_heads
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        if key in top:
            out[top[key]] = tensor.contiguous()
            continue
        m = _GLM_LAYER_KEY.match(key)
        if m is None:
            raise ChatGLMConversionError(f"state dict: unexpected Glm key {key!r}")
        layer, suffix = m.groups()
        prefix = f"transformer.encoder.layers.{layer}."
        if suffix in per_layer:
            out[prefix + per_layer[suffix]] = tensor.contiguous()
        elif re.fullmatch(r"self_attn\.q_proj\.(weight|bias)", suffix):
            kind = suffix.rsplit(".", 1)[1]
            q, k, v = (sd[f"model.layers.{layer}.self_attn.{n}_proj.{kind}"] for n in "qkv")
            if multi_query:
                fused = torch.cat([q, k, v], dim=0)
            else:
                fused = torch.stack([x.reshape(n_heads, hd, *x.shape[1:]) for x in (q, k, v)], dim=1)
                fused = fused.reshape(3 * n_heads * hd, *q.shape[1:])
            out[f"{prefix}self_attention.query_key_value.{kind}"] = fused.contiguous()
        elif re.fullmatch(r"self_attn\.[kv]_proj\.(weight|bias)", suffix):
            continue  # fused with q above
        else:
            raise ChatGLMConversionError(f"state dict: unexpected Glm key {key!r}")
    # ChatGLM3 checkpoints carry the rotary buffer (dim = kv_channels/2, base 10000 * rope_ratio).
    rot_dim = hd // 2
    base = float((glm_config.rope_parameters or {}).get("rope_theta", 10000.0))
    out["transformer.rotary_pos_emb.inv_freq"] = 1.0 / (base ** (torch.arange(0, rot_dim, 2).float() / rot_dim))
    return out


def load_chatglm_state_dict(src_dir: str | Path) -> dict[str, torch.Tensor]:
    """Read every tensor of a ChatGLM3 directory (safetensors preferred; ``.bin`` with weights_only)."""
    src = Path(src_dir)
    groups = [
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ]
    for index_name, single_name in groups:
        if (src / index_name).is_file():
            index = json.loads((src / index_name).read_text())
            files = sorted(set(index["weight_map"].values()))
        elif (src / single_name).is_file():
            files = [single_name]
        else:
            continue
        sd: dict[str, torch.Tensor] = {}
        for name in files:
            sd.update(_read_tensors(src / name))
        return sd
    raise ChatGLMConversionError(
        f"{src}: no weights found (expected model.safetensors[.index.json] or pytorch_model.bin[.index.json])"
    )


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """One weight file's tensors; an LFS stub, a missing shard or a failed unpickling is one line naming it."""
    if is_lfs_pointer(path):
        raise ChatGLMConversionError(lfs_pointer_message(path))
    if not path.is_file():
        raise ChatGLMConversionError(f"{path}: missing (listed in the weight index)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        # mmap avoids a second copy of a 12 GB checkpoint; it needs the zip format (torch >= 1.6 saves).
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except MemoryError:
        raise
    except Exception as exc:  # UnpicklingError, safetensors' header errors, RuntimeError from torch
        raise ChatGLMConversionError(load_failure_message(path.parent, "weights", exc, (path.name,))) from exc


# --------------------------------------------------------------------------- tokenizer


def convert_tokenizer(src_dir: str | Path) -> PreTrainedTokenizerFast:
    """A fast tokenizer equivalent to ChatGLM3's: its sp ``tokenizer.model`` plus the nine specials at ``sp_size + i``."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, processors
    from transformers.convert_slow_tokenizer import SpmConverter

    path = Path(src_dir) / "tokenizer.model"
    if not path.is_file():
        raise ChatGLMConversionError(f"{path}: missing (ChatGLM3's SentencePiece model)")
    if is_lfs_pointer(path):
        raise ChatGLMConversionError(lfs_pointer_message(path))
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError ("Wire format was corrupt"), ...
        raise ChatGLMConversionError(load_failure_message(path.parent, "tokenizer", exc, (path.name,))) from exc
    pieces = [p.piece for p in proto.pieces]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    # transformers < 5.24 has no ``legacy`` argument (and does not follow every normaliser
    # setting of the sp model: ids then match SentencePiece only for the default settings).
    legacy = {"legacy": True} if "legacy" in inspect.signature(SpmConverter.build_tokenizer_from_spm_proto).parameters else {}
    tok = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, **legacy)
    if tok is None:
        raise ChatGLMConversionError(f"{path}: unsupported SentencePiece model type {proto.trainer_spec.model_type}")

    _check_exact(tok, proto, path)
    names = [FAST_SPELLING.get(t, t) for t in CHATGLM3_SPECIAL_TOKENS]
    clash = [n for n in names if n in vocab]
    if clash:
        raise ChatGLMConversionError(f"{path}: special token {clash[0]!r} is already an sp piece; ids would not match")
    tok.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
    got = [tok.token_to_id(n) for n in names]
    if got != list(range(len(pieces), len(pieces) + len(names))):  # ChatGLM3: special i has id sp_size + i
        raise ChatGLMConversionError(f"{path}: special tokens got ids {got}, expected {len(pieces)}..")

    spec = proto.trainer_spec
    unk, bos, eos = pieces[spec.unk_id], pieces[spec.bos_id], pieces[spec.eos_id]
    gmask, sop = "[gMASK]", FAST_SPELLING["sop"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{gmask} {sop} $A",
        pair=f"{gmask} {sop} $A $B:1 {eos}:1",
        special_tokens=[(gmask, tok.token_to_id(gmask)), (sop, tok.token_to_id(sop)), (eos, spec.eos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=unk,
        bos_token=bos,
        eos_token=eos,
        pad_token=unk,  # ChatGLM3: pad_id = unk_id
        extra_special_tokens=[n for n in names],
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=8192,
    )


SPM_PROBE = "Hello  world, it's 3.14 -- 你好，世界！ tab\there"  # spaces, digits, CJK, punctuation


def _check_exact(tok, proto, path: Path) -> None:
    """Refuse a fast tokenizer that splits text differently from SentencePiece itself (transformers
    before 5.24 ignores some of the sp model's normaliser settings): wrong ids would reach the model."""
    import sentencepiece as spm
    import transformers

    want = spm.SentencePieceProcessor(model_proto=proto.SerializeToString()).encode(SPM_PROBE)
    if tok.encode(SPM_PROBE, add_special_tokens=False).ids != want:
        raise ChatGLMConversionError(
            f"{path}: transformers {transformers.__version__} converts this SentencePiece model inexactly "
            "(ids differ from sentencepiece's); use transformers >= 5.24")


# --------------------------------------------------------------------------- whole checkpoints


def read_chatglm_config(src_dir: str | Path) -> dict[str, Any]:
    """config.json of a ChatGLM3 directory, checked."""
    path = Path(src_dir) / "config.json"
    if not path.is_file():
        raise ChatGLMConversionError(f"{path}: missing")
    cfg = json.loads(path.read_text())
    check_chatglm_config(cfg, source=str(path))
    return cfg


def load_converted(src_dir: str | Path, *, dtype: torch.dtype | str = "auto", device_map: Any = None):
    """(GlmForCausalLM, tokenizer) from a ChatGLM3 directory, converted in memory (no file written)."""
    from transformers import GlmForCausalLM

    chatglm_cfg = read_chatglm_config(src_dir)
    sd = convert_state_dict(load_chatglm_state_dict(src_dir), chatglm_cfg)
    model = GlmForCausalLM.from_pretrained(
        None, config=convert_config(chatglm_cfg), state_dict=sd, dtype=dtype, device_map=device_map
    )
    return model, convert_tokenizer(src_dir)


def convert_checkpoint(src_dir: str | Path, dst_dir: str | Path) -> Path:
    """Write a native Glm directory (config, safetensors, tokenizer) converted from a ChatGLM3 one."""
    dst = Path(dst_dir)
    model, tokenizer = load_converted(src_dir)
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    return dst


CONVERTED_MARKER = "converted.json"
SOURCE_FILES = ("config.json", "tokenizer.model", "*.safetensors", "*.bin", "*.index.json")


def source_checksum(src_dir: str | Path, cache_dir: Path) -> str:
    """sha256 over a ChatGLM3 release's defining files (names and bytes). A 12.5 GB release takes
    about half a minute to hash, so each file's digest is remembered in ``cache_dir`` by its path,
    size and modification time, and later runs hash nothing."""
    import hashlib

    from egmf_core.checkpoint import atomic_write_bytes

    memo_path = cache_dir / "file-checksums.json"
    memo = json.loads(memo_path.read_text()) if memo_path.is_file() else {}
    total = hashlib.sha256()
    files = sorted({f for pattern in SOURCE_FILES for f in Path(src_dir).glob(pattern) if f.is_file()})
    for f in files:
        st = f.stat()
        key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in memo:
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    h.update(chunk)
            memo[key] = h.hexdigest()
        total.update(f"{f.name}:{memo[key]}\n".encode())
    atomic_write_bytes(memo_path, json.dumps(memo, indent=1).encode())
    return total.hexdigest()


def cached_conversion(src_dir: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The native Glm directory converted from a ChatGLM3 release, written once into
    ``<cache>/chatglm3-native/<checksum>/`` and reused by every later run (and worker: a lock file
    makes one convert while the others wait). A changed release has another checksum."""
    import fcntl
    import shutil
    import tempfile

    from egmf_core.paths import default_cache_dir

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "chatglm3-native"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        target = root / source_checksum(src_dir, root)[:16]
        if (target / CONVERTED_MARKER).is_file():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
        try:
            convert_checkpoint(src_dir, tmp)
            (tmp / CONVERTED_MARKER).write_text(json.dumps({"source": Path(src_dir).name, "format": "glm"}))
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert a ChatGLM3 checkpoint to transformers' native Glm layout.")
    parser.add_argument("src", help="ChatGLM3 directory (config.json, weights, tokenizer.model)")
    parser.add_argument("dst", help="output directory for the native GlmForCausalLM checkpoint")
    args = parser.parse_args(argv)
    out = convert_checkpoint(args.src, args.dst)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
