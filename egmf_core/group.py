"""Run groups: up to K runs over one frozen backbone, one forward and one backward per step.

``run_group`` trains runs that share a backbone and a dataset (``group_key``) in one process.
The frozen weights exist once; each run keeps its own EGMF modules, LoRA adapters
(egmf_core/lora.py; none for a LoRA-off run), optimizer and schedule, RNG stream and data order,
validation passes, early stopping, best weights and checkpoint. A training step is

    for each run k: its next batch (its own order), fuse() under its own RNG -> I_wrapped_k
    one decoder forward over [I_wrapped_1; ...; I_wrapped_K] (each run's rows padded to one shape)
    loss_k = the run's own mean answer-token cross-entropy;  backward of sum_k loss_k
    for each run k: its own gradient clip, AdamW step and schedule step

Rows never mix in the decoder (attention is within a row, each row's LoRA delta is its run's), so
run j's loss gives run k's parameters exactly zero gradient, and each run follows the steps it
would take alone (up to float rounding of the larger matmuls). Validation and test passes are
batched across the runs due: one prefill / generation over their concatenated batches. A run that
stops (early stopping, its last step, a NaN loss) leaves the group, ``on_done`` gets its outcome,
and the next queued run takes its place. A single run is not routed through here:
``run_experiment`` keeps its own path (and its bits).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch.nn import functional as F

from egmf_core.batching import EncodedSplit, PromptEncoder, collate, padded_length
from egmf_core.config import RunConfig, config_hash, validate
from egmf_core.lora import GroupedLoRALinear, LoRAAdapters, LoRARouter, SlotLayout, SlotRNG, install_grouped_lora
from egmf_core.model import EGMF
from egmf_core.outcome import RunOutcome

# What the runs of one group must share: one backbone, one dataset, one way of reading answers
# (validation and test passes are one batched pass over all runs' prompts).
GROUP_KEY_FIELDS = (
    "model.method", "model.backbone", "model.model_path", "model.trust_remote_code", "model.prompt_format", "model.class_target",
    "train.eval_mode", "train.valid_eval_mode", "train.eval_batch_size", "train.max_new_tokens_cls",
    "train.max_new_tokens_reg", "train.mixed_precision", "train.compile", "data",
)


# ``--group auto``. On CPU: 1, each run alone. Measured on the smoke profile (2-core x86-64, one
# thread, sims_v2, glm3-tiny, batch 16; ms per run-step): K=1 47.4, K=2 40.6, K=4 39.8, K=8 38.6.
# The tiny twins are bound by their own arithmetic there (aten::mm ~46% of a decoder step, and the
# elementwise ops grow with the rows), so a group saves only the shared dispatch, ~15%; and a
# grouped run is not bit for bit the run alone (larger GEMMs round differently: 2.6e-5 of a step's
# change after one step), while a smoke run id must name one set of numbers on every x86-64
# machine (benchmarks/execution/numerics.py). ``--group 4`` is there for who wants the 15%.
# On a GPU: as many runs as fit in MEMORY_HEADROOM of the memory left after the weights, from the
# first run's measured step (``auto_group_size``), at most MAX_GROUP.
CPU_GROUP = 1
MAX_GROUP = 32
MEMORY_HEADROOM = 0.85


def auto_group_size(device_type: str, *, free_bytes: int | None = None, per_run_bytes: int | None = None,
                    cap: int = MAX_GROUP) -> int:
    """The group size ``--group auto`` uses: CPU_GROUP on CPU; on CUDA
    floor(MEMORY_HEADROOM * free_bytes / per_run_bytes) runs, where ``free_bytes`` is the device
    memory free with the weights and one run loaded and ``per_run_bytes`` that run's own peak
    (its modules, adapters, optimizer state and one step's activations); at least 1, at most ``cap``."""
    if device_type != "cuda":
        return max(1, min(CPU_GROUP, cap))
    if not free_bytes or not per_run_bytes or per_run_bytes <= 0:
        raise ValueError("auto_group_size: a CUDA group size needs the free memory and one run's measured peak")
    return max(1, min(cap, 1 + int(MEMORY_HEADROOM * free_bytes // per_run_bytes)))


def group_key(cfg: RunConfig) -> str:
    """The part of a config that runs of one group share (GROUP_KEY_FIELDS), as a JSON string."""
    d = cfg.to_dict()
    picked = {}
    for name in GROUP_KEY_FIELDS:
        node = d
        for part in name.split("."):
            node = node[part]
        picked[name] = node
    return json.dumps(picked, sort_keys=True, default=str)


class SlotEGMF(EGMF):
    """EGMF's modules of one run in a group, around the group's shared backbone, plus the run's
    own LoRA adapters (``lora``; None for a LoRA-off run). Called on its own (``model(batch)``,
    outside a group forward) it is the run alone: the backbone applies this run's adapters only."""

    def __init__(self, cfg, llm, audio_dim: int, vision_dim: int, adapters: LoRAAdapters | None,
                 router: LoRARouter):
        super().__init__(cfg, llm, audio_dim, vision_dim)
        self.lora = adapters
        self._router = router  # the shared backbone's (a plain attribute: not a submodule, not in state_dict)

    def forward(self, batch: dict[str, torch.Tensor]):
        if self._router.plans is not None:  # inside a group forward: the group's plan applies
            return super().forward(batch)
        rows, length = batch["input_ids"].shape
        with self._router.activate([self.lora], SlotLayout(rows, [(rows, length)])):
            return super().forward(batch)

    def egmf_parameters(self):
        """EGMF's own parameters: neither the backbone's nor the LoRA adapters (lr, not fusion_lr)."""
        return [p for n, p in self.named_parameters() if not n.startswith(("llm.", "lora."))]


@dataclass
class GroupRun:
    """One run inside a group: its config, modules, encoded splits, fit loop, RNG and outcome."""

    index: object  # the item's tag (its position in run_group's items by default)
    position: int  # the order it was taken in
    cfg: RunConfig
    model: SlotEGMF
    encoder: PromptEncoder
    enc: dict[str, EncodedSplit]
    loop: object  # train.FitLoop: its trainer, schedule, state, losses and checkpoint
    rng: SlotRNG
    outcome: RunOutcome
    t_start: float


@dataclass
class SharedBackbone:
    """What every run of a group shares: the frozen backbone with its LoRA router, the data."""

    llm: torch.nn.Module
    router: LoRARouter
    tokenizer: object
    info: object
    data: object
    root: Path
    train_split: object
    device: torch.device


@dataclass
class GroupItem:
    """One run handed to ``run_group``: its config, a tag ``on_done`` gets back (default: its
    position), and its checkpoint directory (None: no checkpoints)."""

    cfg: RunConfig
    tag: object = None
    checkpoint_dir: str | Path | None = None
    position: int = 0  # set by the queue: the order it was taken in


def run_group(items: Iterable[RunConfig | GroupItem], *, group_size: int | str,
              on_done: Callable[[object, RunOutcome], None] | None = None,
              progress: Callable[[object, int, int, str], None] | None = None,
              checkpoint_minutes: float | None = None, threads: int | None = None,
              pad_to: str = "longest") -> list[RunOutcome]:
    """Train and evaluate ``items`` (one group_key) in groups of at most ``group_size`` at once
    ("auto": ``auto_group_size``; on CUDA the first run trains its first step alone to measure it).

    ``items`` is read lazily: the next item is taken when a slot frees, so a caller can decide
    then whether a run is still to be trained (e.g. take its lock). Each run's outcome is what
    ``run_experiment`` returns for it, with ``cost["group_size"]`` (the most runs it shared a
    step with); outcomes come back in the order items were taken and, as each run ends, through
    ``on_done(tag, outcome)``. ``progress(tag, step, total, text)`` is called for every run and
    step. A run's checkpoint directory is used as ``run_experiment``'s ``checkpoint_dir``
    (saved by its ``train.checkpoint_every`` and ``checkpoint_minutes``, resumed when found).
    ``pad_to`` ("longest" | "bucket", batching.padded_length) sets the padded length of a
    training step's batch; it is an execution setting like ``threads``: it changes float
    rounding, never a run's id. Raises ValueError for a run whose group_key differs from the first's.
    """
    from egmf_core.run import check_special_tokens

    if group_size != "auto" and (not isinstance(group_size, int) or group_size < 1):
        raise ValueError(f"run_group: group_size={group_size!r} must be a positive number or 'auto'")
    padded_length(1, pad_to)  # checks the name
    queue = _GroupQueue(items)
    first = queue.peek()
    if first is None:
        return []
    if threads is not None:
        torch.set_num_threads(threads)
    shared = build_shared(first.cfg)
    check_special_tokens(shared.tokenizer, shared.info.source)
    auto = group_size == "auto"
    size = (1 if shared.device.type == "cuda" else auto_group_size(shared.device.type)) if auto else group_size
    group = RunGroup(shared, size, pad_to, on_done, progress, checkpoint_minutes)
    group.measure_size = auto and shared.device.type == "cuda"
    return group.run(queue)


class _GroupQueue:
    """The runs waiting for a slot: items validated as they are taken, all of one group_key."""

    def __init__(self, items: Iterable[RunConfig | GroupItem]):
        self._items, self._next, self._taken, self.key = iter(items), None, 0, None

    def peek(self) -> GroupItem | None:
        if self._next is None:
            item = next(self._items, None)
            if item is None:
                return None
            item = item if isinstance(item, GroupItem) else GroupItem(item)
            cfg = validate(item.cfg)
            if cfg.model.method != "egmf":
                raise ValueError(f"run_group: model.method={cfg.model.method!r} trains alone (a group shares "
                                 "EGMF runs' backbone)")
            key = group_key(cfg)
            if self.key is not None and key != self.key:
                raise ValueError("run_group: a config differs from the group's in a field a group shares "
                                 "(GROUP_KEY_FIELDS); split the runs with group_key()")
            self.key = key
            tag = self._taken if item.tag is None else item.tag
            self._next = GroupItem(cfg, tag, item.checkpoint_dir, self._taken)
        return self._next

    def take(self) -> GroupItem | None:
        item = self.peek()
        self._next = None
        self._taken += item is not None
        return item


def build_shared(first: RunConfig) -> SharedBackbone:
    """The group's one backbone (frozen; LoRA-targeted Linears are wrapped as runs join) and its data."""
    from egmf_core.backbones import build_backbone
    from egmf_core.run import load_run_data, seed_everything

    seed_everything(first.seed)
    data, root, train_split = load_run_data(first)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    llm, tokenizer, info = build_backbone(first.model, device=device)
    router = install_grouped_lora(llm, [])
    return SharedBackbone(llm, router, tokenizer, info, data, root, train_split, device)


def run_lora_targets(shared: SharedBackbone, cfg: RunConfig) -> list[str]:
    """A LoRA run's target layers (checked against the backbone), wrapped for the group if new."""
    from egmf_core.backbones import BackboneError, default_lora_targets

    llm = shared.llm
    targets = list(cfg.model.lora_targets or default_lora_targets(llm))
    leaves = {n.rsplit(".", 1)[-1] for n, m in llm.named_modules() if isinstance(m, (torch.nn.Linear, GroupedLoRALinear))}
    unknown = [t for t in targets if t not in leaves]
    if unknown:
        raise BackboneError(f"config field model.lora_targets: {unknown[0]!r} is not a Linear layer of "
                            f"{type(llm).__name__} (has: {', '.join(sorted(leaves))})")
    install_grouped_lora(llm, targets, shared.router)
    return targets


def build_run(shared: SharedBackbone, item: GroupItem, checkpoint_minutes: float | None = None) -> GroupRun:
    """One run's modules, initialised exactly as ``build_model`` does for its seed, and its fit loop
    (resumed from its checkpoint directory when a checkpoint is there)."""
    from egmf_core.checkpoint import Checkpointer
    from egmf_core.run import new_outcome, seed_everything
    from egmf_core.train import FitLoop

    t_start, cfg, checkpoint_dir = time.perf_counter(), item.cfg, item.checkpoint_dir
    seed_everything(cfg.seed)
    llm, data = shared.llm, shared.data
    adapters = None
    if cfg.model.lora:  # drawn under the run seed, as apply_lora does (leaves the global RNG alone)
        adapters = LoRAAdapters(llm, cfg.model, run_lora_targets(shared, cfg), cfg.seed)
    seed_everything(cfg.seed)  # EGMF's own init depends on the run seed only
    model = SlotEGMF(cfg.model, llm, data.audio_dim, data.vision_dim, adapters, shared.router)
    for name, module in model.named_children():
        if name != "llm":
            module.to(shared.device)
    encoder = PromptEncoder(shared.tokenizer, data.spec, cfg.model)
    enc = {"train": encoder.encode(shared.train_split), "valid": encoder.encode(data.valid),
           "test": encoder.encode(data.test)}
    outcome = new_outcome(cfg, model, data, shared.root, shared.info, shared.device)
    checkpoint = None if checkpoint_dir is None else Checkpointer(
        checkpoint_dir, every=cfg.train.checkpoint_every, minutes=checkpoint_minutes, tag=config_hash(cfg))
    loop = FitLoop(model, enc["train"], enc["valid"], encoder, cfg.train, seed=cfg.seed, checkpoint=checkpoint)
    rng = SlotRNG(shared.device.type == "cuda")  # after init or the checkpoint's restore: the run's own stream
    return GroupRun(item.tag, item.position, cfg, model, encoder, enc, loop, rng, outcome, t_start)


class RunGroup:
    """The runs training together now, the queue of those waiting, and the grouped step."""

    def __init__(self, shared: SharedBackbone, size: int, pad_to: str, on_done, progress,
                 checkpoint_minutes: float | None = None):
        self.shared, self.size, self.pad_to = shared, size, pad_to
        self.on_done, self.progress, self.checkpoint_minutes = on_done, progress, checkpoint_minutes
        self.runs: list[GroupRun] = []
        self.outcomes: dict[int, RunOutcome] = {}
        self.measure_size = False  # --group auto on CUDA: size the group after the first run's first step

    def fill(self, queue: _GroupQueue) -> None:
        """Free slots take the next queued runs."""
        while len(self.runs) < self.size and (item := queue.take()) is not None:
            self.runs.append(build_run(self.shared, item, self.checkpoint_minutes))

    def run(self, queue: _GroupQueue) -> list[RunOutcome]:
        """Step the group until every run has ended; the outcomes in the order the runs were taken."""
        base = _allocated(self.shared.device)
        self.fill(queue)
        while self.runs:
            for r in self.runs:
                r.outcome.cost["group_size"] = float(max(r.outcome.cost.get("group_size", 0), len(self.runs)))
            evaluating, failed = self.train_step()
            ended = self.after_step(evaluating, failed)
            if ended:
                self.finish(ended, failed)
            if self.measure_size:
                self.size, self.measure_size = _measured_size(self.shared.device, base), False
            self.fill(queue)
        return [self.outcomes[k] for k in sorted(self.outcomes)]

    def train_step(self) -> tuple[list[bool], dict[int, str]]:
        """One grouped optimizer step; per run whether validation is due, and the runs that failed."""
        from egmf_core.train import TrainingFailed

        runs = self.runs
        batches = [collate(r.loop.train, r.loop.next_indices(), with_answer=True) for r in runs]
        t0 = time.perf_counter()
        losses = grouped_loss(self, batches)
        for r in runs:
            r.loop.trainer.opt.zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()  # sum_k loss_k: each run's gradient is its own loss's
        evaluating, failed = [], {}
        for r, loss in zip(runs, losses):
            r.loop.trainer.update()
            r.loop.losses.add(loss.detach())
            try:
                evaluating.append(r.loop.count_step())
            except TrainingFailed as e:
                evaluating.append(False)
                failed[r.index] = str(e)
        dt = time.perf_counter() - t0
        for r in runs:
            r.loop.state.step_time += dt
            if self.progress:
                self.progress(r.index, r.loop.state.step, r.loop.schedule.total, f"loss {r.loop.losses.last:.3f}")
        return evaluating, failed

    def after_step(self, evaluating: list[bool], failed: dict[int, str]) -> list[GroupRun]:
        """Validate the runs due (one batched pass), checkpoint, and return the runs that end now."""
        due = [r for r, ev in zip(self.runs, evaluating) if ev and r.index not in failed]
        stopped = set()
        if due:
            results = evaluate_group(self, due, "valid", [r.loop.schedule.valid_mode for r in due][0])
            stopped = {r.index for r, res in zip(due, results) if r.loop.record_validation(res)}
        ended = []
        for r, ev in zip(self.runs, evaluating):
            if r.index in failed or r.index in stopped or r.loop.state.step >= r.loop.schedule.total:
                ended.append(r)
            else:
                with r.rng.active():  # the checkpoint's RNG states are the run's own
                    r.loop._maybe_checkpoint(ev)
        return ended

    def finish(self, ended: list[GroupRun], failed: dict[int, str]) -> None:
        """Evaluate the ended runs on validation and test (batched), fill their outcomes, report them."""
        from egmf_core.run import eval_modes, record_split

        ok = [r for r in ended if r.index not in failed]
        for r in ok:
            fr = r.loop.finish()
            r.outcome.steps, r.outcome.best_step, r.outcome.valid_history = fr.steps, fr.best_step, fr.history
            r.outcome.eval_modes = eval_modes(r.cfg)
            r.outcome.cost.update(step_time_s=fr.step_time_s, samples_per_s=fr.samples_per_s)
        for split in ("valid", "test"):
            if ok:
                results = evaluate_group(self, ok, split, ok[0].outcome.eval_modes[split])
                for r, res in zip(ok, results):
                    record_split(r.outcome, split, res, r.enc[split].labels, r.encoder.spec)
        for r in ended:
            self.close(r, failed.get(r.index))

    def close(self, r: GroupRun, error: str | None) -> None:
        """The run leaves the group: its cost, its outcome to ``on_done``."""
        from egmf_core.run import _peak_mem_mb

        if error is not None:
            r.outcome.status, r.outcome.error = "failed", error
        else:
            r.outcome.cost["egmf_share"] = slot_step_share(self, r)
        r.outcome.cost.update(wall_s=time.perf_counter() - r.t_start, peak_mem_mb=_peak_mem_mb(self.shared.device))
        self.runs.remove(r)
        self.outcomes[r.position] = r.outcome
        if self.on_done:
            self.on_done(r.index, r.outcome)


def _allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def _measured_size(device: torch.device, base: int) -> int:
    """``--group auto`` on CUDA after one run's first step: its peak above ``base`` (the weights)."""
    free, _ = torch.cuda.mem_get_info(device)
    per_run = torch.cuda.max_memory_allocated(device) - base
    return auto_group_size("cuda", free_bytes=free, per_run_bytes=per_run)


def _pad_rows(t: torch.Tensor, rows: int, length: int, *, left: bool, value=0) -> torch.Tensor:
    """A (B, L, ...) slot tensor padded to (rows, length, ...) on the right (left: positions on the left)."""
    extra = [0, 0] * (t.dim() - 2)
    pos = (length - t.shape[1], 0) if left else (0, length - t.shape[1])
    return F.pad(t, [*extra, *pos, 0, rows - t.shape[0]], value=value)


def group_mask(masks: list[torch.Tensor], rows: int, length: int, *, left: bool) -> torch.Tensor:
    """The group batch's attention mask (K * rows, length). A dummy row (a run whose batch is
    smaller) attends to one position only, so no row is fully masked (no NaN)."""
    padded = []
    for m in masks:
        p = _pad_rows(m, rows, length, left=left)
        p[m.shape[0]:, -1 if left else 0] = 1
        padded.append(p)
    return torch.cat(padded)


def grouped_loss(group: RunGroup, batches: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    """Each run's mean answer-token cross-entropy from ONE decoder forward over all runs' rows."""
    from egmf_core.train import _autocast, _to

    runs, device, lm = group.runs, group.shared.device, group.shared.llm
    rows = max(b["input_ids"].shape[0] for b in batches)
    length = padded_length(max(b["input_ids"].shape[1] for b in batches), group.pad_to)
    layout = SlotLayout(rows, [tuple(b["input_ids"].shape) for b in batches])
    mask = group_mask([b["attention_mask"] for b in batches], rows, length, left=False)
    answer_index = torch.cat([_regroup_index(b, k, rows, length) for k, b in enumerate(batches)])
    counts = [int(b["answer_index"].numel()) for b in batches]
    host = {"attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0), "answer_index": answer_index,
            "answer_target": torch.cat([b["answer_target"] for b in batches])}
    dev = _to(host, device)
    group.shared.llm.train()
    with _autocast(device, runs[0].cfg.train):
        embeds = []
        for r, b in zip(runs, batches):
            r.model.train()
            with r.rng.active():  # fuse()'s dropout draws come from the run's own stream
                e, _ = r.model.prompt_embeds(_to(b, device))  # I_wrapped: (B_k, L_k, d_llm)
            embeds.append(_pad_rows(e, rows, length, left=False))
        with group.shared.router.activate([r.model.lora for r in runs], layout, [r.rng for r in runs]):
            hidden = lm.get_decoder()(inputs_embeds=torch.cat(embeds), attention_mask=dev["attention_mask"],
                                      position_ids=dev["position_ids"], use_cache=False).last_hidden_state
        predicting = hidden.flatten(0, 1).index_select(0, dev["answer_index"])  # (N_ans, d_llm)
        logits = lm.get_output_embeddings()(predicting).float()  # (N_ans, vocab)
    return [F.cross_entropy(lg, tg) for lg, tg in zip(logits.split(counts), dev["answer_target"].split(counts))]


def _regroup_index(batch: dict[str, torch.Tensor], slot: int, rows: int, length: int) -> torch.Tensor:
    """A run's flat answer positions (b * L_k + t) in the group batch's layout."""
    own_length = batch["input_ids"].shape[1]
    b, t = batch["answer_index"] // own_length, batch["answer_index"] % own_length
    return (slot * rows + b) * length + t


@torch.no_grad()
def evaluate_group(group: RunGroup, runs: list[GroupRun], split: str, mode: str) -> list:
    """Each run's EvalResult on ``split`` (as train.evaluate gives it), the runs' k-th eval batches
    answered together: one generation, or one label-scoring prefill, per batch index."""
    from egmf_core.train import EvalCollector, _autocast, _to, eval_batch_size, eval_batches

    shared, device = group.shared, group.shared.device
    if mode == "score" and runs[0].encoder.spec.task != "classification":
        raise ValueError("train.eval_mode='score' ranks label continuations: it needs a classification dataset")
    size = eval_batch_size(runs[0].model, runs[0].cfg.train, device)
    if device.type == "cuda":  # the memory estimate is per sample of one run
        size = max(runs[0].cfg.train.eval_batch_size, size // len(runs))
    collectors = [EvalCollector(r.enc[split], r.encoder, mode) for r in runs]
    shared.llm.eval()
    for r in runs:
        r.model.eval()
    for idxs in zip(*[eval_batches(r.enc[split], size) for r in runs]):
        batches = [_to(collate(r.enc[split], idx, with_answer=False), device) for r, idx in zip(runs, idxs)]
        with _autocast(device, runs[0].cfg.train):
            fused = [r.model.fuse(b) for r, b in zip(runs, batches)]
            embeds = [r.model.prompt_embeds(b, t)[0] for r, b, (t, _) in zip(runs, batches, fused)]
            answers = _answer_group(group, runs, batches, embeds, mode, collectors[0].max_new_tokens(runs[0].cfg.train))
        for c, idx, (_, gate), a in zip(collectors, idxs, fused, answers):
            c.add(idx, gate, **({"chosen": a} if mode == "score" else {"answers": a}))
    return [c.result(r.cfg.train, r.enc["train"].labels, list(r.model.experts.names)) for c, r in zip(collectors, runs)]


def _answer_group(group: RunGroup, runs: list[GroupRun], batches, embeds, mode: str, max_new: int) -> list:
    """One generation (decoded texts per run) or one label-scoring pass (classes per run) over the
    runs' left-padded eval batches, each run's rows padded to one (rows, length) block."""
    from egmf_core.decoding import generate_tokens, score_label_embeds

    shared = group.shared
    rows = max(e.shape[0] for e in embeds)
    length = max(e.shape[1] for e in embeds)
    mask = group_mask([b["attention_mask"] for b in batches], rows, length, left=True)
    stacked = torch.cat([_pad_rows(e, rows, length, left=True) for e in embeds])  # (K * rows, length, d_llm)
    layout = SlotLayout(rows, [tuple(e.shape[:2]) for e in embeds])
    with shared.router.activate([r.model.lora for r in runs], layout):
        if mode == "score":
            chosen = score_label_embeds(shared.llm, stacked, mask, (mask.cumsum(-1) - 1).clamp(min=0),
                                        runs[0].encoder.label_answers)
            return [chosen[k * rows : k * rows + e.shape[0]] for k, e in enumerate(embeds)]
        out = generate_tokens(shared.llm, stacked, mask, shared.tokenizer, max_new)
    return [shared.tokenizer.batch_decode(out[k * rows : k * rows + e.shape[0]], skip_special_tokens=True)
            for k, e in enumerate(embeds)]


def slot_step_share(group: RunGroup, r: GroupRun) -> float:
    """EGMF's share of one training step of this run alone (run.egmf_step_share, with its adapters)."""
    from egmf_core.run import _probe_batch, egmf_step_share

    batch = _probe_batch(r.enc["train"], r.cfg.train.batch_size, group.shared.device)
    return egmf_step_share(r.model, batch)  # SlotEGMF alone: its own adapters, stacked per forward
