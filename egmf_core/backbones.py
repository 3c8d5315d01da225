"""Builders for the frozen LLM backbones (ChatGLM3-6B, GLM-4-9B, Llama-3-8B-Instruct) and their tiny twins, plus LoRA.

A paper backbone and its twin differ only in where the config and weights come from: both are
real transformers classes (``LlamaForCausalLM``, ``GlmForCausalLM``), frozen, optionally wrapped
with ``peft`` LoRA. Nothing here reaches a hub: every load is ``local_files_only=True`` from a
directory that must exist.

Where paper weights are found (first match wins):
  1. ``ModelConfig.model_path``;
  2. ``$EGMF_MODEL_ROOT/<dir>`` with ``<dir>`` from :data:`FAMILY_DIRS`:
     glm3 -> ``chatglm3-6b``, glm4 -> ``glm-4-9b-hf`` or ``glm-4-9b-chat-hf``,
     llama3 -> ``Meta-Llama-3-8B-Instruct``.

A ChatGLM3 directory (``config.json`` model_type ``chatglm``) is converted once (a cache keyed by its checksum) to the native
``GlmForCausalLM`` (:mod:`egmf_core.convert_chatglm3`) unless ``trust_remote_code`` is set, in
which case its own remote code is loaded (opt-in; it targets transformers 4.x).
dtype: bfloat16 on CUDA, float32 on CPU; on GPU the whole model goes on one GPU (``--jobs`` pins
each worker to one); accelerate's ``device_map="auto"`` splits it only when it does not fit.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from egmf_core.config import ModelConfig
from egmf_core.lfs import folder_lfs_pointer, lfs_pointer_message, load_failure_message
from egmf_core.paths import FAMILY_DIRS, MODEL_ROOT_ENV
from egmf_core.twins import TWIN_SPECS, load_twin

# config.json model_type accepted for each family ("glm" for glm3 = a directory already converted).
FAMILY_MODEL_TYPES: dict[str, tuple[str, ...]] = {
    "glm3": ("chatglm", "glm"),
    "glm4": ("glm",),
    "llama3": ("llama",),
}
# Per-architecture LoRA targets, keyed by model.config.model_type. peft has no default for glm.
LORA_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "glm": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"],
    "glm4": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"],
    "chatglm": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],  # remote code (opt-in)
}


class BackboneError(ValueError):
    """A backbone cannot be built from what is on disk; the message names the directory and field."""


@dataclass
class BackboneInfo:
    """What was loaded, for reports: the backbone's identity, size and placement."""

    name: str  # ModelConfig.backbone, e.g. "glm3" or "glm3-tiny"
    family: str  # "glm3" | "glm4" | "llama3"
    hf_class: str  # e.g. "GlmForCausalLM"
    source: str  # weights directory, or "tiny twin (seed S)"
    hidden_size: int
    n_layers: int
    vocab_size: int  # rows of the input embedding (>= len(tokenizer) for GLM)
    lora_targets: list[str]
    dtype: str
    device: str
    trust_remote_code: bool
    tokenizer_len: int = 0  # len(tokenizer): the ids the tokenizer can produce
    n_params: int = 0  # backbone parameters (no LoRA)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def family_of(backbone: str) -> str:
    """The family of a backbone name: ``glm3-tiny`` -> ``glm3``, ``glm4-full`` -> ``glm4``."""
    family = backbone.removesuffix("-tiny").removesuffix("-full")
    if family not in FAMILY_DIRS:
        raise BackboneError(f"config field model.backbone={backbone!r}: unknown family (known: {', '.join(FAMILY_DIRS)})")
    return family


def resolve_model_dir(cfg: ModelConfig) -> Path:
    """The local directory of a paper backbone: model_path, else $EGMF_MODEL_ROOT/<family dir>."""
    family = family_of(cfg.backbone)
    if cfg.model_path:
        path = Path(cfg.model_path).expanduser()
        if not path.is_dir():
            raise BackboneError(
                f"model.model_path={str(path)!r} is not a directory; point it at the local {family} weights"
            )
        return path
    root = os.environ.get(MODEL_ROOT_ENV)
    names = FAMILY_DIRS[family]
    if not root:
        raise BackboneError(
            f"no weights for backbone {cfg.backbone!r}: set model.model_path, or {MODEL_ROOT_ENV} to a folder "
            f"holding {' or '.join(names)}"
        )
    for name in names:
        if (Path(root) / name).is_dir():
            return Path(root) / name
    raise BackboneError(
        f"{Path(root) / names[0]} does not exist: put the {family} weights there "
        f"({' or '.join(names)} under {MODEL_ROOT_ENV}={root}) or set model.model_path"
    )


def read_model_type(model_dir: Path) -> str:
    """config.json's model_type, with a one-line error naming the file."""
    path = model_dir / "config.json"
    if not path.is_file():
        raise BackboneError(f"{path}: missing (not a transformers checkpoint directory)")
    try:
        model_type = json.loads(path.read_text()).get("model_type")
    except json.JSONDecodeError as exc:
        raise BackboneError(f"{path}: not valid JSON ({exc.msg})") from None
    if not model_type:
        raise BackboneError(f"{path}: field model_type is missing")
    return str(model_type)


def check_architecture(family: str, model_dir: Path, model_type: str, trust_remote_code: bool) -> None:
    """Refuse a directory whose architecture is not the family named (e.g. a Llama dir given for glm4)."""
    allowed = FAMILY_MODEL_TYPES[family]
    if family == "glm4" and model_type == "chatglm" and trust_remote_code:
        return  # THUDM/glm-4-9b-chat (remote-code layout), only when the user opts in
    if model_type not in allowed:
        hint = " (GLM-4's remote-code release needs trust_remote_code=True; or use glm-4-9b-hf / glm-4-9b-chat-hf)" if (
            family == "glm4" and model_type == "chatglm"
        ) else ""
        raise BackboneError(
            f"{model_dir}/config.json: model_type={model_type!r} is not a {family} checkpoint "
            f"(expected {' or '.join(allowed)}){hint}"
        )


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The requested device, else CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def backbone_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA (the paper's mixed precision), float32 on CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


FIT_HEADROOM = 1.3  # weights x this must fit a GPU's free memory (activations, LoRA, optimizer state)


def _device_map(device: torch.device, weight_bytes: int | None = None) -> Any:
    """One GPU per run: the whole model on one GPU when its weights fit there with headroom;
    accelerate's "auto" split over every visible GPU only when they do not (a naive pipeline in
    which one GPU works at a time, so a last resort). Scale-out is more runs (``--jobs``)."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else 0
    if device.index is None and torch.cuda.device_count() > 1 and weight_bytes is not None:
        free, _ = torch.cuda.mem_get_info(index)
        if weight_bytes * FIT_HEADROOM > free:
            return "auto"
    return {"": index}


def checkpoint_bytes(model_dir: Path, dtype: torch.dtype) -> int:
    """The weights' size once loaded in ``dtype``, from the safetensors headers (no tensor is
    read); else the files' size."""
    import struct

    itemsize = torch.empty((), dtype=dtype).element_size()
    total = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        with open(path, "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        for key, meta in header.items():
            if key != "__metadata__":
                total += math.prod(meta["shape"]) * itemsize
    return total or sum(p.stat().st_size for p in model_dir.glob("*.bin"))


def ensure_pad_token(tokenizer, where: str) -> None:
    """Give the tokenizer a pad token: keep its own, else use eos; error if it has neither."""
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is None:
        raise BackboneError(f"{where}: tokenizer has neither pad_token nor eos_token; add one to tokenizer_config.json")
    tokenizer.pad_token = tokenizer.eos_token


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Set requires_grad=False on every parameter (the LLM is frozen; LoRA adds trainable ones)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def build_backbone(cfg: ModelConfig, *, device: str | torch.device | None = None):
    """(frozen model, tokenizer, BackboneInfo) for ``cfg.backbone``; LoRA is applied separately by :func:`apply_lora`."""
    family = family_of(cfg.backbone)
    dev = resolve_device(device)
    dtype = backbone_dtype(dev)
    if cfg.backbone.endswith("-full"):
        from egmf_core.full_twins import build_full_twin, full_twin_tokenizer

        model, built = build_full_twin(family, device=dev, dtype=dtype)
        tokenizer = full_twin_tokenizer(family)
        source, where, hf_class = "full-size twin (seed 0)", cfg.backbone, built.hf_class
    elif cfg.backbone.endswith("-tiny"):
        seed = 0
        model, tokenizer = load_twin(cfg.backbone, seed=seed)
        model = model.to(device=dev, dtype=dtype)
        source, where = f"tiny twin (seed {seed})", cfg.backbone
        hf_class = TWIN_SPECS[cfg.backbone].hf_class
    else:
        model_dir = resolve_model_dir(cfg)
        model_type = read_model_type(model_dir)
        check_architecture(family, model_dir, model_type, cfg.trust_remote_code)
        placement = _device_map(dev, checkpoint_bytes(model_dir, dtype))
        model, tokenizer = _load_local(model_dir, model_type, cfg.trust_remote_code, dtype, placement)
        if placement is None:
            model = model.to(dev)
        source, where = str(model_dir), str(model_dir)
        hf_class = type(model).__name__
    ensure_pad_token(tokenizer, where)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    freeze(model).eval()
    info = BackboneInfo(
        name=cfg.backbone,
        family=family,
        hf_class=hf_class,
        source=source,
        hidden_size=int(model.config.hidden_size),
        n_layers=int(getattr(model.config, "num_hidden_layers", None) or model.config.num_layers),  # chatglm: num_layers
        vocab_size=int(model.get_input_embeddings().num_embeddings),
        lora_targets=list(cfg.lora_targets or default_lora_targets(model)),
        dtype=str(dtype).removeprefix("torch."),
        device=str(next(model.parameters()).device),
        trust_remote_code=bool(cfg.trust_remote_code),
        tokenizer_len=len(tokenizer),
        n_params=backbone_param_count(model),
    )
    return model, tokenizer, info


TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")  # the files a decode failure most likely names


def check_no_lfs_pointers(model_dir: Path) -> None:
    """Refuse a directory cloned without Git LFS: one line naming the first pointer stub."""
    pointer = folder_lfs_pointer(model_dir)
    if pointer is not None:
        raise BackboneError(lfs_pointer_message(pointer))


def load_tokenizer(model_dir: Path, model_type: str, trust_remote_code: bool):
    """The tokenizer of a local directory (ChatGLM3's converted unless remote code is opted in); one-line errors."""
    check_no_lfs_pointers(model_dir)
    if model_type == "chatglm" and not trust_remote_code:
        from egmf_core.convert_chatglm3 import convert_tokenizer

        return convert_tokenizer(model_dir)  # its errors name the file already
    try:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=trust_remote_code)
    except MemoryError:
        raise
    except Exception as exc:  # OSError, protobuf's DecodeError, tokenizers' exceptions, ...
        raise BackboneError(load_failure_message(model_dir, "tokenizer", exc, TOKENIZER_FILES)) from exc


def _load_local(model_dir: Path, model_type: str, trust_remote_code: bool, dtype: torch.dtype, device_map: Any):
    """Model and tokenizer from a local directory (ChatGLM3 through its cached native conversion
    unless remote code is opted in)."""
    check_no_lfs_pointers(model_dir)
    if model_type == "chatglm" and not trust_remote_code:
        from egmf_core.convert_chatglm3 import cached_conversion

        model_dir, model_type = cached_conversion(model_dir), "glm"  # converted once; its errors name the file
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map=device_map,
                                                     local_files_only=True, trust_remote_code=trust_remote_code)
    except MemoryError:
        raise
    except Exception as exc:  # torch's UnpicklingError, safetensors' errors, OSError, ...
        raise BackboneError(load_failure_message(model_dir, "model", exc)) from exc
    return model, load_tokenizer(model_dir, model_type, trust_remote_code)


def default_lora_targets(model: torch.nn.Module) -> list[str]:
    """LoRA target module names for the model's architecture (from :data:`LORA_TARGETS`)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in LORA_TARGETS:
        raise BackboneError(
            f"no default LoRA targets for model_type={model_type!r}; set model.lora_targets "
            f"(known types: {', '.join(LORA_TARGETS)})"
        )
    return list(LORA_TARGETS[model_type])


def apply_lora(model: torch.nn.Module, cfg: ModelConfig, *, seed: int | None = None) -> torch.nn.Module:
    """Wrap the frozen backbone with LoRA (r, alpha, dropout, targets from cfg); unchanged when cfg.lora is False.

    peft draws lora_A's init from the global torch RNG (lora_B starts at zero); pass ``seed`` (the
    run seed) to make that init independent of whatever consumed the RNG before.
    """
    if not cfg.lora:
        return model
    from peft import LoraConfig, get_peft_model

    targets = list(cfg.lora_targets or default_lora_targets(model))
    leaf_names = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    unknown = [t for t in targets if t not in leaf_names]
    if unknown:
        raise BackboneError(
            f"config field model.lora_targets: {unknown[0]!r} is not a Linear layer of {type(model).__name__} "
            f"(has: {', '.join(sorted(leaf_names))})"
        )
    lora_config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    if seed is None:
        return get_peft_model(model, lora_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, lora_config)


def backbone_param_count(model: torch.nn.Module) -> int:
    """Parameters of the backbone itself, excluding any LoRA adapter weights."""
    return sum(p.numel() for name, p in model.named_parameters() if "lora_" not in name)


def trainable_param_count(model: torch.nn.Module) -> int:
    """Parameters with requires_grad (after apply_lora: the LoRA A/B matrices only)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def expected_lora_params(model: torch.nn.Module, targets: list[str], r: int) -> int:
    """sum over targeted Linear layers of r * (in_features + out_features): LoRA's A (r x in) and B (out x r)."""
    return sum(
        r * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets
    )
