"""The one training loop and the one evaluation loop, used by every table, test and benchmark.

fit(): AdamW over EGMF's modules and the LoRA adapters, cosine schedule with warmup, gradient
clipping, validation every `eval_every` steps, early stopping and model selection on the
validation split only. The test split is evaluated once, by the caller, after fit() returns.
evaluate(): greedy generation (the paper's way) or label scoring, strict parsing, metrics with
the invalid answers counted and filled by the configured fallback, and gating statistics.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from transformers import get_cosine_schedule_with_warmup

from egmf_core.answers import fill_invalid, parse_answers
from egmf_core.batching import EncodedSplit, PromptEncoder, collate
from egmf_core.checkpoint import Checkpointer
from egmf_core.config import TrainConfig
from egmf_core.data.dataset import DatasetSpec
from egmf_core.decoding import generate_answers, score_labels
from egmf_core.gating import SENTIMENT_BIN_NAMES, SENTIMENT_NEUTRAL_BAND, GatingStats, sentiment_bin
from egmf_core.metrics import compute_metrics
from egmf_core.model import EGMF


class TrainingFailed(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); the message says where."""


@dataclass
class EvalResult:
    """Predictions and scores of one evaluation pass over a split."""

    metrics: dict[str, float]
    invalid_rate: float
    predictions: np.ndarray  # after the fallback fill
    valid: np.ndarray  # bool: the answer parsed
    answers: list[str]  # raw decoded text ("" in scoring mode)
    gating: dict = field(default_factory=dict)
    mode: str = "generate"


@dataclass
class FitResult:
    steps: int
    best_step: int
    best_valid: float
    history: list[dict]  # one dict per validation pass
    step_time_s: float  # mean wall time of an optimizer step
    samples_per_s: float


def _device_of(model: EGMF) -> torch.device:
    return next(model.projector.parameters()).device


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _autocast(device: torch.device, cfg: TrainConfig):
    on = device.type == "cuda" and cfg.mixed_precision in ("auto", "bf16")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=on)


@torch.no_grad()
def evaluate(
    model: EGMF,
    enc: EncodedSplit,
    encoder: PromptEncoder,
    tokenizer,
    spec: DatasetSpec,
    cfg: TrainConfig,
    *,
    mode: str,
    train_labels: np.ndarray,
) -> EvalResult:
    """Answer every sample of a split, parse strictly, and score with the field's metrics."""
    model.eval()
    device = _device_of(model)
    is_cls = spec.task == "classification"
    if mode == "score" and not is_cls:
        raise ValueError("train.eval_mode='score' ranks label continuations: it needs a classification dataset")
    max_new = cfg.max_new_tokens_cls if is_cls else cfg.max_new_tokens_reg
    stats = GatingStats()
    texts: list[str] = []
    chosen: list[np.ndarray] = []
    pad = encoder.pad
    for start in range(0, len(enc), cfg.eval_batch_size):
        idx = range(start, min(start + cfg.eval_batch_size, len(enc)))
        batch = _to(collate(enc, idx, model.cfg.n_tokens, pad, with_answer=False), device)
        with _autocast(device, cfg):
            _, gate = model.fuse(batch)
            if mode == "score":
                chosen.append(score_labels(model, batch, encoder.label_answers).cpu().numpy())
            else:
                texts.extend(generate_answers(model, batch, tokenizer, max_new))
        labels = enc.labels[list(idx)]
        stats.update(gate, labels if is_cls else sentiment_bin(labels, SENTIMENT_NEUTRAL_BAND[spec.name]))
    if mode == "score":
        values = np.concatenate(chosen).astype(np.int64)
        valid = np.ones(len(values), dtype=bool)
        invalid_rate = 0.0
    else:
        parsed = parse_answers(texts, spec)
        values, valid, invalid_rate = parsed.values, parsed.valid, parsed.invalid_rate
    filled = fill_invalid(values, valid, spec, cfg.invalid_fallback, train_labels, y_true=enc.labels)
    metrics = compute_metrics(spec.name, enc.labels, filled)
    label_names = list(spec.labels) if is_cls else list(SENTIMENT_BIN_NAMES)
    return EvalResult(
        metrics=metrics,
        invalid_rate=float(invalid_rate),
        predictions=filled,
        valid=valid,
        answers=texts,
        gating=stats.as_dict(list(model.cfg.experts), label_names),
        mode=mode,
    )


def _trainable_state(model: EGMF) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable_state(model: EGMF, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, v in state.items():
            params[n].copy_(v)


def fit(
    model: EGMF,
    train: EncodedSplit,
    valid: EncodedSplit,
    encoder: PromptEncoder,
    tokenizer,
    spec: DatasetSpec,
    cfg: TrainConfig,
    *,
    seed: int,
    train_labels: np.ndarray,
    key_metric: str,
    higher_is_better: bool,
    progress: Callable[[int, int, str], None] | None = None,
    checkpoint: Checkpointer | None = None,
) -> FitResult:
    """Train EGMF's modules (and LoRA) with early stopping on the validation split only.

    With ``checkpoint``, the state is saved every ``checkpoint.every`` steps and a run that finds
    a checkpoint continues from it, giving the same result as if it had never stopped.
    """
    device = _device_of(model)
    egmf_params = [p for p in model.egmf_parameters() if p.requires_grad]
    egmf_ids = {id(p) for p in egmf_params}
    llm_params = [p for p in model.parameters() if p.requires_grad and id(p) not in egmf_ids]
    groups = [{"params": egmf_params, "lr": cfg.fusion_lr or cfg.lr}]
    if llm_params:
        groups.append({"params": llm_params, "lr": cfg.lr})
    opt = torch.optim.AdamW(groups, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    sched = get_cosine_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    eval_every = cfg.eval_every or steps_per_epoch
    patience = cfg.patience if cfg.patience is not None else (8 if spec.task == "classification" else 10)
    valid_mode = cfg.valid_eval_mode or cfg.eval_mode  # one mode for validation and test unless set
    gen = torch.Generator().manual_seed(seed)

    best, best_step, bad_evals = -math.inf, 0, 0
    best_state = _trainable_state(model)
    history: list[dict] = []
    step, step_time = 0, 0.0
    order: list[int] = []
    resumed = checkpoint.resume(model, opt, sched, gen) if checkpoint is not None else None
    if resumed is not None:  # continue exactly where the saved run stopped
        step, order, step_time = resumed["step"], resumed["order"], resumed["step_time"]
        best, best_step, bad_evals = resumed["best"], resumed["best_step"], resumed["bad_evals"]
        best_state, history = resumed["best_state"], resumed["history"]
    while step < total:
        if not order:
            order = torch.randperm(len(train), generator=gen).tolist()
        idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
        model.train()
        t0 = time.perf_counter()
        batch = _to(collate(train, idx, model.cfg.n_tokens, encoder.pad, with_answer=True), device)
        with _autocast(device, cfg):
            loss, _ = model(batch)
        if not torch.isfinite(loss):
            raise TrainingFailed(f"non-finite loss ({loss.item()}) at step {step + 1}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(egmf_params + llm_params, cfg.grad_clip)
        opt.step()
        sched.step()
        step += 1
        step_time += time.perf_counter() - t0
        if progress:
            progress(step, total, f"loss {loss.item():.3f}")
        if step % eval_every == 0 or step == total:
            res = evaluate(model, valid, encoder, tokenizer, spec, cfg, mode=valid_mode, train_labels=train_labels)
            score = res.metrics[key_metric] if higher_is_better else -res.metrics[key_metric]
            history.append({"step": step, "loss": float(loss.item()), key_metric: res.metrics[key_metric],
                            "invalid_rate": res.invalid_rate})
            if score > best:
                best, best_step, bad_evals = score, step, 0
                best_state = _trainable_state(model)
            else:
                bad_evals += 1
                if bad_evals >= patience:
                    break
        if checkpoint is not None and checkpoint.due(step):
            checkpoint.save(step, model, opt, sched, gen, dict(
                step=step, order=order, step_time=step_time, best=best, best_step=best_step,
                bad_evals=bad_evals, best_state=best_state, history=history))
    _load_trainable_state(model, best_state)
    return FitResult(
        steps=step,
        best_step=best_step,
        best_valid=best if higher_is_better else -best,
        history=history,
        step_time_s=step_time / max(step, 1),
        samples_per_s=cfg.batch_size * step / max(step_time, 1e-9),
    )
