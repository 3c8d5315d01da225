"""TFN, the Tensor Fusion Network: the classical (non-LLM) fusion baseline of the field's tables.

Zadeh, Chen, Poria, Cambria & Morency, "Tensor Fusion Network for Multimodal Sentiment
Analysis", EMNLP 2017 (arXiv 1707.07250). It is in every MMSA results table (MOSEI, SIMS,
SIMS-V2) and the usual "tensor fusion" row of ERC tables. This file loads no LLM, no tokenizer
and no weights: every parameter starts random and is trained by the caller's loop.

    z_l = Linear(LSTM(Embed(text_ids))[h_last])          (B, d_l)   language embedding subnetwork
    z_a = DNN_a(MeanPool(audio))                          (B, d_a)   acoustic embedding subnetwork
    z_v = DNN_v(MeanPool(vision))                         (B, d_v)   visual embedding subnetwork
    z_m = [z_l; 1] ⊗ [z_a; 1] ⊗ [z_v; 1]                  (B, (d_l+1)(d_a+1)(d_v+1))   Tensor Fusion Layer
    y   = Linear(ReLU(Linear(ReLU(Linear(dropout(z_m))))))  (B, out_dim)  sentiment inference subnetwork

The appended 1 keeps the unimodal (z_l, z_a, z_v) and bimodal terms inside the trimodal
outer product, which is the paper's point. DNN_m = BatchNorm -> dropout -> 3 x (Linear -> ReLU).

Sources: [P] the TFN paper (a 128-unit LSTM and a 128-d z_l; mean acoustic and visual features
over the utterance; three hidden layers of 32 ReLU units for each of them; the 3-fold outer
product with appended 1s; an inference network of two 128-unit ReLU layers; its body was not
re-read here, these widths are as the paper is usually described and as MMSA's SubNet
implements the structure); [R] MMSA's
implementation and configs (thuiar/MMSA ``models/singleTask/TFN.py``, ``subNets/FeatureNets.py``,
``config/config_regression.json``: the LSTM's final state then one Linear to text_out,
BatchNorm before the audio/visual layers, three Linear layers after the fusion, an optional
sigmoid squash of the regression output to (-3, 3), L1 loss); [C] our choice.

Text: real MMSA feeds TFN precomputed word vectors (GloVe 300-d in the paper, BERT 768-d
``text`` arrays in MMSA's pickles). We learn an embedding over ``vocab_size`` token ids from
the suite's tokenizer instead, because (1) the suite's canonical Split keeps raw text, not the
pickles' ``text`` arrays, (2) MSE-Adapter's MELD and CHERMA files, the recommended source,
carry no text features at all, and (3) the harness may load no GloVe/BERT weights. A learned
embedding is weaker than GloVe/BERT features, so our TFN numbers are a lower bound of the
paper's; the report should say so. (MMSA 2.2.1 installs under constraints.txt and its
``MMSA.models.singleTask.TFN.TFN(args)`` runs offline, but it takes the pickles' (B, L, 768)
``text`` features and audio/vision already averaged over time, ``(B, 1, d)``, which our
canonical Split does not carry; the harness does not depend on it.)

Proposed ModelConfig fields (name, default, tag, reason):
    tfn_text_embed_dim: int = 300       [P] the paper's GloVe width (here a learned embedding).
    tfn_text_hidden: int = 128          [P] the language LSTM's units.
    tfn_text_out: int = 128             [P] z_l's width (MMSA MOSEI: 128 [R]).
    tfn_audio_hidden: int = 32          [P] the acoustic DNN's units (MMSA MOSEI: 16 [R]).
    tfn_vision_hidden: int = 32         [P] the visual DNN's units (MMSA MOSEI: 128 [R]).
    tfn_post_fusion_dim: int = 128      [P] the inference network's units (MMSA MOSEI: 16 [R]).
    tfn_dropout: tuple = (0.2, 0.2, 0.2, 0.2)  [C] text, audio, visual, post-fusion; the paper
                                        gives none (MMSA MOSEI: 0.4 each [R]).
    tfn_input_norm: str = "batch"       [R] BatchNorm1d on the pooled audio/visual features
                                        ("layer" or "none" [C]); COVAREP/Facet scales differ a lot.
    tfn_output_range: tuple | None = None  [C] None = linear score; (lo, hi) = MMSA's sigmoid squash
                                        [R] (MMSA uses (-3, 3) for every dataset; pass the spec's range).
  MMSA trains it with Adam, lr 5e-3 and batch 128 on MOSEI [R]; those are TrainConfig matters.

At the paper's sizes the fusion layer is (128+1)(32+1)(32+1) = 140,481 wide, so the first
inference layer holds 18.0M weights; MMSA's MOSEI sizes (128, 16, 128; post 16) give 4.5M.

Differences from MMSA, all so that padding never changes the output [C]: the LSTM reads packed
sequences (MMSA runs it over the padding), and the audio/visual means are over valid frames only
(MMSA averages all L frames, zeros included). ``text_mask`` may be right- or left-padded (valid
tokens are moved to the front, in order); each row needs one True and each length must be >= 1.
BatchNorm cannot take batch statistics of one sample, so a training batch of one is normalised
with the running statistics instead [C].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

TFN_MODALITIES = ("text", "audio", "visual")  # the names of egmf_core.config.MODALITIES
TASKS = ("classification", "regression")  # egmf_core.data.dataset.DatasetSpec.task
INPUT_NORMS = ("batch", "layer", "none")


class TFNConfigError(ValueError):
    """TFN (or its loss/predict helpers) got an unknown modality, norm or task; the message names it."""


def masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean of x (B, L, d) over the first ``lengths`` frames of each row: (B, d); padding (NaN included) ignored."""
    valid = torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, L)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    summed = torch.where(valid.unsqueeze(-1), x, zero).sum(dim=1)  # (B, d)
    return summed / lengths.clamp(min=1).unsqueeze(1).to(x.dtype)  # (B, d)


class FeatureNorm(nn.Module):
    """BatchNorm1d (MMSA's choice), LayerNorm or nothing, on a pooled feature vector (B, d)."""

    def __init__(self, d: int, kind: str):
        super().__init__()
        self.kind = kind
        self.norm = nn.BatchNorm1d(d) if kind == "batch" else nn.LayerNorm(d) if kind == "layer" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, d)
        if self.kind == "batch" and self.training and x.shape[0] == 1:  # no batch statistics from one sample
            bn = self.norm
            return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        return self.norm(x)  # (B, d)


class AcousticVisualSubNet(nn.Module):
    """z_a or z_v: masked mean over frames -> norm -> dropout -> 3 x (Linear -> ReLU)."""

    def __init__(self, d_in: int, hidden: int, dropout: float, norm: str):
        super().__init__()
        self.norm = FeatureNorm(d_in, norm)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                    nn.Linear(hidden, hidden), nn.ReLU())

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # x: (B, L, d_in), lengths: (B,)
        pooled = masked_mean(x, lengths)  # (B, d_in) expected feature values over the utterance
        return self.layers(self.drop(self.norm(pooled)))  # (B, hidden) z_a / z_v


class LanguageSubNet(nn.Module):
    """z_l: learned embedding -> LSTM over the valid tokens -> final state -> dropout -> Linear."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, out: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden, out)

    def forward(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        # text_ids: (B, L_t) int64, text_mask: (B, L_t) bool
        order = torch.argsort((~text_mask).to(torch.int8), dim=1, stable=True)  # (B, L_t) valid tokens first, in order
        ids = text_ids.gather(1, order)  # (B, L_t)
        lengths = text_mask.sum(dim=1).clamp(min=1)  # (B,)
        packed = pack_padded_sequence(self.embed(ids), lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)  # (1, B, hidden) state after each row's last valid token
        return self.proj(self.drop(h_n[-1]))  # (B, out) z_l


@dataclass(frozen=True)
class TFNSettings:
    """TFN's widths and choices: ModelConfig's ``tfn_*`` fields (see the module docstring)."""

    modalities: tuple[str, ...] = TFN_MODALITIES  # subset of ("text", "audio", "visual")
    text_embed_dim: int = 300
    text_hidden: int = 128
    text_out: int = 128
    audio_hidden: int = 32
    vision_hidden: int = 32
    post_fusion_dim: int = 128
    dropouts: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 0.2)  # text, audio, visual, post-fusion
    input_norm: str = "batch"
    output_range: tuple[float, float] | None = None  # a regression score squashed into it (None: linear)


class TFN(nn.Module):
    """Tensor Fusion Network: token ids + audio/visual frames -> logits (B, classes) or a score (B, 1).

    Args:
        vocab_size: token ids in ``text_ids`` are in [0, vocab_size) (the suite tokenizer's length).
        audio_dim, vision_dim: feature widths (MOSEI 74 / 35).
        out_dim: number of classes (classification: logits) or 1 (regression: a score).
        settings: widths and choices (TFNSettings); a modality left out of ``settings.modalities``
            has no subnetwork and leaves the outer product (z_m is the product over the remaining [z; 1]).
    """

    def __init__(self, vocab_size: int, audio_dim: int, vision_dim: int, out_dim: int,
                 settings: TFNSettings = TFNSettings()):
        s = settings
        modalities, input_norm, dropouts = s.modalities, s.input_norm, s.dropouts
        text_out, audio_hidden, vision_hidden, post_fusion_dim = s.text_out, s.audio_hidden, s.vision_hidden, s.post_fusion_dim
        super().__init__()
        mods = set(modalities)
        if not mods or not mods <= set(TFN_MODALITIES):
            raise TFNConfigError(
                f"egmf_core/tfn.py: modalities={list(modalities)!r} must be a non-empty subset of {TFN_MODALITIES}"
            )
        if input_norm not in INPUT_NORMS:
            raise TFNConfigError(f"egmf_core/tfn.py: input_norm={input_norm!r} must be one of {INPUT_NORMS}")
        if out_dim < 1 or len(dropouts) != 4:
            raise TFNConfigError(f"egmf_core/tfn.py: out_dim={out_dim} must be >= 1 and dropouts={dropouts!r} "
                                 "must give (text, audio, visual, post-fusion)")
        self.modalities = tuple(m for m in TFN_MODALITIES if m in mods)
        text_p, audio_p, vision_p, post_p = dropouts
        self.text_net = (LanguageSubNet(vocab_size, s.text_embed_dim, s.text_hidden, text_out, text_p)
                         if "text" in mods else None)
        self.audio_net = AcousticVisualSubNet(audio_dim, audio_hidden, audio_p, input_norm) if "audio" in mods else None
        self.vision_net = (AcousticVisualSubNet(vision_dim, vision_hidden, vision_p, input_norm)
                           if "visual" in mods else None)
        widths = {"text": text_out, "audio": audio_hidden, "visual": vision_hidden}
        self.fusion_dim = 1
        for m in self.modalities:
            self.fusion_dim *= widths[m] + 1  # (d_l + 1)(d_a + 1)(d_v + 1)
        self.post_fusion = nn.Sequential(
            nn.Dropout(post_p),
            nn.Linear(self.fusion_dim, post_fusion_dim), nn.ReLU(),
            nn.Linear(post_fusion_dim, post_fusion_dim), nn.ReLU(),
            nn.Linear(post_fusion_dim, out_dim),
        )
        self.output_range = s.output_range

    def forward(
        self,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor,
        audio: torch.Tensor,
        audio_lengths: torch.Tensor,
        vision: torch.Tensor,
        vision_lengths: torch.Tensor,
    ) -> torch.Tensor:
        # text_ids: (B, L_t) int64, text_mask: (B, L_t) bool, audio: (B, L_a, d_a), audio_lengths: (B,),
        # vision: (B, L_v, d_v), vision_lengths: (B,)
        z = []
        if self.text_net is not None:
            z.append(self.text_net(text_ids, text_mask))  # z_l: (B, d_l)
        if self.audio_net is not None:
            z.append(self.audio_net(audio, audio_lengths))  # z_a: (B, d_a)
        if self.vision_net is not None:
            z.append(self.vision_net(vision, vision_lengths))  # z_v: (B, d_v)
        B = z[0].shape[0]
        one = z[0].new_ones(B, 1)  # (B, 1)
        z_m = one
        for z_k in z:
            z_m = torch.einsum("bi,bj->bij", z_m, torch.cat([z_k, one], dim=1)).reshape(B, -1)  # z_m ⊗ [z_k; 1]
        y = self.post_fusion(z_m)  # (B, out_dim)
        if self.output_range is not None:
            lo, hi = self.output_range
            y = torch.sigmoid(y) * (hi - lo) + lo  # (B, 1) squashed into the label range (MMSA)
        return y  # (B, out_dim) logits or score


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise TFNConfigError(f"egmf_core/tfn.py: task={task!r} must be one of {TASKS}")


def loss(outputs: torch.Tensor, targets: torch.Tensor, task: str) -> torch.Tensor:
    """The training loss: cross-entropy on class indices (classification), L1 (regression, as MMSA)."""
    _check_task(task)
    if task == "classification":
        return F.cross_entropy(outputs, targets.long())  # outputs (B, C) logits, targets (B,) indices
    return F.l1_loss(outputs.squeeze(-1), targets.to(outputs.dtype))  # outputs (B, 1), targets (B,)


def predict(outputs: torch.Tensor, task: str) -> torch.Tensor:
    """Predictions from outputs: class indices (B,) int64 (argmax) or scores (B,) (squeeze)."""
    _check_task(task)
    return outputs.argmax(dim=-1) if task == "classification" else outputs.squeeze(-1)
