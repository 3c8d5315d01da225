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
from egmf_core.config import DEFAULT_PATIENCE, TrainConfig
from egmf_core.data.dataset import DatasetSpec
from egmf_core.decoding import generate_answers, score_labels
from egmf_core.gating import SENTIMENT_BIN_NAMES, GatingStats, sentiment_bin
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
    """The batch on ``device``. To CUDA through pinned memory without blocking: a copy from pageable
    memory synchronises the host with the device, once per tensor (14 per training step)."""
    if device.type != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


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
    """Answer every sample of a split, parse strictly, and score with the field's metrics.

    Samples are batched in order of prompt length (less padding; results are put back in split
    order) and the fusion runs once per batch, shared by the gate statistics and the decoder.
    """
    model.eval()
    device = _device_of(model)
    is_cls = spec.task == "classification"
    if mode == "score" and not is_cls:
        raise ValueError("train.eval_mode='score' ranks label continuations: it needs a classification dataset")
    max_new = cfg.max_new_tokens_cls if is_cls else cfg.max_new_tokens_reg
    stats = GatingStats()
    answers: dict[int, str] = {}
    chosen = np.zeros(len(enc), dtype=np.int64)
    for idx in eval_batches(enc, eval_batch_size(model, cfg, device)):
        batch = _to(collate(enc, idx, model.cfg.n_tokens, encoder.pad, with_answer=False), device)
        with _autocast(device, cfg):
            t_pseudo, gate = model.fuse(batch)
            if mode == "score":
                chosen[idx] = score_labels(model, batch, encoder.label_answers, t_pseudo).cpu().numpy()
            else:
                answers.update(zip(idx, generate_answers(model, batch, tokenizer, max_new, t_pseudo)))
        labels = enc.labels[idx]
        stats.update(gate, labels if is_cls else sentiment_bin(labels, spec.neutral_band))
    texts = [answers[i] for i in range(len(enc))] if mode != "score" else []
    if mode == "score":
        values, valid, invalid_rate = chosen, np.ones(len(chosen), dtype=bool), 0.0
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
        gating=stats.as_dict(list(model.experts.names), label_names),  # the K axis order of alpha
        mode=mode,
    )


def eval_batches(enc: EncodedSplit, batch_size: int) -> list[list[int]]:
    """Sample indices in batches of similar prompt length (stable sort: ties keep split order)."""
    order = sorted(range(len(enc)), key=lambda i: len(enc.prompt_ids[i]))
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


def eval_batch_size(model: EGMF, cfg: TrainConfig, device: torch.device) -> int:
    """``train.eval_batch_size``; on CUDA, grown to what half the free memory holds (at most 8x).

    Per sample, generation keeps a KV cache of ``2 * layers * kv_width`` values per token for
    ``max_text_tokens + 64`` tokens and one row of float32 logits; the estimate is deliberately
    generous (x4) for activations.
    """
    size = cfg.eval_batch_size
    if device.type != "cuda":
        return size
    config = model.causal_lm().config
    layers = int(getattr(config, "num_hidden_layers", 1))
    kv_width = int(getattr(config, "num_key_value_heads", 1)) * int(
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    tokens = model.cfg.max_text_tokens + 64
    per_sample = 4 * (2 * layers * kv_width * tokens * 2 + 4 * int(config.vocab_size))
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(size, min(8 * size, free // 2 // per_sample)))


def _trainable_state(model: EGMF) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable_state(model: EGMF, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, v in state.items():
            params[n].copy_(v)


@dataclass
class Trainer:
    """The optimizer, schedule and trainable parameters of one fit, and its training step."""

    model: EGMF
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    params: list[torch.nn.Parameter]
    cfg: TrainConfig
    device: torch.device

    @classmethod
    def build(cls, model: EGMF, cfg: TrainConfig, total_steps: int) -> "Trainer":
        """AdamW over EGMF's modules (``fusion_lr``) and the LoRA adapters (``lr``), cosine with warmup.
        On CUDA the fused AdamW kernel (a few launches per step instead of a few per tensor)."""
        device = _device_of(model)
        egmf_params = [p for p in model.egmf_parameters() if p.requires_grad]
        egmf_ids = {id(p) for p in egmf_params}
        llm_params = [p for p in model.parameters() if p.requires_grad and id(p) not in egmf_ids]
        groups = [{"params": egmf_params, "lr": cfg.fusion_lr or cfg.lr}]
        if llm_params:
            groups.append({"params": llm_params, "lr": cfg.lr})
        fused = {"fused": True} if device.type == "cuda" else {}
        opt = torch.optim.AdamW(groups, eps=cfg.adam_eps, weight_decay=cfg.weight_decay, **fused)
        sched = get_cosine_schedule_with_warmup(opt, int(cfg.warmup_ratio * total_steps), total_steps)
        if cfg.compile:
            compile_decoder_layers(model)
        return cls(model, opt, sched, egmf_params + llm_params, cfg, device)

    def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One optimizer step on a collated batch; the loss stays on the device (no host sync)."""
        self.model.train()
        batch = _to(batch, self.device)
        with _autocast(self.device, self.cfg):
            loss, _ = self.model(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        return loss.detach()


def compile_decoder_layers(model: EGMF) -> None:
    """``train.compile``: torch.compile each decoder layer in place (regional compilation: the
    layers share one compiled graph, so compiling costs one layer, not the whole model)."""
    layers = getattr(model.causal_lm().get_decoder(), "layers", None)
    if layers is None:
        raise ValueError("train.compile: the backbone has no decoder .layers to compile")
    for layer in layers:
        layer.compile()


class LossLog:
    """Training losses kept on the device and read back every ``log_every`` steps.

    Reading a loss is a host sync; batching the reads keeps the step asynchronous. A non-finite
    loss is still caught with the exact step it happened at (the first one in the window).
    """

    def __init__(self):
        self.losses: list[torch.Tensor] = []
        self.first_step = 1
        self.last = float("nan")

    def add(self, loss: torch.Tensor) -> None:
        self.losses.append(loss)

    def flush(self) -> float:
        """The mean loss since the last flush; raises TrainingFailed at a non-finite one."""
        if not self.losses:
            return self.last
        values = torch.stack(self.losses).float().cpu()  # the one host sync of the window
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            i = int(bad[0])
            raise TrainingFailed(f"non-finite loss ({float(values[i])}) at step {self.first_step + i}")
        self.first_step += len(self.losses)
        self.losses = []
        self.last = float(values[-1])
        return float(values.mean())


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

    With ``checkpoint``, the state is saved when ``checkpoint.due`` says (steps, minutes, validation
    passes) and a run that finds a checkpoint continues from it, giving the same result as if it had never stopped. The
    training loss is read back every ``train.log_every`` steps and at validation passes, not
    every step: the step itself never waits for the device.
    """
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    trainer = Trainer.build(model, cfg, total)
    eval_every = cfg.eval_every or steps_per_epoch
    patience = cfg.patience if cfg.patience is not None else DEFAULT_PATIENCE[spec.task]
    valid_mode = cfg.valid_eval_mode or cfg.eval_mode  # one mode for validation and test unless set
    gen = torch.Generator().manual_seed(seed)

    best, best_step, bad_evals = -math.inf, 0, 0
    best_state = _trainable_state(model)
    history: list[dict] = []
    step, step_time = 0, 0.0
    order: list[int] = []
    resumed = checkpoint.resume(model, trainer.opt, trainer.sched, gen) if checkpoint is not None else None
    if resumed is not None:  # continue exactly where the saved run stopped
        step, order, step_time = resumed["step"], resumed["order"], resumed["step_time"]
        best, best_step, bad_evals = resumed["best"], resumed["best_step"], resumed["bad_evals"]
        best_state, history = resumed.get("best_state", best_state), resumed["history"]
    losses = LossLog()
    losses.first_step = step + 1
    while step < total:
        if not order:
            order = torch.randperm(len(train), generator=gen).tolist()
        idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
        t0 = time.perf_counter()
        losses.add(trainer.step(collate(train, idx, model.cfg.n_tokens, encoder.pad, with_answer=True)))
        step += 1
        evaluating = step % eval_every == 0 or step == total
        if evaluating or step % cfg.log_every == 0:
            losses.flush()  # syncs: the step time below includes the device's work
        step_time += time.perf_counter() - t0
        if progress:  # every step, with the last loss read back (reading it now would sync)
            progress(step, total, f"loss {losses.last:.3f}")
        if evaluating:
            res = evaluate(model, valid, encoder, tokenizer, spec, cfg, mode=valid_mode, train_labels=train_labels)
            score = res.metrics[key_metric] if higher_is_better else -res.metrics[key_metric]
            history.append({"step": step, "loss": losses.last, key_metric: res.metrics[key_metric],
                            "invalid_rate": res.invalid_rate})
            if score > best:
                best, best_step, bad_evals = score, step, 0
                best_state = _trainable_state(model)
            else:
                bad_evals += 1
                if bad_evals >= patience:
                    break
        if checkpoint is not None and checkpoint.due(step, evaluated=evaluating):
            losses.flush()
            checkpoint.save(step, model, trainer.opt, trainer.sched, gen, dict(
                step=step, order=order, step_time=step_time, best=best, best_step=best_step,
                bad_evals=bad_evals, history=history), best_state=best_state, best_step=best_step)
    losses.flush()
    _load_trainable_state(model, best_state)
    return FitResult(
        steps=step,
        best_step=best_step,
        best_valid=best if higher_is_better else -best,
        history=history,
        step_time_s=step_time / max(step, 1),
        samples_per_s=cfg.batch_size * step / max(step_time, 1e-9),
    )
