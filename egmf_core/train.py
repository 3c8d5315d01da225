"""The one training loop and the one evaluation loop, used by every table, test and benchmark.

fit(): AdamW over EGMF's modules and the LoRA adapters, cosine schedule with warmup, gradient
clipping, validation every `eval_every` steps, early stopping and model selection on the
validation split only, by the dataset spec's key metric. The test split is evaluated once, by
the caller, after fit() returns. The loop's state between steps is a checkpoint.FitState.
evaluate(): greedy generation (the paper's way) or label scoring, strict parsing, metrics with
the invalid answers counted and filled by the configured fallback, and gating statistics.
Both take the PromptEncoder of the split, and with it its tokenizer and dataset spec.
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
from egmf_core.checkpoint import Checkpointer, FitState
from egmf_core.config import DEFAULT_PATIENCE, TrainConfig
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
    cfg: TrainConfig,
    *,
    mode: str,
    train_labels: np.ndarray,
) -> EvalResult:
    """Answer every sample of a split, parse strictly, and score with the field's metrics.

    The tokenizer and dataset spec are the encoder's. Samples are batched in order of prompt
    length (less padding; results are put back in split order) and the fusion runs once per
    batch, shared by the gate statistics and the decoder. ``train_labels`` feed the fallback
    that fills unparsable answers (``train.invalid_fallback``).
    """
    model.eval()
    if getattr(model, "predicts_directly", False):
        return evaluate_direct(model, enc, encoder, cfg)
    device = _device_of(model)
    if mode == "score" and encoder.spec.task != "classification":
        raise ValueError("train.eval_mode='score' ranks label continuations: it needs a classification dataset")
    collector = EvalCollector(enc, encoder, mode)
    max_new = collector.max_new_tokens(cfg)
    for idx in eval_batches(enc, eval_batch_size(model, cfg, device)):
        batch = _to(collate(enc, idx, with_answer=False), device)
        with _autocast(device, cfg):
            t_pseudo, gate = model.fuse(batch)
            if mode == "score":
                collector.add(idx, gate, chosen=score_labels(model, batch, encoder.label_answers, t_pseudo))
            else:
                collector.add(idx, gate, answers=generate_answers(model, batch, encoder.tok, max_new, t_pseudo))
    return collector.result(cfg, train_labels, list(model.experts.names) if hasattr(model, "experts") else [])


class EvalCollector:
    """One evaluation pass's answers and gate statistics, gathered batch by batch, then scored."""

    def __init__(self, enc: EncodedSplit, encoder: PromptEncoder, mode: str):
        self.enc, self.spec, self.mode = enc, encoder.spec, mode
        self.is_cls = self.spec.task == "classification"
        self.stats = GatingStats()
        self.answers: dict[int, str] = {}
        self.chosen = np.zeros(len(enc), dtype=np.int64)

    def max_new_tokens(self, cfg: TrainConfig) -> int:
        return cfg.max_new_tokens_cls if self.is_cls else cfg.max_new_tokens_reg

    def add(self, idx: list[int], gate, *, answers: list[str] | None = None, chosen: torch.Tensor | None = None):
        """One batch: its samples' decoded answers (generate) or chosen classes (score), and its gate."""
        if chosen is not None:
            self.chosen[idx] = chosen.cpu().numpy()
        else:
            self.answers.update(zip(idx, answers))
        labels = self.enc.labels[idx]
        if gate is not None:  # a model without a gate (MSE-Adapter) records no gating statistics
            self.stats.update(gate, labels if self.is_cls else sentiment_bin(labels, self.spec.neutral_band))

    def result(self, cfg: TrainConfig, train_labels: np.ndarray, expert_names: list[str]) -> EvalResult:
        """Parse strictly, fill the invalid answers by the configured fallback, and score."""
        enc, spec, mode = self.enc, self.spec, self.mode
        texts = [self.answers[i] for i in range(len(enc))] if mode != "score" else []
        if mode == "score":
            values, valid, invalid_rate = self.chosen, np.ones(len(self.chosen), dtype=bool), 0.0
        else:
            parsed = parse_answers(texts, spec)
            values, valid, invalid_rate = parsed.values, parsed.valid, parsed.invalid_rate
        filled = fill_invalid(values, valid, spec, cfg.invalid_fallback, train_labels, y_true=enc.labels)
        metrics = compute_metrics(spec.name, enc.labels, filled)
        label_names = list(spec.labels) if self.is_cls else list(SENTIMENT_BIN_NAMES)
        return EvalResult(
            metrics=metrics,
            invalid_rate=float(invalid_rate),
            predictions=filled,
            valid=valid,
            answers=texts,
            gating=self.stats.as_dict(expert_names, label_names) if len(self.stats) else {},  # K axis order of alpha
            mode=mode,
        )


@torch.no_grad()
def evaluate_direct(model, enc: EncodedSplit, encoder: PromptEncoder, cfg: TrainConfig) -> EvalResult:
    """Score a model that predicts the label itself (TFN: ``model.predict(batch)``, no LLM answers):
    every prediction is valid, mode "direct", no gating statistics."""
    model.eval()
    device = _device_of(model)
    predictions = np.zeros(len(enc), dtype=np.asarray(enc.labels).dtype)
    for idx in eval_batches(enc, cfg.eval_batch_size):
        batch = _to(collate(enc, idx, with_answer=False), device)
        with _autocast(device, cfg):
            predictions[idx] = model.predict(batch).float().cpu().numpy().astype(predictions.dtype)
    metrics = compute_metrics(encoder.spec.name, enc.labels, predictions)
    return EvalResult(metrics=metrics, invalid_rate=0.0, predictions=predictions,
                      valid=np.ones(len(enc), dtype=bool), answers=[], gating={}, mode="direct")


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
        self.update()
        return loss.detach()

    def update(self) -> None:
        """Clip the gradients, step the optimizer and the schedule (after the backward pass)."""
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()


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


@dataclass(frozen=True)
class FitSchedule:
    """The step counts and validation mode of one fit, fixed before its first step."""

    total: int  # optimizer steps: train.max_steps, else train.epochs x steps per epoch
    eval_every: int  # steps between validation passes (train.eval_every, else one epoch)
    patience: int  # validation passes without improvement before stopping
    valid_mode: str  # one mode for validation and test unless train.valid_eval_mode is set

    @classmethod
    def of(cls, cfg: TrainConfig, n_train: int, task: str) -> FitSchedule:
        steps_per_epoch = math.ceil(n_train / cfg.batch_size)
        return cls(
            total=cfg.max_steps or cfg.epochs * steps_per_epoch,
            eval_every=cfg.eval_every or steps_per_epoch,
            patience=cfg.patience if cfg.patience is not None else DEFAULT_PATIENCE[task],
            valid_mode=cfg.valid_eval_mode or cfg.eval_mode,
        )


def fit(
    model: EGMF,
    train: EncodedSplit,
    valid: EncodedSplit,
    encoder: PromptEncoder,
    cfg: TrainConfig,
    *,
    seed: int,
    progress: Callable[[int, int, str], None] | None = None,
    checkpoint: Checkpointer | None = None,
) -> FitResult:
    """Train EGMF's modules (and LoRA) with early stopping on the validation split only.

    Model selection uses the dataset spec's key metric and direction (``encoder.spec``); the
    fallback for unparsable validation answers draws on ``train.labels``; ``seed`` drives the
    data order. With ``checkpoint``, the state is saved when ``checkpoint.due`` says (steps,
    minutes, validation passes) and a run that finds a checkpoint continues from it, giving the
    same result as if it had never stopped. The training loss is read back every
    ``train.log_every`` steps and at validation passes, not every step: the step itself never
    waits for the device.
    """
    return FitLoop(model, train, valid, encoder, cfg, seed=seed, checkpoint=checkpoint).run(progress)


class FitLoop:
    """One fit's moving parts; ``run`` is the loop and the other methods its named steps."""

    def __init__(self, model: EGMF, train: EncodedSplit, valid: EncodedSplit, encoder: PromptEncoder,
                 cfg: TrainConfig, *, seed: int, checkpoint: Checkpointer | None):
        self.model, self.train, self.valid, self.encoder, self.cfg = model, train, valid, encoder, cfg
        self.schedule = FitSchedule.of(cfg, len(train), encoder.spec.task)
        self.trainer = Trainer.build(model, cfg, self.schedule.total)
        self.gen = torch.Generator().manual_seed(seed)  # the data order's own generator
        self.checkpoint = checkpoint
        self.state = self._start()
        self.losses = LossLog()
        self.losses.first_step = self.state.step + 1

    def _start(self) -> FitState:
        """A fresh state, or the checkpoint's: continue exactly where the saved run stopped."""
        fresh = FitState(best_state=_trainable_state(self.model))
        resumed = None if self.checkpoint is None else self.checkpoint.resume(
            self.model, self.trainer.opt, self.trainer.sched, self.gen)
        if resumed is None:
            return fresh
        resumed.best_state = resumed.best_state or fresh.best_state
        return resumed

    def run(self, progress: Callable[[int, int, str], None] | None) -> FitResult:
        """Step until the schedule ends or patience runs out; leave the best step's weights loaded."""
        state, total = self.state, self.schedule.total
        while state.step < total:
            evaluating = self._train_step()
            if progress:  # every step, with the last loss read back (reading it now would sync)
                progress(state.step, total, f"loss {self.losses.last:.3f}")
            if evaluating and self._validate():
                break  # early stop: no checkpoint of this step, the run is over
            self._maybe_checkpoint(evaluating)
        return self.finish()

    def finish(self) -> FitResult:
        """The fit is over: read the last losses back and load the best step's weights."""
        self.losses.flush()
        _load_trainable_state(self.model, self.state.best_state)
        return self._result()

    def _train_step(self) -> bool:
        """One optimizer step on the next batch of the shuffled order; whether validation is due."""
        idx = self.next_indices()
        t0 = time.perf_counter()
        self.losses.add(self.trainer.step(collate(self.train, idx, with_answer=True)))
        evaluating = self.count_step()
        self.state.step_time += time.perf_counter() - t0
        return evaluating

    def next_indices(self) -> list[int]:
        """The next training batch's sample indices: the epoch's shuffled order, drawn from the
        fit's own generator."""
        state, batch_size = self.state, self.cfg.batch_size
        if not state.order:
            state.order = torch.randperm(len(self.train), generator=self.gen).tolist()
        idx, state.order = state.order[:batch_size], state.order[batch_size:]
        return idx

    def count_step(self) -> bool:
        """Count a step taken; read the losses back when due; whether validation is due."""
        state = self.state
        state.step += 1
        evaluating = state.step % self.schedule.eval_every == 0 or state.step == self.schedule.total
        if evaluating or state.step % self.cfg.log_every == 0:
            self.losses.flush()  # syncs: the step time includes the device's work
        return evaluating

    def _validate(self) -> bool:
        """A validation pass: record it and keep the best weights; whether patience ran out."""
        res = evaluate(self.model, self.valid, self.encoder, self.cfg, mode=self.schedule.valid_mode,
                       train_labels=self.train.labels)
        return self.record_validation(res)

    def record_validation(self, res: EvalResult) -> bool:
        """Record a validation pass's result and keep the best weights; whether patience ran out."""
        state, spec = self.state, self.encoder.spec
        value = res.metrics[spec.key_metric]
        score = value if spec.key_metric_higher_is_better else -value
        state.history.append({"step": state.step, "loss": self.losses.last, spec.key_metric: value,
                              "invalid_rate": res.invalid_rate})
        if score > state.best:
            state.best, state.best_step, state.bad_evals = score, state.step, 0
            state.best_state = _trainable_state(self.model)
            return False
        state.bad_evals += 1
        return state.bad_evals >= self.schedule.patience

    def _maybe_checkpoint(self, evaluated: bool) -> None:
        if self.checkpoint is not None and self.checkpoint.due(self.state.step, evaluated=evaluated):
            self.losses.flush()
            self.checkpoint.save(self.model, self.trainer.opt, self.trainer.sched, self.gen, self.state)

    def _result(self) -> FitResult:
        state = self.state
        best = state.best if self.encoder.spec.key_metric_higher_is_better else -state.best
        return FitResult(
            steps=state.step,
            best_step=state.best_step,
            best_valid=best,
            history=state.history,
            step_time_s=state.step_time / max(state.step, 1),
            samples_per_s=self.cfg.batch_size * state.step / max(state.step_time, 1e-9),
        )
