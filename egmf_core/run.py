"""One run end to end: load data, build the backbone and EGMF, fit, evaluate, report cost.

``run_experiment`` is the single entry point the harness, the tests and the benchmarks call.
Bad input (config, data, model directory) raises ValueError with a one-line message before any
training; a failure during training (a NaN loss) returns a RunOutcome with status "failed".
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from egmf_core.config import RunConfig, validate
from egmf_core.outcome import RunOutcome
from egmf_core.paths import expand_repo_marker
from egmf_core.seeding import seed_everything


def build_model(cfg: RunConfig, audio_dim: int, vision_dim: int, *, device: torch.device | None = None):
    """The backbone (+LoRA) and EGMF around it: returns (model, tokenizer, BackboneInfo).

    The one place that reads ``model.method``: a baseline (MSE-Adapter, TFN) is built by
    ``egmf_core.baselines`` behind the same interface.
    """
    if cfg.model.method != "egmf":
        from egmf_core.baselines import build_baseline

        return build_baseline(cfg, audio_dim, vision_dim, device=device)
    from egmf_core.backbones import apply_lora, build_backbone
    from egmf_core.model import EGMF

    llm, tokenizer, info = build_backbone(cfg.model, device=device)
    llm = apply_lora(llm, cfg.model, seed=cfg.seed)
    seed_everything(cfg.seed)  # EGMF's own init depends on the run seed only
    model = EGMF(cfg.model, llm, audio_dim, vision_dim)
    dev = device or next(llm.parameters()).device
    for name, module in model.named_children():
        if name != "llm":
            module.to(dev)
    return model, tokenizer, info


def check_special_tokens(tokenizer, where: str) -> None:
    """Refuse a tokenizer that cannot end an answer: prompts and targets need eos and pad ids."""
    from egmf_core.backbones import BackboneError

    for name in ("eos_token_id", "pad_token_id"):
        if getattr(tokenizer, name, None) is None:
            raise BackboneError(f"{where}: tokenizer has no {name.removesuffix('_id')} (set it in tokenizer_config.json)")


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def egmf_step_share(model, batch: dict[str, torch.Tensor], repeats: int = 3) -> float:
    """Share of a training step's time spent in EGMF's own modules (forward + backward).

    Measured on one batch: the full step (LLM + EGMF) against EGMF alone (fuse() with a
    backward through T_pseudo), median of `repeats` timings each. Gradients are discarded.
    A model without an LLM (TFN: no ``fuse``) is all its own modules: 1.0.
    """
    if not hasattr(model, "fuse"):
        return 1.0
    def timed(fn) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            if batch["audio"].is_cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    def full():
        loss, _ = model(batch)
        loss.backward()

    def egmf_only():
        t, _ = model.fuse(batch)
        t.float().pow(2).mean().backward()

    model.train()
    t_full, t_egmf = timed(full), timed(egmf_only)
    model.zero_grad(set_to_none=True)
    return min(t_egmf / max(t_full, 1e-12), 1.0)


def run_experiment(cfg: RunConfig, *, progress: Callable[[int, int, str], None] | None = None,
                   checkpoint_dir: str | Path | None = None, checkpoint_minutes: float | None = None,
                   threads: int | None = None) -> RunOutcome:
    """Train and evaluate one configuration; the test split is evaluated once, at the end.

    With ``checkpoint_dir`` the training state is saved there every ``train.checkpoint_every``
    steps, every ``checkpoint_minutes`` and at validation passes once either is set, and a
    checkpoint found there is resumed (egmf_core.checkpoint); the caller deletes the directory once
    the outcome is stored. ``checkpoint_minutes`` and ``threads`` (torch's intra-op threads;
    None keeps torch's default) are execution settings, not part of the run's id: neither changes
    a result.
    """
    from egmf_core.batching import PromptEncoder
    from egmf_core.checkpoint import Checkpointer
    from egmf_core.config import config_hash
    from egmf_core.train import TrainingFailed, fit

    cfg = validate(cfg)
    if threads is not None:
        torch.set_num_threads(threads)
    checkpoint = None if checkpoint_dir is None else Checkpointer(
        checkpoint_dir, every=cfg.train.checkpoint_every, minutes=checkpoint_minutes, tag=config_hash(cfg))
    t_start = time.perf_counter()
    seed_everything(cfg.seed)
    data, root, train_split = load_run_data(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model, tokenizer, info = build_model(cfg, data.audio_dim, data.vision_dim, device=device)
    check_special_tokens(tokenizer, info.source)
    encoder = PromptEncoder(tokenizer, data.spec, cfg.model)
    enc = {"train": encoder.encode(train_split), "valid": encoder.encode(data.valid), "test": encoder.encode(data.test)}
    outcome = new_outcome(cfg, model, data, root, info, device)
    try:
        fr = fit(model, enc["train"], enc["valid"], encoder, cfg.train, seed=cfg.seed, progress=progress,
                 checkpoint=checkpoint)
    except TrainingFailed as e:
        outcome.status, outcome.error = "failed", str(e)
        outcome.cost.update(wall_s=time.perf_counter() - t_start, peak_mem_mb=_peak_mem_mb(device))
        return outcome
    outcome.steps, outcome.best_step, outcome.valid_history = fr.steps, fr.best_step, fr.history
    evaluate_splits(outcome, model, enc, encoder, cfg)
    share = egmf_step_share(model, _probe_batch(enc["train"], cfg.train.batch_size, device))
    outcome.cost.update(
        wall_s=time.perf_counter() - t_start,
        peak_mem_mb=_peak_mem_mb(device),
        step_time_s=fr.step_time_s,
        samples_per_s=fr.samples_per_s,
        egmf_share=share,
    )
    return outcome


def load_run_data(cfg: RunConfig):
    """The run's dataset, its resolved root, and the training split (cut to ``data.max_train``)."""
    from egmf_core.data import load_dataset

    if cfg.data.root is None:
        raise ValueError("config field data.root is not set: pass --data-root or set EGMF_DATA_ROOT")
    root = expand_repo_marker(cfg.data.root)  # "<repo>/...": the smoke profile's data, in this clone
    data = load_dataset(cfg.data.name, root, verify_checksums=cfg.data.verify_checksums, strict=cfg.data.strict)
    train_split = data.train
    if cfg.data.max_train is not None and len(train_split) > cfg.data.max_train:
        train_split = train_split.subset(np.arange(cfg.data.max_train))
    return data, root, train_split


def new_outcome(cfg: RunConfig, model, data, root: Path, info, device: torch.device) -> RunOutcome:
    """The outcome before training: where data and model came from, and the parameter counts."""
    from egmf_core.data.provenance import portable_source

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    outcome = RunOutcome(status="ok", device=str(device), data_source=portable_source(data.source, root),
                         data_cleaning=dict(data.cleaning),
                         model_source=info.source, trust_remote_code=cfg.model.trust_remote_code)
    outcome.cost.update(trainable_params=float(trainable), total_params=float(total))
    return outcome


def evaluate_splits(outcome: RunOutcome, model, enc: dict, encoder, cfg: RunConfig) -> None:
    """Score the selected weights on validation and test into ``outcome``, with sampling intervals.

    The validation split is read the way model selection read it, the test split by train.eval_mode.
    """
    from egmf_core.train import evaluate

    outcome.eval_modes = eval_modes(cfg)
    for split in ("valid", "test"):
        res = evaluate(model, enc[split], encoder, cfg.train, mode=outcome.eval_modes[split],
                       train_labels=enc["train"].labels)
        record_split(outcome, split, res, enc[split].labels, encoder.spec)


def eval_modes(cfg: RunConfig) -> dict[str, str]:
    """How each split is read: validation the way model selection read it, test by train.eval_mode."""
    return {"valid": cfg.train.valid_eval_mode or cfg.train.eval_mode, "test": cfg.train.eval_mode}


def record_split(outcome: RunOutcome, split: str, res, labels: np.ndarray, spec) -> None:
    """One split's EvalResult into ``outcome``: metrics, invalid rate, gating, sampling interval."""
    from egmf_core.uncertainty import sampling_ci

    outcome.eval_modes[split] = res.mode  # "direct" for a model that predicts without an LLM (TFN)
    outcome.metrics[split] = {k: float(v) for k, v in res.metrics.items()}
    outcome.invalid_rate[split] = res.invalid_rate
    outcome.gating[split] = res.gating
    outcome.sampling_ci[split] = {spec.key_metric: sampling_ci(spec.name, labels, res.predictions, spec.key_metric)}


def _probe_batch(train, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The first training batch, on ``device``: what egmf_step_share times."""
    from egmf_core.batching import collate

    probe = collate(train, range(min(batch_size, len(train))), with_answer=True)
    return {k: v.to(device) for k, v in probe.items()}
