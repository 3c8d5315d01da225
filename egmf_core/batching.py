"""Tokenise a split once, then collate batches of prompts, answers and features as tensors.

Each sample's prompt is ``[bos] E_prefix [placeholder x n] E_suffix(utterance) P_task`` and, for
training, the answer tokens plus end-of-sequence. Placeholders are overwritten by T_pseudo
(pseudo_tokens.inject_pseudo_tokens). Training batches are right-padded; generation and label
scoring batches are left-padded so every row ends where its answer begins. Position ids are
always derived from the attention mask, so padding never changes a sample's result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from egmf_core.answers import format_target
from egmf_core.config import ModelConfig
from egmf_core.data.dataset import DatasetSpec, Split
from egmf_core.prompts import answer_prefix, chat_prompt_pieces, prompt_parts


@dataclass
class EncodedSplit:
    """A split with its token ids computed once; features stay as float32 tensors."""

    utterance_ids: list[list[int]]  # for the fusion's H_text
    prompt_ids: list[list[int]]  # with placeholders where T_pseudo goes
    pseudo_start: list[int]  # index of the first placeholder in prompt_ids
    answer_ids: list[list[int]]  # target tokens + eos
    audio: torch.Tensor  # (N, L_a, d_a)
    audio_lengths: torch.Tensor  # (N,)
    vision: torch.Tensor  # (N, L_v, d_v)
    vision_lengths: torch.Tensor  # (N,)
    labels: np.ndarray  # (N,) class index or score
    n_tokens: int  # placeholders per prompt (model.n_tokens): the width of pseudo_index
    pad_id: int  # the tokenizer's pad id (eos if it has none): fills padded positions

    def __len__(self) -> int:
        return len(self.prompt_ids)


class PromptEncoder:
    """Turns raw samples into token ids for one dataset, model config and tokenizer."""

    def __init__(self, tokenizer, spec: DatasetSpec, cfg: ModelConfig):
        self.tok = tokenizer
        self.spec = spec
        self.cfg = cfg
        self.use_text = "text" in cfg.modalities
        self.text_in_prompt = cfg.text_in_prompt and self.use_text
        parts = prompt_parts(spec)
        pre, post = parts.suffix.split("{text}")
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.prefix = self._ids(parts.prefix)
        self.suffix_pre = self._ids(pre)
        self.suffix_post = self._ids(post)
        self.task = self._ids(parts.task)
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.answer_prefix = answer_prefix(spec)
        # chat: [ids before T_pseudo, after it (, after the utterance)]; the template brings its own bos
        self.chat = ([self._ids(t) for t in chat_prompt_pieces(tokenizer, parts, self.text_in_prompt)]
                     if cfg.prompt_format == "chat" else None)
        # Token ids of every class's answer (+eos), for label scoring.
        self.label_answers = (
            [self.answer_ids(i) for i in range(len(spec.labels))] if spec.task == "classification" else []
        )

    def _ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"]) if text else []

    def utterance_ids(self, text: str) -> list[int]:
        ids = self._ids(text)[: self.cfg.max_text_tokens]
        return ids if ids else [self.eos]  # an empty utterance still gives the fusion one token

    def prompt_ids(self, utt_ids: list[int]) -> tuple[list[int], int]:
        if self.chat is not None:
            head, *rest = self.chat
            middle = rest[0] + utt_ids + rest[1] if self.text_in_prompt else rest[0]
            return head + [self.pad] * self.cfg.n_tokens + middle, len(head)
        ids = self.bos + self.prefix
        start = len(ids)
        ids = ids + [self.pad] * self.cfg.n_tokens
        if self.text_in_prompt:
            ids = ids + self.suffix_pre + utt_ids + self.suffix_post
        return ids + self.task, start

    def answer_ids(self, value) -> list[int]:
        """The target's tokens + eos. A separating space that the tokenizer keeps as a token of
        its own (SentencePiece's dummy prefix, or byte-level BPE before a digit) is dropped, so the
        answer starts with content and fits max_new_tokens."""
        target = format_target(value, self.spec, self.cfg.class_target)
        spaced, bare = self._ids(self.answer_prefix + target), self._ids(target)
        ids = bare if len(spaced) == len(bare) + 1 and spaced[1:] == bare else spaced
        return ids + [self.eos]

    def encode(self, split: Split) -> EncodedSplit:
        utt = [self.utterance_ids(t) for t in split.text]
        prompts = [self.prompt_ids(u) for u in utt]
        return EncodedSplit(
            utterance_ids=utt,
            prompt_ids=[p for p, _ in prompts],
            pseudo_start=[s for _, s in prompts],
            answer_ids=[self.answer_ids(v) for v in split.labels],
            audio=torch.from_numpy(np.ascontiguousarray(split.audio, dtype=np.float32)),
            audio_lengths=torch.from_numpy(np.asarray(split.audio_lengths, dtype=np.int64)),
            vision=torch.from_numpy(np.ascontiguousarray(split.vision, dtype=np.float32)),
            vision_lengths=torch.from_numpy(np.asarray(split.vision_lengths, dtype=np.int64)),
            labels=np.asarray(split.labels),
            n_tokens=self.cfg.n_tokens,
            pad_id=self.pad,
        )


def collate(enc: EncodedSplit, idx, *, with_answer: bool) -> dict[str, torch.Tensor]:
    """Batch samples `idx`: right-padded with answers (training) or left-padded prompts (eval)."""
    n_tokens, pad_id = enc.n_tokens, enc.pad_id
    idx = [int(i) for i in idx]
    seqs, starts, answer_lens = [], [], []
    for i in idx:
        ids = enc.prompt_ids[i] + (enc.answer_ids[i] if with_answer else [])
        seqs.append(ids)
        starts.append(enc.pseudo_start[i])
        answer_lens.append(len(enc.answer_ids[i]) if with_answer else 0)
    B, L = len(idx), max(len(s) for s in seqs)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, L), dtype=torch.long)
    pseudo_index = torch.zeros((B, n_tokens), dtype=torch.long)
    labels = torch.full((B, L), -100, dtype=torch.long)
    for b, (ids, start, n_ans) in enumerate(zip(seqs, starts, answer_lens)):
        off = 0 if with_answer else L - len(ids)  # right pad to train, left pad to generate
        input_ids[b, off : off + len(ids)] = torch.tensor(ids)
        attention_mask[b, off : off + len(ids)] = 1
        pseudo_index[b] = torch.arange(off + start, off + start + n_tokens)
        if n_ans:
            labels[b, off + len(ids) - n_ans : off + len(ids)] = torch.tensor(ids[-n_ans:])
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    # Flat (b * L + t) positions that predict an answer token, and those tokens: the loss needs
    # them on the device without a boolean mask (which would sync the host).
    predicts = torch.zeros_like(labels, dtype=torch.bool)
    predicts[:, :-1] = labels[:, 1:] != -100
    answer_index = predicts.flatten().nonzero().squeeze(1)

    utt = [enc.utterance_ids[i] for i in idx]
    Lt = max(len(u) for u in utt)
    utt_ids = torch.full((B, Lt), pad_id, dtype=torch.long)
    utt_mask = torch.zeros((B, Lt), dtype=torch.bool)
    for b, u in enumerate(utt):
        utt_ids[b, : len(u)] = torch.tensor(u)
        utt_mask[b, : len(u)] = True

    t_idx = torch.tensor(idx)
    a_len, v_len = enc.audio_lengths[t_idx], enc.vision_lengths[t_idx]
    return {
        "input_ids": input_ids,  # (B, L)
        "attention_mask": attention_mask,  # (B, L)
        "position_ids": position_ids,  # (B, L)
        "pseudo_index": pseudo_index,  # (B, n) placeholder positions
        "answer_index": answer_index,  # (N_ans,) flat positions predicting answer tokens (empty for eval)
        "answer_target": labels[:, 1:][predicts[:, :-1]],  # (N_ans,) the tokens they predict
        "labels": labels,  # (B, L), -100 outside the answer
        "utt_ids": utt_ids,  # (B, L_t)
        "utt_mask": utt_mask,  # (B, L_t)
        # Trim feature padding to the batch's longest sample: fewer frames, same result.
        "audio": enc.audio[t_idx, : int(a_len.max())],  # (B, L_a, d_a)
        "audio_lengths": a_len,  # (B,)
        "vision": enc.vision[t_idx, : int(v_len.max())],  # (B, L_v, d_v)
        "vision_lengths": v_len,  # (B,)
        "target": torch.as_tensor(enc.labels[idx]),  # (B,) class index or score: a direct predictor's target (TFN)
    }


# Padded lengths of a run group's training batches under pad_to="bucket": 16 * 2^(k/4) rounded up
# to a multiple of 8 (at most ~19% padding), so a compiled step sees a fixed set of shapes.
LENGTH_BUCKETS = tuple(sorted({8 * -(-int(round(16 * 2 ** (k / 4))) // 8) for k in range(48)}))
PAD_MODES = ("longest", "bucket")  # the batch's longest sample (today's collate), or its bucket


def padded_length(longest: int, pad_to: str) -> int:
    """The padded length of a batch whose longest sample has ``longest`` tokens."""
    if pad_to not in PAD_MODES:
        raise ValueError(f"pad_to={pad_to!r}: must be one of {PAD_MODES}")
    if pad_to == "longest":
        return longest
    return next((b for b in LENGTH_BUCKETS if b >= longest), longest)
