"""Configuration dataclasses for EGMF: every choice the paper leaves open is a field here.

Sources for defaults (see ``../shared/paper/egmf.md``):
  [S] the paper's structured summary, [P] the closest public design (MSE-Adapter),
  [C] our own choice where both are silent (each listed in every report's assumptions).

Configs are plain dataclasses so that an ablation row is a dict of overrides
(``apply_overrides(cfg, {"model.experts": ["E1", "E3"]})``) and a run is identified by
the hash of its JSON form (``config_hash``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

MODALITIES = ("text", "audio", "visual")
EXPERTS = ("E1", "E2", "E3")  # canonical order: ExpertBank's K axis (and so alpha's columns) follows it
GATING_MODES = ("hierarchical", "single_stage", "uniform")
BACKBONES = ("glm3", "glm4", "llama3", "glm3-tiny", "glm4-tiny", "llama3-tiny", "glm3-full", "glm4-full", "llama3-full")
DATASETS = ("mosei", "sims_v2", "meld", "cherma")
PROMPT_FORMATS = ("raw", "chat")  # egmf_core/prompts.py
ACTIVATIONS = ("mish", "gelu", "swish", "relu", "tanh")  # egmf_core/experts.py builds each
AV_ENCODER_KINDS = ("attn_pool", "mean_pool", "gru")  # egmf_core/encoders.py
BETA_MODES = ("learned", "fixed")  # egmf_core/gating.py
INVALID_FALLBACKS = ("majority", "mean", "wrong")  # egmf_core/answers.py
FUSION_DIRECTIONS = ("text_queries", "bidirectional")
# model.method: EGMF, or a baseline of the main tables (egmf_core/baselines.py builds each)
METHODS = ("egmf", "mse_adapter", "tfn")
MSE_ACTIVATIONS = ("gelu", "relu", "silu", "tanh")  # egmf_core/mse_adapter.py builds each
TFN_INPUT_NORMS = ("batch", "layer", "none")  # egmf_core/tfn.py


# [P] early stopping after 8 (classification) / 10 (regression) validation passes without improvement
DEFAULT_PATIENCE: dict[str, int] = {"classification": 8, "regression": 10}


@dataclass
class ModelConfig:
    """The EGMF model: fusion, experts, gating, pseudo tokens and the LLM backbone."""

    backbone: str = "glm3"  # [S] GLM3-6B is the paper's main backbone; "-tiny" / "-full" = random twin
    model_path: str | None = None  # local weights dir (paper profile); env EGMF_MODEL_ROOT
    trust_remote_code: bool = False  # never on unless the user opts in (recorded in reports)
    d_h: int = 256  # [C] fusion width d_h; the paper does not state it
    av_encoder: str = "attn_pool"  # [C] AudioVisualEncoder: "attn_pool" | "mean_pool" | "gru"
    text_proj: str = "linear"  # [C] H_text projection: "linear" or "mlp" (GELU hidden layer)
    # [C] Eq. 1-2 as written: "text_queries" (text queries audio/visual); "bidirectional" also lets
    # audio/visual attend to text first (the seed summary's word "bidirectional")
    fusion_direction: str = "text_queries"
    fusion_heads: int = 4  # [C] heads in the cross/self attention of Eq. 1-2
    dropout: float = 0.1  # [C]
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))  # ablation switch
    experts: list[str] = field(default_factory=lambda: list(EXPERTS))  # ablation switch
    # [S] bottleneck ratios 1:8, 1:4, 1:2 and Mish, GELU, Swish, paired in that order (default).
    expert_ratio: dict[str, int] = field(default_factory=lambda: {"E1": 8, "E2": 4, "E3": 2})
    expert_activation: dict[str, str] = field(
        default_factory=lambda: {"E1": "mish", "E2": "gelu", "E3": "swish"}
    )  # [S] the activations paired with the ratios above
    gating: str = "hierarchical"  # [S] Eq. 3; ablations: "single_stage" (alpha = w), "uniform"
    gate_hidden: int | None = None  # [C] width of the alpha MLP in Eq. 3; None = d_h
    beta_mode: str = "learned"  # [C] beta_i = sigmoid(Linear([f; w])) ("learned") or 1 ("fixed")
    n_tokens: int = 4  # [P] number of pseudo tokens
    pseudo_token_mode: str = "repeat"  # [S] Repeat(Linear_proj(f)); "distinct" = n projections
    text_in_prompt: bool = True  # [P] the utterance also enters the prompt as tokens
    lora: bool = True  # [S] LoRA on the frozen LLM
    lora_r: int = 8  # [P]
    lora_alpha: int = 16  # [C]
    lora_dropout: float = 0.05  # [C]
    lora_targets: list[str] | None = None  # None = per-architecture default (backbones.py)
    max_text_tokens: int = 64  # [C] utterance tokens kept (fusion and prompt)
    class_target: str = "word"  # [P] target for a class: the label word ("word") or "index"
    prompt_format: str = "raw"  # [C] "raw" text prompt, or "chat": the tokenizer's chat template
    # ---- Fields added after smoke results were committed: each is listed in ADDED_FIELDS and left
    # out of a run's id at its default, so every earlier run keeps its id (see identity_dict).

    # Which model: "egmf"; "mse_adapter" (MSE-Adapter's plugin in EGMF's place, same prompt and LLM);
    # "tfn" (Tensor Fusion Network: no LLM, predicts the label directly). egmf_core/baselines.py
    method: str = "egmf"
    # MSE-Adapter (egmf_core/mse_adapter.py): P = its paper and its repository's configs (public forks)

    mse_d_mix: int = 256  # [P] TGM/MSF width (the repository hard-codes 256; gives its 2.6-2.8M parameters)
    mse_audio_lstm_hidden: int | None = None  # [P] audio LSTM units; None = its per-dataset config (64; CHERMA 32)
    mse_vision_lstm_hidden: int | None = None  # [P] visual LSTM units; None = its per-dataset config (32; SIMS-V2 64, CHERMA 16)
    mse_lstm_layers: int = 1  # [P] LSTM layers of the audio/visual encoders
    mse_lstm_dropout: float = 0.0  # [P] dropout after the audio/visual LSTMs
    mse_msf_ratios: list[int] = field(default_factory=lambda: [8, 32, 16])  # [P] MSF hidden widths d_llm/8, /32, /16
    mse_msf_activation: str = "gelu"  # [P] activation of the MSF branches
    # TFN (egmf_core/tfn.py): B = the TFN paper (Zadeh et al., EMNLP 2017) or MMSA's implementation

    tfn_text_embed_dim: int = 300  # [B] token embedding width (the paper's GloVe width; learned here)
    tfn_text_hidden: int = 128  # [B] units of the language LSTM
    tfn_text_out: int = 128  # [B] width of z_l
    tfn_audio_hidden: int = 32  # [B] units of the acoustic subnetwork
    tfn_vision_hidden: int = 32  # [B] units of the visual subnetwork
    tfn_post_fusion_dim: int = 128  # [B] units of the inference subnetwork
    tfn_dropout: list[float] = field(default_factory=lambda: [0.2, 0.2, 0.2, 0.2])  # [C] text, audio, visual, post-fusion
    tfn_input_norm: str = "batch"  # [B] norm of the pooled audio/visual features (MMSA: BatchNorm): batch | layer | none
    tfn_squash: bool = False  # [C] True = MMSA's sigmoid squash of a score into the label range; False = linear


@dataclass
class TrainConfig:
    """The one training loop's knobs (train.fit) and the evaluation mode."""

    lr: float = 5e-5  # [P]
    fusion_lr: float | None = None  # [C] lr for EGMF's own modules; None = lr
    weight_decay: float = 0.01  # [C]
    adam_eps: float = 1e-4  # [P]
    warmup_ratio: float = 0.1  # [P] cosine schedule with 10% warmup
    grad_clip: float = 1.0  # [C]
    batch_size: int = 8  # [P]
    eval_batch_size: int = 32  # [C]
    epochs: int = 30  # [C] upper bound; early stopping usually ends sooner
    max_steps: int | None = None  # overrides epochs when set (smoke profile)
    eval_every: int | None = None  # steps between validation passes; None = once per epoch
    patience: int | None = None  # None = [P] 8 (classification) / 10 (regression) evaluations
    eval_mode: str = "generate"  # [S] greedy generation; "score" = label log-likelihood ranking
    valid_eval_mode: str | None = None  # [C] validation passes' mode; None = eval_mode (one mode for both)
    select_on: str = "valid"  # model selection split: never the test split
    max_new_tokens_cls: int = 6  # [C] covers the longest label's tokens
    max_new_tokens_reg: int = 6  # [C] "-2.5" plus end of sequence
    invalid_fallback: str = "majority"  # [C] what metrics use for an unparseable answer
    nan_policy: str = "fail"  # a NaN loss stops the run and records it as failed
    mixed_precision: str = "auto"  # bf16 autocast on GPU, fp32 on CPU
    checkpoint_every: int | None = None  # steps between resumable checkpoints (None = off)
    log_every: int = 50  # steps between reads of the training loss (each read is a host sync)
    compile: bool = False  # torch.compile each decoder layer (regional compilation); measured in gpu-check


@dataclass
class DataConfig:
    """Where a dataset comes from and how much of it is used."""

    name: str = "mosei"
    root: str | None = None  # directory holding the dataset's files (layout in data/README)
    synth_size: int | None = None  # smoke profile: samples per split (None = synth default)
    synth_seed: int = 0  # the synthetic twin's seed (fixed: data do not vary with run seed)
    max_train: int | None = None  # cap on training samples (None = all)
    verify_checksums: bool = False
    strict: bool = False  # NaN / inf features are errors, not zeros (the field's readers zero them)


@dataclass
class RunConfig:
    """One run of the grid: a model on a dataset with a seed, under a profile."""

    profile: str = "smoke"
    seed: int = 1111
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        d = dict(d)
        return cls(
            profile=d.get("profile", "smoke"),
            seed=int(d.get("seed", 1111)),
            model=_build(ModelConfig, d.get("model", {}), "model"),
            train=_build(TrainConfig, d.get("train", {}), "train"),
            data=_build(DataConfig, d.get("data", {}), "data"),
        )


class ConfigError(ValueError):
    """A configuration value is unknown or out of range; the message names the field."""


def _build(cls, values: dict[str, Any], prefix: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config field {prefix}.{unknown[0]} (known: {', '.join(sorted(names))})")
    return cls(**values)


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """A new RunConfig with dotted-key overrides applied, e.g. {"model.experts": ["E1"]}."""
    d = cfg.to_dict()
    for key, value in overrides.items():
        parts = key.split(".")
        node = d
        for p in parts[:-1]:
            if p not in node or not isinstance(node[p], dict):
                raise ConfigError(f"unknown config field {key}")
            node = node[p]
        if parts[-1] not in node:
            raise ConfigError(f"unknown config field {key}")
        node[parts[-1]] = value
    return validate(RunConfig.from_dict(d))


def _task(dataset: str) -> str:
    """The dataset spec's task ("classification" | "regression"); imported here, not at the top,
    so that importing the config stays free of numpy."""
    from egmf_core.data.dataset import SPECS

    return SPECS[dataset].task


def validate(cfg: RunConfig) -> RunConfig:
    """Check ranges and names once, at the boundary; raise ConfigError naming the field."""
    m, t, dc = cfg.model, cfg.train, cfg.data

    def need(ok: bool, name: str, value: Any, what: str) -> None:
        if not ok:
            raise ConfigError(f"config field {name}={value!r}: {what}")

    need(isinstance(cfg.profile, str) and cfg.profile, "profile", cfg.profile, "must be a harness profile's name")
    need(m.backbone in BACKBONES, "model.backbone", m.backbone, f"must be one of {BACKBONES}")
    need(dc.name in DATASETS, "data.name", dc.name, f"must be one of {DATASETS}")
    need(len(m.modalities) > 0, "model.modalities", m.modalities, "must name at least one modality")
    need(set(m.modalities) <= set(MODALITIES), "model.modalities", m.modalities, f"must be a subset of {MODALITIES}")
    need(len(set(m.modalities)) == len(m.modalities), "model.modalities", m.modalities, "has duplicates")
    need(len(m.experts) > 0, "model.experts", m.experts, "must name at least one expert")
    need(set(m.experts) <= set(EXPERTS), "model.experts", m.experts, f"must be a subset of {EXPERTS}")
    need(len(set(m.experts)) == len(m.experts), "model.experts", m.experts, "has duplicates")
    # One model, one id: ["E3", "E1"] is ["E1", "E3"] (ExpertBank trusts it), in a new config, not in place.
    cfg = dataclasses.replace(cfg, model=(m := dataclasses.replace(m, experts=[e for e in EXPERTS if e in m.experts])))
    need(set(m.expert_ratio) == set(EXPERTS), "model.expert_ratio", m.expert_ratio, f"must give a ratio for each of {EXPERTS}")
    need(all(isinstance(r, int) and 1 <= r <= m.d_h for r in m.expert_ratio.values()), "model.expert_ratio", m.expert_ratio, "ratios must be integers in [1, d_h]")
    need(set(m.expert_activation) == set(EXPERTS), "model.expert_activation", m.expert_activation, f"must name an activation for each of {EXPERTS}")
    need(all(a in ACTIVATIONS for a in m.expert_activation.values()), "model.expert_activation", m.expert_activation, f"activations must be in {ACTIVATIONS}")
    need(m.gating in GATING_MODES, "model.gating", m.gating, f"must be one of {GATING_MODES}")
    need(m.beta_mode in BETA_MODES, "model.beta_mode", m.beta_mode, f"must be one of {BETA_MODES}")
    need(m.text_proj in ("linear", "mlp"), "model.text_proj", m.text_proj, "must be 'linear' or 'mlp'")
    need(m.av_encoder in AV_ENCODER_KINDS, "model.av_encoder", m.av_encoder, f"must be one of {AV_ENCODER_KINDS}")
    need(isinstance(m.n_tokens, int) and m.n_tokens > 0, "model.n_tokens", m.n_tokens, "must be a positive integer")
    need(m.pseudo_token_mode in ("repeat", "distinct"), "model.pseudo_token_mode", m.pseudo_token_mode, "must be 'repeat' or 'distinct'")
    need(m.d_h > 0 and m.d_h % m.fusion_heads == 0, "model.d_h", m.d_h, f"must be positive and divisible by fusion_heads={m.fusion_heads}")
    need(0.0 <= m.dropout < 1.0, "model.dropout", m.dropout, "must be in [0, 1)")
    need(m.lora_r > 0, "model.lora_r", m.lora_r, "must be positive")
    need(m.max_text_tokens > 0, "model.max_text_tokens", m.max_text_tokens, "must be positive")
    need(m.class_target in ("word", "index"), "model.class_target", m.class_target, "must be 'word' or 'index'")
    need(m.prompt_format in PROMPT_FORMATS, "model.prompt_format", m.prompt_format, f"must be one of {PROMPT_FORMATS}")
    _validate_baselines(m, need)
    need(t.lr > 0, "train.lr", t.lr, "must be positive")
    need(t.batch_size > 0, "train.batch_size", t.batch_size, "must be positive")
    need(t.eval_batch_size > 0, "train.eval_batch_size", t.eval_batch_size, "must be positive")
    need(0.0 <= t.warmup_ratio < 1.0, "train.warmup_ratio", t.warmup_ratio, "must be in [0, 1)")
    need(t.max_steps is None or t.max_steps > 0, "train.max_steps", t.max_steps, "must be positive")
    need(t.epochs > 0, "train.epochs", t.epochs, "must be positive")
    need(t.eval_mode in ("generate", "score"), "train.eval_mode", t.eval_mode, "must be 'generate' or 'score'")
    need(t.valid_eval_mode in (None, "generate", "score"), "train.valid_eval_mode", t.valid_eval_mode,
         "must be 'generate', 'score' or unset")
    regression = _task(dc.name) == "regression"
    for name, mode in (("train.valid_eval_mode", t.valid_eval_mode), ("train.eval_mode", t.eval_mode)):
        need(not (mode == "score" and regression), name, mode,
             f"label scoring needs a classification dataset, and {dc.name} is regression")
    need(m.fusion_direction in FUSION_DIRECTIONS, "model.fusion_direction", m.fusion_direction,
         f"must be one of {FUSION_DIRECTIONS}")
    need(t.checkpoint_every is None or t.checkpoint_every > 0, "train.checkpoint_every", t.checkpoint_every,
         "must be a positive number of steps or unset")
    need(t.eval_every is None or t.eval_every > 0, "train.eval_every", t.eval_every, "must be positive or unset")
    need(isinstance(t.log_every, int) and t.log_every > 0, "train.log_every", t.log_every, "must be a positive integer")
    need(t.patience is None or t.patience > 0, "train.patience", t.patience, "must be positive or unset")
    need(t.select_on == "valid", "train.select_on", t.select_on, "model selection uses the validation split only")
    need(t.invalid_fallback in INVALID_FALLBACKS, "train.invalid_fallback", t.invalid_fallback, f"must be one of {INVALID_FALLBACKS}")
    need(t.mixed_precision in ("auto", "no", "bf16"), "train.mixed_precision", t.mixed_precision, "must be auto, no or bf16")
    return cfg


def _validate_baselines(m: ModelConfig, need) -> None:
    """The fields of model.method and its baselines (``need`` as in :func:`validate`)."""
    need(m.method in METHODS, "model.method", m.method, f"must be one of {METHODS}")
    need(m.mse_d_mix > 0, "model.mse_d_mix", m.mse_d_mix, "must be positive")
    for name in ("mse_audio_lstm_hidden", "mse_vision_lstm_hidden"):
        value = getattr(m, name)
        need(value is None or value > 0, f"model.{name}", value, "must be positive or unset")
    need(m.mse_lstm_layers > 0, "model.mse_lstm_layers", m.mse_lstm_layers, "must be positive")
    need(0.0 <= m.mse_lstm_dropout < 1.0, "model.mse_lstm_dropout", m.mse_lstm_dropout, "must be in [0, 1)")
    need(len(m.mse_msf_ratios) > 0 and all(isinstance(r, int) and r > 0 for r in m.mse_msf_ratios),
         "model.mse_msf_ratios", m.mse_msf_ratios, "must be a non-empty list of positive integers")
    need(m.mse_msf_activation in MSE_ACTIVATIONS, "model.mse_msf_activation", m.mse_msf_activation,
         f"must be one of {MSE_ACTIVATIONS}")
    widths = ("tfn_text_embed_dim", "tfn_text_hidden", "tfn_text_out", "tfn_audio_hidden", "tfn_vision_hidden",
              "tfn_post_fusion_dim")
    for name in widths:
        need(getattr(m, name) > 0, f"model.{name}", getattr(m, name), "must be positive")
    need(len(m.tfn_dropout) == 4 and all(0.0 <= p < 1.0 for p in m.tfn_dropout), "model.tfn_dropout",
         m.tfn_dropout, "must give 4 rates in [0, 1): text, audio, visual, post-fusion")
    need(m.tfn_input_norm in TFN_INPUT_NORMS, "model.tfn_input_norm", m.tfn_input_norm,
         f"must be one of {TFN_INPUT_NORMS}")


# Fields added after results were committed: section -> field names. At its default a field here
# is left out of a run's identity (identity_dict), so the ids of runs made before it existed stay
# what they were; set to anything else, it is part of the id. A new field belongs here (test:
# tests/test_config_identity.py).
ADDED_FIELDS: dict[str, tuple[str, ...]] = {
    "model": (
        "method", "mse_d_mix", "mse_audio_lstm_hidden", "mse_vision_lstm_hidden", "mse_lstm_layers",
        "mse_lstm_dropout", "mse_msf_ratios", "mse_msf_activation", "tfn_text_embed_dim", "tfn_text_hidden",
        "tfn_text_out", "tfn_audio_hidden", "tfn_vision_hidden", "tfn_post_fusion_dim", "tfn_dropout",
        "tfn_input_norm", "tfn_squash",
    ),
}
_SECTION_CLASSES = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def added_field_defaults() -> dict[tuple[str, str], Any]:
    """(section, field) -> default value of every field in ADDED_FIELDS."""
    out = {}
    for section, names in ADDED_FIELDS.items():
        fields = {f.name: f for f in dataclasses.fields(_SECTION_CLASSES[section])}
        for name in names:
            f = fields[name]
            out[(section, name)] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return out


def identity_dict(cfg: RunConfig | dict[str, Any]) -> dict[str, Any]:
    """What identifies a run: its config as a dict, without the ADDED_FIELDS at their defaults.

    A stored run's config (a dict) passes through unchanged unless it holds such a field at its
    default; the input is never modified.
    """
    d = cfg.to_dict() if isinstance(cfg, RunConfig) else dict(cfg)
    for (section, name), default in added_field_defaults().items():
        part = d.get(section)
        if isinstance(part, dict) and name in part and _canonical(part[name]) == _canonical(default):
            d[section] = {k: v for k, v in part.items() if k != name}
    return d


def config_hash(cfg: RunConfig | dict[str, Any]) -> str:
    """A stable 12-hex-digit id of a run's configuration (sorted-key JSON of identity_dict, sha256)."""
    d = identity_dict(cfg)
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]
