"""The cost planner: what a paper-profile grid costs in GPU-hours before it starts.

    python -m benchmarks plan TABLE|all|nightly --profile paper [--gpu h100|h200|a100-80g]
        [--gpus N] [--jobs-per-gpu K] [--from GPU_CHECK_JSON]

It needs no GPU, data or weights: the grid comes from the table files (``check_roots=False``),
the dataset sizes from the real split sizes (``egmf_core.data.synth.FULL_SHAPES``), the
architectures from ``egmf_core.full_twins.full_config``. A step costs either what a gpu-check
JSON measured (``--from``) or an analytic FLOP count at a stated MFU. Every assumption is
printed under the table (``assumptions``), so a reader can redo the arithmetic by hand.

``run_cost`` is also the Slurm launcher's weight for balancing shards (``balance_shards``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from benchmarks.execution.grid import Cell, Grid, GridError, expand, unique_runs


@dataclass(frozen=True)
class Gpu:
    """A datasheet: bf16 dense peak (TFLOP/s) and HBM bandwidth (TB/s)."""

    name: str
    bf16_tflops: float
    hbm_tb_s: float


GPUS: dict[str, Gpu] = {  # the one table of GPUs (NVIDIA datasheets, dense bf16, no sparsity)
    "h100": Gpu("NVIDIA H100 SXM", 989.0, 3.35),
    "h200": Gpu("NVIDIA H200", 989.0, 4.8),
    "a100-80g": Gpu("NVIDIA A100 80GB SXM", 312.0, 2.04),
}
DEFAULT_GPU = "h100"
MFU = 0.35  # analytic step time: the share of the bf16 peak a LoRA step at paper shapes reaches
DECODE_BANDWIDTH_SHARE = 0.6  # a generation step reads every weight once, at this share of HBM bandwidth
PROMPT_TEMPLATE_TOKENS = 24  # instruction and label list of a prompt (egmf_core/prompts.py), about
ANSWER_TOKENS = 4  # the target answer and end of sequence, about
BEST_EVALUATION = 5  # early stopping: the best validation score is assumed at the 5th evaluation
RUN_START_S = 30.0  # per run: process start, data loading, building the model
WEIGHT_READ_GB_S = 2.0  # per run: the bf16 weights read from local disk at this rate
TRAIN_FLOPS_PER_TOKEN = 4  # x N: forward 2N + backward through the frozen weights 2N (no weight grads)
TARGETS = ("all", "nightly")  # besides a table name or number
NO_LLM_METHODS = ("tfn",)  # model.method values that load no LLM (TFN: only the backbone's tokenizer)


class PlanError(ValueError):
    """Bad planner input (unknown GPU, a backbone without an architecture, a bad gpu-check JSON)."""


@dataclass(frozen=True)
class Architecture:
    """What the FLOP count needs of a backbone: matmul parameters per token and weight bytes."""

    params: int  # every parameter (the gpu-check's ``params``)
    matmul_params: int  # params a token's forward multiplies by: all but the input embedding
    weight_bytes: int  # bf16


@lru_cache(maxsize=None)
def architecture(family: str) -> Architecture:
    """From the published config (``full_twins.full_config``): dense layers with a gated MLP."""
    from egmf_core.full_twins import full_config

    c = full_config(family)
    h, layers, ffn = c.hidden_size, c.num_hidden_layers, c.intermediate_size
    head_dim = getattr(c, "head_dim", None) or h // c.num_attention_heads
    attention = 2 * h * c.num_attention_heads * head_dim + 2 * h * c.num_key_value_heads * head_dim  # q, o, k, v
    per_layer = attention + 3 * h * ffn  # gate, up, down
    embedding = c.vocab_size * h
    matmul = layers * per_layer + embedding  # + the LM head (untied in all three)
    params = matmul + embedding
    return Architecture(params, matmul, 2 * params)


@dataclass
class RunCost:
    """One run's estimate: steps, evaluation passes and seconds on one GPU."""

    run_id: str
    table: str
    label: str
    backbone: str
    steps: int
    evaluations: int  # validation passes during training, plus the final valid and test passes
    train_s: float
    eval_s: float
    setup_s: float = 0.0
    llm: bool = True  # False: a run of NO_LLM_METHODS (TFN), priced at its start only

    @property
    def seconds(self) -> float:
        return self.setup_s + self.train_s + self.eval_s


@dataclass
class Plan:
    """Per-table rows and the runs, each counted once (in the first table that asks for it)."""

    target: str
    gpu: str
    gpus: int
    jobs_per_gpu: int
    source: str  # "analytic" or the gpu-check JSON's path
    groups: dict[str, int] = field(default_factory=dict)  # family -> run-group size priced (absent: ungrouped)
    tables: list[dict[str, Any]] = field(default_factory=list)
    runs: list[RunCost] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def gpu_hours(self) -> float:
        return sum(r.seconds for r in self.runs) / 3600

    @property
    def wall_hours(self) -> float:
        """LPT schedule of the runs on gpus x jobs_per_gpu slots (a slot runs one run at a time)."""
        slots = self.gpus * self.jobs_per_gpu
        loads = balance_shards({r.run_id: r.seconds * self.jobs_per_gpu for r in self.runs}, slots)
        return max((sum(s.values()) for s in loads), default=0.0) / 3600


# ---- steps ---------------------------------------------------------------------------------------

def run_steps(cell: Cell) -> tuple[int, int]:
    """(training steps, evaluation passes) of one run, the way ``train.fit`` counts them.

    ``max_steps`` set: that many steps, a validation every ``eval_every`` (no early stop assumed).
    Otherwise epochs x ceil(train / batch) steps with a validation every ``eval_every`` steps
    (default once per epoch), stopped ``patience`` evaluations after the best, assumed at the
    BEST_EVALUATION-th. Either way ``run_experiment`` then evaluates valid and test once more.
    """
    t = cell.config.train
    n_train = train_size(cell)
    per_epoch = math.ceil(n_train / t.batch_size)
    total = t.max_steps or t.epochs * per_epoch
    every = t.eval_every or per_epoch
    n_evals = math.ceil(total / every)
    if t.max_steps is None:
        patience = t.patience if t.patience is not None else 10
        n_evals = min(n_evals, BEST_EVALUATION + patience)
        total = min(total, n_evals * every)
    return total, n_evals + 2


def _full_shape(cell: Cell):
    from egmf_core.data.synth import FULL_SHAPES

    return FULL_SHAPES[cell.config.data.name]


def train_size(cell: Cell) -> int:
    n = _full_shape(cell).sizes[0]
    return min(n, cell.config.data.max_train) if cell.config.data.max_train else n


def tokens_per_sample(cell: Cell) -> int:
    """Prompt template + pseudo tokens + utterance (the dataset's longest, capped) + answer."""
    m = cell.config.model
    text = min(_full_shape(cell).lengths[0], m.max_text_tokens) if m.text_in_prompt else 0
    return PROMPT_TEMPLATE_TOKENS + m.n_tokens + text + ANSWER_TOKENS


# ---- seconds -------------------------------------------------------------------------------------

def run_cost(cell: Cell, gpu: str = DEFAULT_GPU, measured: dict[str, Any] | None = None,
             jobs_per_gpu: int = 1, group: int = 1) -> RunCost:
    """One run's GPU seconds: training steps plus evaluation passes over valid (and test).

    ``group`` > 1 (measured by ``gpu-check --group``): a run-step costs its tokens at the group's
    measured aggregate tokens/s (one process per GPU: ``jobs_per_gpu`` does not apply).
    A run of NO_LLM_METHODS (TFN) loads no LLM: no weights are read and its small fusion model's
    steps and evaluations are taken as 0 s, so it costs only RUN_START_S.
    """
    family = _family(cell)
    steps, evals = run_steps(cell)
    if cell.config.model.method in NO_LLM_METHODS:
        return RunCost(cell.run_id, cell.table, cell.label, family, steps, evals, 0.0, 0.0, RUN_START_S, llm=False)
    t = cell.config.train
    sizes = _full_shape(cell).sizes
    eval_samples = (evals - 1) * sizes[1] + sizes[2]  # every pass but the last reads valid
    tokens = tokens_per_sample(cell)
    m = (measured or {}).get(family)
    if m:
        compiled = bool(t.compile and m.get("jobs_per_gpu_compiled") and "step_time_s" in m.get("compile", {}))
        base = float(m["compile"]["step_time_s"] if compiled else m["step_time_s"])  # train.compile: its own timing
        step_s = base * (t.batch_size * tokens) / float(m["tokens_per_step"])
        step_s *= _sharing_factor(m, jobs_per_gpu, "jobs_per_gpu_compiled" if compiled else "jobs_per_gpu")
        grouped = group_rate(m, group)
        if grouped:
            step_s = t.batch_size * tokens / grouped
        key = "eval_score_s_per_batch" if t.eval_mode == "score" else "eval_generate_s_per_batch"
        eval_s = eval_samples / float(m.get("eval_batch_size", t.eval_batch_size)) * float(m[key])
    else:
        step_s = _train_step_s(family, gpu, t.batch_size * tokens)
        eval_s = eval_samples * _eval_sample_s(family, gpu, tokens, t)
    setup_s = RUN_START_S + architecture(family).weight_bytes / (WEIGHT_READ_GB_S * 1e9)
    return RunCost(cell.run_id, cell.table, cell.label, family, steps, evals, steps * step_s, eval_s, setup_s)


def _family(cell: Cell) -> str:
    from egmf_core.paths import FAMILIES

    name = cell.config.model.backbone
    if name not in FAMILIES:
        raise PlanError(f"{cell.label}: backbone {name!r} is not a full-size architecture "
                        f"(the planner prices the paper profile: {', '.join(FAMILIES)})")
    return name


def _train_step_s(family: str, gpu: str, tokens: int) -> float:
    return TRAIN_FLOPS_PER_TOKEN * architecture(family).matmul_params * tokens / _flops(gpu)


def _eval_sample_s(family: str, gpu: str, tokens: int, t) -> float:
    """Prefill at MFU, then (generation) one weight read per new token for a batch, shared by it."""
    arch = architecture(family)
    prefill = 2 * arch.matmul_params * (tokens - ANSWER_TOKENS) / _flops(gpu)
    if t.eval_mode == "score":
        return prefill * 2  # every label scored: about as many tokens again
    new_tokens = max(t.max_new_tokens_cls, t.max_new_tokens_reg)
    read = arch.weight_bytes / (GPUS[gpu].hbm_tb_s * 1e12 * DECODE_BANDWIDTH_SHARE)
    return prefill + new_tokens * read / t.eval_batch_size


def _flops(gpu: str) -> float:
    return GPUS[gpu].bf16_tflops * 1e12 * MFU


def group_rate(m: dict[str, Any], k: int) -> float | None:
    """The measured aggregate tokens/s of a group of k runs (gpu-check --group), None if not measured."""
    g = (m.get("groups") or {}).get(str(k)) if k > 1 else None
    rate = g.get("aggregate_tokens_per_s") if isinstance(g, dict) else None
    return float(rate) if isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0 else None


def best_groups(measured: dict[str, Any], requested: int | None) -> dict[str, int]:
    """family -> the group size to price it at: ``requested`` where measured, else (None) the
    measured group whose aggregate tokens/s beats every measured ungrouped setting; absent: ungrouped."""
    out = {}
    for family, m in measured.items():
        if requested is not None:
            if group_rate(m, requested):
                out[family] = requested
            continue
        rates = {int(k): group_rate(m, int(k)) for k in (m.get("groups") or {}) if str(k).isdigit()}
        rates = {k: r for k, r in rates.items() if r}
        ungrouped = float(m.get("best_tokens_per_s") or m["tokens_per_step"] / m["step_time_s"])
        if rates and max(rates.values()) > ungrouped:
            out[family] = max(rates, key=rates.get)
    return out


def _sharing_factor(m: dict[str, Any], k: int, key: str = "jobs_per_gpu") -> float:
    """GPU seconds per run-step with k runs on one GPU, relative to one: tokens/s(1) / tokens/s(k)
    (``key``: the uncompiled measurements, or ``jobs_per_gpu_compiled`` for ``train.compile``)."""
    table = {str(k_): float(v) for k_, v in (m.get(key) or {}).items() if isinstance(v, (int, float))}
    if k == 1 or "1" not in table or str(k) not in table:
        return 1.0
    return table["1"] / table[str(k)]


# ---- the grid ------------------------------------------------------------------------------------

def planned_grids(grid: Grid, *, check_roots: bool = False) -> list[tuple[str, list[Cell]]]:
    """(table, its cells) for the training tables of a table, "all" or "nightly" (its declared
    grid, under ``grid``'s overrides): exactly what ``reproduce`` with these args asks for."""
    if grid.table == "nightly":
        from benchmarks.execution.nightly_grid import nightly_grid

        nightly = nightly_grid(grid.profile)
        args = replace(grid.args, seeds=grid.args.seeds or nightly.seeds, rows=grid.args.rows or nightly.rows,
                       overrides={**nightly.overrides, **(grid.args.overrides or {})})
        tables = [replace(grid, table=name, args=args) for name in nightly.tables]
    else:
        tables = grid.tables()
    out = []
    for table in tables:
        spec = table.spec()
        if spec.trains:
            out.append((spec.name, expand(spec, table.profile, table.args, check_roots=check_roots)))
    return out


@dataclass(frozen=True)
class Pricing:
    """What a plan prices runs on: the GPU model and count, runs sharing one GPU (default:
    gpu-check's best, else 1), and a gpu-check JSON to take step times from (else analytic)."""

    gpu: str = DEFAULT_GPU
    gpus: int = 1
    jobs_per_gpu: int | None = None
    measured_path: Path | None = None
    group: int | None = None  # runs per group (gpu-check --group measured it); None: the fastest measured setting


def make_plan(grid: Grid, pricing: Pricing = Pricing(), *, check_roots: bool = False) -> Plan:
    """Price every distinct run of ``grid`` once, in the first table that asks for it."""
    gpu = pricing.gpu
    if gpu not in GPUS:
        raise PlanError(f"unknown --gpu {gpu!r} (known: {', '.join(GPUS)})")
    if pricing.gpus < 1:
        raise PlanError(f"--gpus {pricing.gpus}: must be at least 1")
    path = pricing.measured_path
    measured, source = (load_gpu_check(path), str(path)) if path else ({}, "analytic")
    if pricing.group is not None and pricing.group < 1:
        raise PlanError(f"--group {pricing.group}: must be at least 1")
    groups = {} if pricing.jobs_per_gpu else best_groups(measured, pricing.group)
    k = pricing.jobs_per_gpu or _best_jobs(measured) or 1  # runs that do not group (baselines) still share a GPU
    if k < 1:
        raise PlanError(f"--jobs-per-gpu {k}: must be at least 1")
    plan = Plan(grid.table, gpu, pricing.gpus, k, source, groups=groups)
    seen: set[str] = set()
    for table, cells in planned_grids(grid, check_roots=check_roots):
        runs = unique_runs(cells)
        new = [run_cost(c, gpu, measured, k, groups.get(_family(c), 1) if c.config.model.method == "egmf" else 1)
               for rid, c in runs.items() if rid not in seen]
        seen.update(runs)
        plan.runs += new
        plan.tables.append(dict(table=table, cells=len(cells), runs=len(runs), new=len(new),
                                steps=sorted(r.steps for r in new),
                                gpu_hours=sum(r.seconds for r in new) / 3600))
    if pricing.group not in (None, 1) and set(groups) != set(measured):
        plan.notes.append(f"run groups of {pricing.group} not measured for "
                          f"{', '.join(sorted(set(measured) - set(groups)))}: priced ungrouped")
    unmeasured_k = sorted(n for n, m in measured.items() if k > 1 and str(k) not in (m.get("jobs_per_gpu") or {}))
    if unmeasured_k:
        plan.notes.append(f"{k} runs per GPU not measured for {', '.join(unmeasured_k)}: priced as one run per GPU")
    missing = sorted({r.backbone for r in plan.runs if r.llm} - set(measured)) if measured else []
    if missing:
        plan.notes.append(f"no measurement for {', '.join(missing)} in {source}: analytic estimate for those")
    return plan


def _best_jobs(measured: dict[str, Any]) -> int | None:
    best = [int(m["best_jobs_per_gpu"]) for m in measured.values() if m.get("best_jobs_per_gpu")]
    return min(best) if best else None


def load_gpu_check(path: Path) -> dict[str, dict[str, Any]]:
    """The ``backbones`` block of a gpu-check JSON, checked for what the planner reads."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PlanError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    backbones = data.get("backbones") if isinstance(data, dict) else None
    if not isinstance(backbones, dict) or not backbones:
        raise PlanError(f"{path}: missing field 'backbones' (write it with: python -m benchmarks gpu-check --json)")
    for name, m in backbones.items():
        for key in ("step_time_s", "tokens_per_step", "eval_generate_s_per_batch"):
            value = m.get(key) if isinstance(m, dict) else None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise PlanError(f"{path}: backbones.{name}.{key} must be a positive number, got {value!r}")
    return backbones


# ---- shards --------------------------------------------------------------------------------------

def balance_shards(costs: dict[str, float], n: int) -> list[dict[str, float]]:
    """Longest processing time first: each run, costliest first, onto the least-loaded of n shards.

    Deterministic (ties by run id, then shard number), so every machine computes the same split.
    """
    import heapq

    if n < 1:
        raise GridError(f"bad shard count {n}: need at least 1")
    shards: list[dict[str, float]] = [{} for _ in range(n)]
    heap = [(0.0, i) for i in range(n)]
    for run_id, cost in sorted(costs.items(), key=lambda kv: (-kv[1], kv[0])):
        load, i = heapq.heappop(heap)
        shards[i][run_id] = cost
        heapq.heappush(heap, (load + cost, i))
    return shards


# ---- output --------------------------------------------------------------------------------------

def render_plan(plan: Plan) -> str:
    """The markdown table, totals and the assumptions behind them."""
    gpu = GPUS[plan.gpu]
    lines = [f"## Cost plan: {plan.target} [paper] on {gpu.name}", "",
             "| table | cells | runs | new runs | steps per run | GPU-hours |", "|---|---:|---:|---:|---:|---:|"]
    for t in plan.tables:
        steps = t["steps"]
        span = "-" if not steps else (f"{steps[0]:,}" if steps[0] == steps[-1] else f"{steps[0]:,}-{steps[-1]:,}")
        lines.append(f"| {t['table']} | {t['cells']} | {t['runs']} | {t['new']} | {span} | {t['gpu_hours']:.1f} |")
    lines.append(f"| **total** | | | **{len(plan.runs)}** | | **{plan.gpu_hours:.1f}** |")
    lines += ["", f"Wall time on {plan.gpus} GPU(s) x {plan.jobs_per_gpu} run(s) per GPU: "
                  f"**{plan.wall_hours:.1f} h** (longest run first onto the least-loaded slot).", ""]
    lines += ["Assumptions:", *[f"- {a}" for a in assumptions(plan)], *[f"- {n}" for n in plan.notes]]
    return "\n".join(lines) + "\n"


def assumptions(plan: Plan) -> list[str]:
    gpu = GPUS[plan.gpu]
    out = [
        "runs: a configuration asked for by several tables is trained once and counted in the first "
        "(\"new runs\"); training set sizes are the real splits (egmf_core/data/synth.py FULL_SHAPES)",
        "early stopping: a run without max_steps stops `patience` evaluations after its best, assumed at "
        f"evaluation {BEST_EVALUATION} (patience: 10 MSA, 8 ERC; one evaluation per epoch unless eval_every); "
        "a run with max_steps trains all of them; then valid and test are evaluated once more",
        f"tokens per sample: {PROMPT_TEMPLATE_TOKENS} template + n_tokens pseudo tokens + the dataset's longest "
        f"utterance (capped at model.max_text_tokens) + {ANSWER_TOKENS} answer; batches padded to that length",
        f"each run starts in {RUN_START_S:g} s plus reading its bf16 weights at {WEIGHT_READ_GB_S:g} GB/s",
    ]
    no_llm = [r for r in plan.runs if not r.llm]
    if no_llm:
        out.append(f"{len(no_llm)} run(s) of {', '.join(NO_LLM_METHODS)} (model.method) load no LLM, only the "
                   f"backbone's tokenizer: each priced at its {RUN_START_S:g} s start alone, its small fusion model's "
                   f"training and evaluation taken as 0 GPU-hours; the step and evaluation times below are the LLM runs'")
    if plan.source == "analytic":
        out += [
            f"training step: {TRAIN_FLOPS_PER_TOKEN} x N x tokens FLOPs (frozen backbone with LoRA: forward 2N, "
            f"backward to the inputs 2N, no weight gradients; N = matmul parameters incl. the LM head) at "
            f"{MFU:.0%} MFU of the {gpu.bf16_tflops:g} TFLOP/s bf16 dense peak",
            f"evaluation: prefill 2 x N x tokens at the same MFU, then one read of the bf16 weights per generated "
            f"token per batch at {DECODE_BANDWIDTH_SHARE:.0%} of {gpu.hbm_tb_s:g} TB/s (label scoring: twice the prefill)",
            f"{plan.jobs_per_gpu} run(s) per GPU: the MFU above is their aggregate (no sharing gain assumed)",
        ]
    elif plan.groups:
        sizes = ", ".join(f"{f} in groups of {k}" for f, k in sorted(plan.groups.items()))
        out += [f"step and evaluation times measured by gpu-check ({plan.source}); training priced at the "
                f"fastest measured setting: run groups ({sizes}; `reproduce --group`), a run-step costing its "
                "tokens at the group's measured aggregate tokens/s; evaluation priced per run, as measured alone"]
    else:
        out += [f"step and evaluation times measured by gpu-check ({plan.source}), step time scaled linearly "
                f"with tokens per step; {plan.jobs_per_gpu} run(s) per GPU priced at the measured aggregate tokens/s"
                + ("" if plan.source == "analytic" else "; no run group measured (gpu-check --group): priced ungrouped")]
    return out


def summary_block(plan: Plan) -> str:
    """A few lines for stderr before a paper grid starts."""
    return (f"estimate ({plan.source}, {GPUS[plan.gpu].name}, early stopping assumed at evaluation "
            f"{BEST_EVALUATION} + patience): {len(plan.runs)} distinct runs (stored ones are reused), {plan.gpu_hours:.1f} GPU-hours, "
            f"{plan.wall_hours:.1f} h on {plan.gpus} GPU(s); details: python -m benchmarks plan {plan.target} "
            f"--profile paper --gpu {plan.gpu}")


def costs_of(cells: Iterable[Cell], gpu: str = DEFAULT_GPU) -> dict[str, float]:
    """run id -> estimated GPU seconds (analytic), for shard balancing."""
    return {rid: run_cost(c, gpu).seconds for rid, c in unique_runs(cells).items()}


def detect_gpu() -> str:
    """This machine's GPU among GPUS by its CUDA name (the default when there is none or it is unknown)."""
    try:
        import torch

        name = torch.cuda.get_device_name(0).upper() if torch.cuda.is_available() else ""
    except Exception:  # a broken driver must not stop a grid from starting
        name = ""
    for key, marker in (("h200", "H200"), ("h100", "H100"), ("a100-80g", "A100")):
        if marker in name:
            return key
    return DEFAULT_GPU
