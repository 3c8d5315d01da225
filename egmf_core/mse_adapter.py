"""MSE-Adapter, the closest predecessor of EGMF, as a drop-in replacement for EGMF's fusion.

MSE-Adapter (Yang, Dong & Qiang, "MSE-Adapter: A Lightweight Plugin Endowing LLMs with the
Capability to Perform Multimodal Sentiment Analysis and Emotion Recognition", AAAI 2025,
arXiv 2502.12478; code github.com/AZYoung233/MSE-Adapter) turns audio and visual features into
pseudo tokens for a frozen LLM (ChatGLM3-6B-base, Qwen-1.8B, LLaMA2-7B): no experts, no gating,
no LoRA. The LLM's input is ``[T_pseudo; E_text]`` and the LLM generates the label as text.
This module is the plugin alone: features in, ``T_pseudo`` out, so that the caller can put it
where EGMF's fusion sits (``EGMF.fuse`` -> ``T_pseudo``) and keep the prompt and the LLM.

Sources, in order of trust:
  [P] the paper (arXiv 2502.12478): its abstract ("only introduces approximately 2.6M to 2.8M
      trainable parameters upon the 6/7B models"; TGM "through the Hadamard product") and
      public summaries of its method section (themoonlight.io's review of 2502.12478: text
      embeddings are globally average-pooled, audio and visual go through LSTMs, a linear
      layer brings every modality to one width before the Hadamard product; MSF runs three
      MLPs of different hidden sizes, stacks them and compresses them with a convolution; a
      linear projector makes the pseudo tokens). The paper body itself was not readable here;
  [R] the public repository's README and per-dataset configs (config_regression.py,
      config_classification.py), read through its public forks (the original repository is not
      in the index), for the widths the paper leaves out; its README says the paper's numbers
      are the mean of 5 seeds;
  [C] our choice where both are silent (each one listed below).

Computation, for one batch (symbols as in the paper where it names them):

    t   = Linear_t(MeanPool(E_text))                    text knowledge, (B, d_mix)      TGM
    A   = Linear_a(LSTM_a(audio)[h_last])               (B, d_mix)                      TGM
    V   = Linear_v(LSTM_v(vision)[h_last])              (B, d_mix)                      TGM
    M   = A ⊙ t + V ⊙ t                                 Hadamard product, (B, d_mix)    TGM
    m_i = W2_i GELU(W1_i M),  i = 1, 2, 3               widths d_llm/8, /32, /16        MSF
    f_M = Conv_{1x3}([m_1, m_2, m_3])  = sum_i c_i m_i + c_0                            MSF
    z   = Linear_p(f_M)                                 (B, d_llm)                      projector
    T_pseudo[:, j] = a_j z + b_j,  j = 1..n             (B, n, d_llm)                   projector

The 1x3 convolution has one kernel shared by all d_mix channels (4 parameters: it learns how
much of each scale to keep). The last step is the repository's Linear(1, n_tokens) applied to
each of z's d_llm entries: the n pseudo tokens are scaled and shifted copies of one vector.

Trainable parameters at ChatGLM3-6B size (d_llm = 4096, n = 4) with the processed features
MSE-Adapter distributes (dims from its configs [R], the same as ``shared/paper/datasets.md``):

    dataset  d_a   d_v   LSTM a/v  encoders   total
    MOSEI    74    35    64 / 32     69,760   2,631,692
    SIMS-V2  25    177   64 / 64    118,784   2,680,716
    MELD     64    64    64 / 32     70,912   2,632,844
    CHERMA   1024  2048  32 / 16    280,448   2,842,380

The dataset-independent part is 2,561,932: Linear_t 4096*256+256 = 1,048,832; the three MSF
branches 262,912 + 65,920 + 131,584 (256 -> 512/128/256 -> 256); the conv 4; Linear_p
256*4096+4096 = 1,052,672; the token projector 8. An LSTM layer has 4*h*(d_in+h) + 8*h
parameters (two bias vectors in PyTorch), then Linear(h, 256). The range 2.63M-2.84M is the
paper's "approximately 2.6M to 2.8M" (tests/test_mse_adapter.py checks it on the meta device).

Proposed ModelConfig fields (name, default, tag, reason):
    mse_d_mix: int = 256                  [R] TGM/MSF width; the repository hard-codes 256 (the
                                              paper reports no width; 256 gives its 2.6-2.8M).
    mse_audio_lstm_hidden: int = 64       [R] MOSEI/MELD/SIMS-V2 config (CHERMA: 32); see
                                              LSTM_HIDDEN_BY_DATASET for the per-dataset values.
    mse_vision_lstm_hidden: int = 32      [R] MOSEI/MELD config (SIMS-V2: 64, CHERMA: 16).
    mse_lstm_layers: int = 1              [R] every config uses one layer.
    mse_lstm_dropout: float = 0.0         [R] every config; applied after the LSTM as there.
    mse_msf_ratios: tuple = (8, 32, 16)   [R] MSF hidden widths d_llm/8, d_llm/32, d_llm/16 ("MLPs
                                              with different hidden sizes" [P]; the sizes [R]).
    mse_msf_activation: str = "gelu"      [R] the MLPs' activation.
    n_tokens: int = 4                     [R] (already a ModelConfig field; same default).
  Not fields, fixed here [C]: the text is pooled as a mean over valid tokens (the repository
  averages all L_t positions, padding included, so its pseudo tokens depend on the padding;
  ours do not); with several LSTM layers the last layer's final state is used.

Modality ablation [C] (the paper ablates TGM/MSF and modalities; how a removed modality
changes the equations is not published): a removed audio or visual branch is not built and
its term leaves M (M = A ⊙ t or V ⊙ t); without text, Linear_t is not built and the Hadamard
gate is 1 (M = A + V); with text alone, M = t.

Padding never changes T_pseudo: the LSTMs run on packed sequences (frames at or past each
length are never read) and the text mean uses ``text_mask`` only. Every sample needs
``lengths >= 1`` and at least one True in ``text_mask`` (the loaders and collator guarantee it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

MSE_MODALITIES = ("text", "audio", "visual")  # the names of egmf_core.config.MODALITIES

# [R] (audio, visual) LSTM hidden sizes in the repository's per-dataset configs (the ChatGLM3-6B
# ones; the Qwen/LLaMA folders use the same). Keys are egmf_core.config.DATASETS names.
LSTM_HIDDEN_BY_DATASET: dict[str, tuple[int, int]] = {
    "mosei": (64, 32),
    "sims_v2": (64, 64),
    "meld": (64, 32),
    "cherma": (32, 16),
}

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


class MSEAdapterConfigError(ValueError):
    """MSEAdapter was built with an unknown modality, activation or a bad width; the message names it."""


class SequenceLSTMEncoder(nn.Module):
    """One modality's frames -> the LSTM's final hidden state (last layer) -> Linear to d_mix.

    The repository's "TVA_LSTM": LSTM(d_in, hidden), dropout, Linear(hidden, d_mix).
    """

    def __init__(self, d_in: int, hidden: int, d_mix: int, num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.lstm = nn.LSTM(d_in, hidden, num_layers=num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden, d_mix)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # x: (B, L, d_in), lengths: (B,) int64 in [1, L]
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)  # h_n: (num_layers, B, hidden), each row at its own last valid frame
        return self.proj(self.drop(h_n[-1]))  # (B, d_mix) A or V


class TextGuideMixer(nn.Module):
    """TGM: the pooled text projection t gates the audio and visual vectors, M = A ⊙ t + V ⊙ t."""

    def __init__(self, d_llm: int, d_mix: int, use_text: bool):
        super().__init__()
        self.text_proj = nn.Linear(d_llm, d_mix) if use_text else None  # Linear_t

    def forward(self, e_text: torch.Tensor | None, text_mask: torch.Tensor | None,
                av: list[torch.Tensor]) -> torch.Tensor:
        # e_text: (B, L_t, d_llm), text_mask: (B, L_t) bool, av: 0-2 tensors (B, d_mix)
        if self.text_proj is None:
            return torch.stack(av, dim=0).sum(dim=0)  # (B, d_mix) M = A + V: no text, gate 1
        keep = text_mask.unsqueeze(-1)  # (B, L_t, 1)
        e_text = e_text.to(self.text_proj.weight.dtype)
        zero = torch.zeros((), dtype=e_text.dtype, device=e_text.device)
        summed = torch.where(keep, e_text, zero).sum(dim=1)  # (B, d_llm) padding (NaN included) -> 0
        pooled = summed / keep.sum(dim=1).clamp(min=1).to(e_text.dtype)  # (B, d_llm) mean over valid tokens
        t = self.text_proj(pooled)  # (B, d_mix) text knowledge t
        if not av:
            return t  # (B, d_mix) M = t: text alone
        return torch.stack([h * t for h in av], dim=0).sum(dim=0)  # (B, d_mix) M = A ⊙ t + V ⊙ t


class MultiScaleFusion(nn.Module):
    """MSF: three MLP branches of different hidden widths, stacked and mixed by a 1x3 convolution."""

    def __init__(self, d_mix: int, widths: tuple[int, ...], activation: str = "gelu"):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Linear(d_mix, w), _ACTIVATIONS[activation](), nn.Linear(w, d_mix)) for w in widths
        )
        self.integrate = nn.Conv2d(1, 1, kernel_size=(1, len(widths)))  # c_1..c_k and c_0, shared by channels

    def forward(self, M: torch.Tensor) -> torch.Tensor:
        # M: (B, d_mix)
        m = torch.stack([branch(M) for branch in self.branches], dim=-1)  # (B, d_mix, k) m_i
        return self.integrate(m.unsqueeze(1)).flatten(1)  # (B, d_mix) f_M = sum_i c_i m_i + c_0


@dataclass(frozen=True)
class MSEAdapterSettings:
    """MSE-Adapter's widths and choices: ModelConfig's ``mse_*`` fields (see above), defaults its repository's."""

    modalities: tuple[str, ...] = MSE_MODALITIES  # the subset of ("text", "audio", "visual") to use
    d_mix: int = 256
    audio_lstm_hidden: int = 64
    vision_lstm_hidden: int = 32
    lstm_layers: int = 1
    lstm_dropout: float = 0.0
    msf_ratios: tuple[int, ...] = (8, 32, 16)
    msf_activation: str = "gelu"


class MSEAdapter(nn.Module):
    """MSE-Adapter's plugin: text, audio and visual features -> T_pseudo (B, n_tokens, d_llm).

    Args:
        d_llm: the frozen LLM's hidden size (ChatGLM3-6B: 4096).
        audio_dim, vision_dim: feature widths (MOSEI 74 / 35; data.MultimodalDataset.audio_dim).
        n_tokens: number of pseudo tokens (4 [R]).
        settings: widths and choices (MSEAdapterSettings); a modality left out of
            ``settings.modalities`` has no parameters and no path (see the module docstring).
    """

    def __init__(self, d_llm: int, audio_dim: int, vision_dim: int, n_tokens: int,
                 settings: MSEAdapterSettings = MSEAdapterSettings()):
        modalities, d_mix, msf_ratios, msf_activation = (settings.modalities, settings.d_mix, settings.msf_ratios,
                                                         settings.msf_activation)
        lstm_layers, lstm_dropout = settings.lstm_layers, settings.lstm_dropout
        super().__init__()
        mods = set(modalities)
        if not mods or not mods <= set(MSE_MODALITIES):
            raise MSEAdapterConfigError(
                f"egmf_core/mse_adapter.py: modalities={list(modalities)!r} must be a non-empty subset of {MSE_MODALITIES}"
            )
        if msf_activation not in _ACTIVATIONS:
            raise MSEAdapterConfigError(
                f"egmf_core/mse_adapter.py: msf_activation={msf_activation!r} must be one of {tuple(_ACTIVATIONS)}"
            )
        if not (n_tokens > 0 and d_mix > 0 and msf_ratios and all(r > 0 for r in msf_ratios)):
            raise MSEAdapterConfigError(
                f"egmf_core/mse_adapter.py: n_tokens={n_tokens}, d_mix={d_mix}, msf_ratios={msf_ratios!r} must be positive"
            )
        self.modalities = tuple(m for m in MSE_MODALITIES if m in mods)
        self.d_llm, self.n_tokens = d_llm, n_tokens
        self.audio_enc = (SequenceLSTMEncoder(audio_dim, settings.audio_lstm_hidden, d_mix, lstm_layers, lstm_dropout)
                          if "audio" in mods else None)
        self.vision_enc = (SequenceLSTMEncoder(vision_dim, settings.vision_lstm_hidden, d_mix, lstm_layers, lstm_dropout)
                           if "visual" in mods else None)
        self.tgm = TextGuideMixer(d_llm, d_mix, use_text="text" in mods)
        # [R] widths are fractions of d_llm (4096 -> 512, 128, 256); at least 1 for tiny twins
        self.msf = MultiScaleFusion(d_mix, tuple(max(1, d_llm // r) for r in msf_ratios), msf_activation)
        self.projector = nn.Linear(d_mix, d_llm)  # Linear_p
        self.token_projector = nn.Linear(1, n_tokens)  # a_j, b_j: one scale and shift per pseudo token

    def forward(
        self,
        e_text: torch.Tensor,
        text_mask: torch.Tensor,
        audio: torch.Tensor,
        audio_lengths: torch.Tensor,
        vision: torch.Tensor,
        vision_lengths: torch.Tensor,
    ) -> torch.Tensor:
        # e_text: (B, L_t, d_llm) the frozen LLM's input embeddings, text_mask: (B, L_t) bool,
        # audio: (B, L_a, d_a), audio_lengths: (B,), vision: (B, L_v, d_v), vision_lengths: (B,)
        av = []
        if self.audio_enc is not None:
            av.append(self.audio_enc(audio, audio_lengths))  # A: (B, d_mix)
        if self.vision_enc is not None:
            av.append(self.vision_enc(vision, vision_lengths))  # V: (B, d_mix)
        M = self.tgm(e_text, text_mask, av)  # (B, d_mix) M, TGM
        f_M = self.msf(M)  # (B, d_mix) f_M, MSF
        z = self.projector(f_M)  # (B, d_llm)
        t_pseudo = self.token_projector(z.unsqueeze(-1))  # (B, d_llm, n): a_j z + b_j
        return t_pseudo.transpose(1, 2)  # T_pseudo: (B, n, d_llm)
