"""EGMF: audio/visual encoders, text-centric fusion, experts under gating, pseudo tokens, frozen LLM.

Data flow for one batch (shapes for batch B):
  utterance ids -> frozen LLM embeddings -> TextProjection           H_text (B, L_t, d_h)
  audio, visual -> AudioVisualEncoder                                 H_a, H_v (B, d_h) -> H_av (B, M, d_h)
  Eq. 1-2  TextCentricFusion(H_text, H_av)                            f_fusion (B, d_h)
  Eq. 3    ExpertBank + HierarchicalGating                            f_enhanced (B, d_h)
  PseudoTokenProjector                                                T_pseudo (B, n, d_llm)
  [E_prefix; T_pseudo; E_suffix; P_task] -> LLM (frozen + LoRA)       answer tokens
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from egmf_core.config import ModelConfig
from egmf_core.encoders import AudioVisualEncoder, TextProjection
from egmf_core.experts import ExpertBank
from egmf_core.fusion import LearnedQuery, TextCentricFusion
from egmf_core.gating import HierarchicalGating
from egmf_core.pseudo_tokens import PseudoTokenProjector, inject_pseudo_tokens


class EGMF(nn.Module):
    """EGMF's trainable modules around a frozen (optionally LoRA-adapted) causal LM."""

    def __init__(self, cfg: ModelConfig, llm: nn.Module, audio_dim: int, vision_dim: int):
        super().__init__()
        self.cfg = cfg
        self.llm = llm
        d_llm = llm.get_input_embeddings().embedding_dim
        mods = set(cfg.modalities)
        # Removing a modality removes its module: no parameters, no path (config switch, not a copy).
        self.text_proj = TextProjection(d_llm, cfg.d_h, cfg.dropout, cfg.text_proj) if "text" in mods else None
        self.text_query = LearnedQuery(cfg.d_h) if "text" not in mods else None
        self.audio_enc = AudioVisualEncoder(audio_dim, cfg.d_h, cfg.av_encoder, cfg.dropout) if "audio" in mods else None
        self.visual_enc = AudioVisualEncoder(vision_dim, cfg.d_h, cfg.av_encoder, cfg.dropout) if "visual" in mods else None
        self.fusion = TextCentricFusion(cfg.d_h, cfg.fusion_heads, cfg.dropout, cfg.fusion_direction)
        self.experts = ExpertBank(cfg.d_h, list(cfg.experts), cfg.expert_ratio, cfg.expert_activation, cfg.dropout)
        self.gating = HierarchicalGating(cfg.d_h, len(cfg.experts), mode=cfg.gating, beta_mode=cfg.beta_mode,
                                         hidden=cfg.gate_hidden)
        self.projector = PseudoTokenProjector(cfg.d_h, d_llm, cfg.n_tokens, cfg.pseudo_token_mode)

    def egmf_parameters(self) -> list[nn.Parameter]:
        """EGMF's own parameters (everything but the LLM)."""
        return [p for n, p in self.named_parameters() if not n.startswith("llm.")]

    def fuse(self, batch: dict[str, torch.Tensor]):
        """Multimodal features -> T_pseudo (B, n, d_llm) and the gate's alpha/beta/w."""
        B = batch["audio"].shape[0]
        if self.text_proj is not None:
            with torch.no_grad():  # H_text comes from the LLM's own frozen input embeddings
                e_text = self.llm.get_input_embeddings()(batch["utt_ids"])  # (B, L_t, d_llm)
            h_text = self.text_proj(e_text.float())  # H_text: (B, L_t, d_h)
            text_mask = batch["utt_mask"]  # (B, L_t)
        else:
            h_text = self.text_query(B)  # (B, 1, d_h): a learned query replaces the text
            text_mask = torch.ones(B, 1, dtype=torch.bool, device=h_text.device)
        av = []
        if self.audio_enc is not None:
            av.append(self.audio_enc(batch["audio"], batch["audio_lengths"]))  # H_a: (B, d_h)
        if self.visual_enc is not None:
            av.append(self.visual_enc(batch["vision"], batch["vision_lengths"]))  # H_v: (B, d_h)
        h_av = torch.stack(av, dim=1) if av else None  # H_av: (B, M, d_h), M <= 2
        f_fusion = self.fusion(h_text, text_mask, h_av)  # (B, d_h)
        expert_out = self.experts(f_fusion)  # E_k(f_fusion): (B, K, d_h)
        f_enhanced, gate = self.gating(f_fusion, expert_out)  # (B, d_h)
        return self.projector(f_enhanced), gate  # T_pseudo: (B, n, d_llm)

    def prompt_embeds(self, batch: dict[str, torch.Tensor], t_pseudo: torch.Tensor | None = None):
        """I_wrapped = [E_prefix; T_pseudo; E_suffix; P_task]: (B, L, d_llm), plus the gate output.

        Pass ``t_pseudo`` (from :meth:`fuse`) to reuse a fusion already computed for this batch.
        """
        gate = None
        if t_pseudo is None:
            t_pseudo, gate = self.fuse(batch)
        embeds = self.llm.get_input_embeddings()(batch["input_ids"])  # (B, L, d_llm)
        return inject_pseudo_tokens(embeds, batch["pseudo_index"], t_pseudo), gate

    def causal_lm(self) -> nn.Module:
        """The transformers ``*ForCausalLM`` under any peft wrapper (LoRA layers live inside it)."""
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    def forward(self, batch: dict[str, torch.Tensor]):
        """LM cross-entropy on the answer tokens only (labels are -100 elsewhere).

        Logits are computed only at the positions that predict an answer token: the same loss as the LM head over every position followed by the
        masked mean, without the (B, L, vocab) float32 logits of the prompt, which would be a few
        hundred MB at paper scale (Llama-3: a 128k vocabulary) and were ~20% of a smoke step.
        """
        embeds, gate = self.prompt_embeds(batch)
        lm = self.causal_lm()
        # The decoder, then the LM head on the answer positions only. Calling them separately
        # (instead of logits_to_keep=<bool mask>, transformers >= 5.24 only) works on every 5.x;
        # the positions come from the collator, so selecting them needs no host sync.
        hidden = lm.get_decoder()(
            inputs_embeds=embeds,
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            use_cache=False,
        ).last_hidden_state  # (B, L, d_llm)
        predicting = hidden.flatten(0, 1).index_select(0, batch["answer_index"])  # (N_ans, d_llm)
        logits = lm.get_output_embeddings()(predicting).float()  # (N_ans, vocab)
        return F.cross_entropy(logits, batch["answer_target"]), gate
