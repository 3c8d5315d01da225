"""The main tables' baselines behind EGMF's interface: MSE-Adapter and TFN, built from ``model.method``.

``egmf_core.run.build_model`` calls :func:`build_baseline` when ``model.method`` is not "egmf";
nothing else in the core dispatches on the method. Both wrappers satisfy what ``train.fit`` and
``train.evaluate`` already use:

* :class:`MSEAdapterModel` ("mse_adapter") is EGMF with its fusion, experts, gating and pseudo
  token projector replaced by MSE-Adapter's plugin (egmf_core/mse_adapter.py): the same prompt
  (pseudo tokens, then the utterance), the same frozen LLM (LoRA only if ``model.lora``; the
  baseline's row turns it off), answer parsing, metrics and loop. ``fuse`` returns T_pseudo and
  no gate, so runs record no gating statistics.
* :class:`TFNModel` ("tfn") is the Tensor Fusion Network (egmf_core/tfn.py): no LLM. It reads
  the utterance's token ids from the backbone's tokenizer (loaded alone: no LLM weights are
  built or read) into a learned embedding, and predicts the label directly
  (``predicts_directly``): ``train.evaluate`` scores its argmax / score, there are no answers to
  parse (invalid rate 0) and the evaluation mode is recorded as "direct".
"""

from __future__ import annotations

import torch
from torch import nn

from egmf_core.config import ModelConfig, RunConfig
from egmf_core.data.dataset import SPECS, DatasetSpec
from egmf_core.model import EGMF
from egmf_core.mse_adapter import LSTM_HIDDEN_BY_DATASET, MSEAdapter, MSEAdapterSettings
from egmf_core.seeding import seed_everything
from egmf_core.tfn import TFN, TFNSettings
from egmf_core.tfn import loss as tfn_loss
from egmf_core.tfn import predict as tfn_predict


class MSEAdapterModel(EGMF):
    """MSE-Adapter's plugin in EGMF's place around a frozen LLM: ``fuse`` -> (T_pseudo, None).

    Prompt assembly, the LM loss and decoding are EGMF's (inherited); only the trainable modules
    differ. ``dataset`` picks MSE-Adapter's per-dataset LSTM widths when the config leaves them unset.
    """

    def __init__(self, cfg: ModelConfig, llm: nn.Module, audio_dim: int, vision_dim: int, dataset: str):
        nn.Module.__init__(self)  # not EGMF.__init__: none of EGMF's own modules are built
        self.cfg, self.llm = cfg, llm
        audio_h, vision_h = LSTM_HIDDEN_BY_DATASET[dataset]
        self.adapter = MSEAdapter(llm.get_input_embeddings().embedding_dim, audio_dim, vision_dim, cfg.n_tokens,
                                  MSEAdapterSettings(
            modalities=tuple(cfg.modalities), d_mix=cfg.mse_d_mix,
            audio_lstm_hidden=cfg.mse_audio_lstm_hidden or audio_h,
            vision_lstm_hidden=cfg.mse_vision_lstm_hidden or vision_h,
            lstm_layers=cfg.mse_lstm_layers, lstm_dropout=cfg.mse_lstm_dropout,
            msf_ratios=tuple(cfg.mse_msf_ratios), msf_activation=cfg.mse_msf_activation))

    @property
    def projector(self) -> nn.Module:
        """The module the training loop reads the device from (EGMF's attribute of that name)."""
        return self.adapter.projector

    def fuse(self, batch: dict[str, torch.Tensor]):
        """Multimodal features -> T_pseudo (B, n, d_llm); no gate (None)."""
        e_text = None
        if "text" in self.adapter.modalities:
            with torch.no_grad():  # the frozen LLM's own input embeddings, as in EGMF
                e_text = self.llm.get_input_embeddings()(batch["utt_ids"])  # (B, L_t, d_llm)
        t_pseudo = self.adapter(e_text, batch["utt_mask"], batch["audio"], batch["audio_lengths"],
                                batch["vision"], batch["vision_lengths"])
        return t_pseudo, None


class TFNModel(nn.Module):
    """TFN on a collated batch: ``forward`` -> (loss, None), ``predict`` -> class indices or scores (B,)."""

    predicts_directly = True  # train.evaluate scores predict(), no LLM answers to parse

    def __init__(self, cfg: ModelConfig, vocab_size: int, audio_dim: int, vision_dim: int, spec: DatasetSpec):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        classes = len(spec.labels) if spec.task == "classification" else 1
        squash = spec.label_range if (cfg.tfn_squash and spec.task == "regression") else None
        self.tfn = TFN(vocab_size, audio_dim, vision_dim, classes, TFNSettings(
            modalities=tuple(cfg.modalities), text_embed_dim=cfg.tfn_text_embed_dim, text_hidden=cfg.tfn_text_hidden,
            text_out=cfg.tfn_text_out, audio_hidden=cfg.tfn_audio_hidden, vision_hidden=cfg.tfn_vision_hidden,
            post_fusion_dim=cfg.tfn_post_fusion_dim, dropouts=tuple(cfg.tfn_dropout),
            input_norm=cfg.tfn_input_norm, output_range=squash))

    @property
    def projector(self) -> nn.Module:
        """The module the training loop reads the device from."""
        return self.tfn.post_fusion

    def egmf_parameters(self) -> list[nn.Parameter]:
        """Every parameter: TFN is all the model there is (one optimizer group)."""
        return list(self.parameters())

    def outputs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.tfn(batch["utt_ids"], batch["utt_mask"], batch["audio"], batch["audio_lengths"],
                        batch["vision"], batch["vision_lengths"])  # (B, classes) or (B, 1)

    def forward(self, batch: dict[str, torch.Tensor]):
        """Cross-entropy (classification) or L1 (regression, as MMSA) against batch["target"]."""
        return tfn_loss(self.outputs(batch).float(), batch["target"], self.spec.task), None

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class indices, or scores clipped to the label range (as a parsed answer is): (B,)."""
        pred = tfn_predict(self.outputs(batch).float(), self.spec.task)
        if self.spec.task == "regression":
            lo, hi = self.spec.label_range
            pred = pred.clamp(lo, hi)
        return pred


def build_baseline(cfg: RunConfig, audio_dim: int, vision_dim: int, *, device: torch.device | None = None):
    """(model, tokenizer, BackboneInfo) for ``cfg.model.method`` "mse_adapter" or "tfn"."""
    if cfg.model.method == "mse_adapter":
        from egmf_core.backbones import apply_lora, build_backbone

        llm, tokenizer, info = build_backbone(cfg.model, device=device)
        llm = apply_lora(llm, cfg.model, seed=cfg.seed)
        seed_everything(cfg.seed)  # the plugin's init depends on the run seed only
        model = MSEAdapterModel(cfg.model, llm, audio_dim, vision_dim, cfg.data.name)
        model.adapter.to(device or next(llm.parameters()).device)
        return model, tokenizer, info
    if cfg.model.method == "tfn":
        tokenizer, info = load_tokenizer_only(cfg.model, device)
        seed_everything(cfg.seed)
        model = TFNModel(cfg.model, len(tokenizer), audio_dim, vision_dim, SPECS[cfg.data.name])
        return model.to(device or torch.device("cpu")), tokenizer, info
    raise ValueError(f"config field model.method={cfg.model.method!r}: no baseline of that name")


def load_tokenizer_only(cfg: ModelConfig, device: torch.device | None):
    """The backbone's tokenizer without its model, and a BackboneInfo that says no LLM was loaded."""
    from egmf_core.backbones import (
        BackboneInfo,
        ensure_pad_token,
        family_of,
        load_tokenizer,
        read_model_type,
        resolve_model_dir,
    )

    if cfg.backbone.endswith("-tiny"):
        from transformers import AutoTokenizer

        from egmf_core.twins import ensure_twin

        tokenizer, where = AutoTokenizer.from_pretrained(ensure_twin(cfg.backbone), local_files_only=True), cfg.backbone
    elif cfg.backbone.endswith("-full"):
        from egmf_core.full_twins import full_twin_tokenizer

        tokenizer, where = full_twin_tokenizer(family_of(cfg.backbone)), cfg.backbone
    else:
        model_dir = resolve_model_dir(cfg)
        tokenizer = load_tokenizer(model_dir, read_model_type(model_dir), cfg.trust_remote_code)
        where = str(model_dir)
    ensure_pad_token(tokenizer, where)
    info = BackboneInfo(name=cfg.backbone, family=family_of(cfg.backbone), hf_class="none (TFN: no LLM)",
                        source=f"no LLM: tokenizer of {where}", hidden_size=0, n_layers=0,
                        vocab_size=len(tokenizer), lora_targets=[], dtype="float32",
                        device=str(device or "cpu"), trust_remote_code=bool(cfg.trust_remote_code),
                        tokenizer_len=len(tokenizer), n_params=0)
    return tokenizer, info
