"""Fixtures of the benchmark suites: paper-scale EGMF inputs and the tiny twins with smoke data.

Run with ``nox -s bench`` (or ``pytest benchmarks/perf --benchmark-enable -o addopts=``). The twins
use the smoke profile's sizes and training settings (``benchmarks.execution.profiles``) on the synthetic
MELD twin, so a step here is a step of the smoke grid. Everything is built once per session.

Torch runs on EGMF_BENCH_THREADS threads (default 1): on a shared or busy CPU a multi-threaded
op stalls whenever one of its threads is descheduled, which made 2-thread timings swing by 10x
here while one thread stayed within a few percent. Saved runs compare only at equal settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from benchmarks.execution import numerics  # noqa: E402

numerics.pin()  # before torch's first op (EGMF_NUMERICS=native opts out)

import pytest  # noqa: E402
import torch  # noqa: E402

from egmf_core.batching import EncodedSplit, PromptEncoder  # noqa: E402
from egmf_core.config import RunConfig, apply_overrides  # noqa: E402
from egmf_core.data.dataset import DatasetSpec  # noqa: E402
from egmf_core.twins import TWIN_NAMES  # noqa: E402

TWINS = TWIN_NAMES  # llama3-tiny, glm4-tiny, glm3-tiny
BENCH_DATASET = "meld"  # classification: both evaluation modes apply
BENCH_SEED = 1111
TRAIN_STEPS = 150  # the smoke profile's max_steps: enough for valid answers on the planted cues
BENCH_THREADS = int(os.environ.get("EGMF_BENCH_THREADS", "1"))
torch.set_num_threads(BENCH_THREADS)


def pytest_report_header(config) -> str:
    return f"egmf benchmarks: torch {torch.__version__}, {torch.get_num_threads()} thread(s) (EGMF_BENCH_THREADS)"


@dataclass
class TwinBench:
    """One tiny twin wrapped by EGMF, with the smoke MELD twin encoded for it."""

    name: str
    cfg: RunConfig
    model: torch.nn.Module
    tokenizer: object
    encoder: PromptEncoder
    spec: DatasetSpec
    train: EncodedSplit
    valid: EncodedSplit
    test: EncodedSplit
    fit_result: object = None


def smoke_config(twin: str) -> RunConfig:
    """The smoke profile's config for the MELD twin with ``twin`` as backbone."""
    from benchmarks.execution.profiles import SMOKE_MODEL, SMOKE_TRAIN, profile_base

    cfg = profile_base("smoke", BENCH_DATASET)
    return apply_overrides(cfg, {**SMOKE_MODEL, **SMOKE_TRAIN, "model.backbone": twin, "seed": BENCH_SEED})


def build_twin_bench(twin: str) -> TwinBench:
    from egmf_core.data.synth import generate
    from egmf_core.run import build_model, seed_everything

    cfg = smoke_config(twin)
    data = generate(BENCH_DATASET, seed=cfg.data.synth_seed)  # the smoke sizes: 480 / 160 / 160
    seed_everything(cfg.seed)
    model, tokenizer, _ = build_model(cfg, data.audio_dim, data.vision_dim, device=torch.device("cpu"))
    encoder = PromptEncoder(tokenizer, data.spec, cfg.model)
    return TwinBench(twin, cfg, model, tokenizer, encoder, data.spec, encoder.encode(data.train),
                     encoder.encode(data.valid), encoder.encode(data.test))


def train_twin(tb: TwinBench, steps: int = TRAIN_STEPS) -> TwinBench:
    """Fit with the one training loop (one validation pass, at the end)."""
    from egmf_core.train import fit

    train_cfg = apply_overrides(tb.cfg, {"train.max_steps": steps, "train.eval_every": steps}).train
    tb.fit_result = fit(tb.model, tb.train, tb.valid, tb.encoder, train_cfg, seed=tb.cfg.seed)
    return tb


class TwinCache:
    """Builds each twin once per session; ``trained(name)`` also fits it once."""

    def __init__(self):
        self._fresh: dict[str, TwinBench] = {}
        self._trained: dict[str, TwinBench] = {}

    def fresh(self, name: str) -> TwinBench:
        if name not in self._fresh:
            self._fresh[name] = build_twin_bench(name)
        return self._fresh[name]

    def trained(self, name: str) -> TwinBench:
        if name not in self._trained:
            self._trained[name] = train_twin(build_twin_bench(name))
        return self._trained[name]


@pytest.fixture(scope="session")
def twins() -> TwinCache:
    return TwinCache()


def pytest_benchmark_update_machine_info(config, machine_info: dict) -> None:
    """Saved runs record the thread count: timings compare only at equal settings."""
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["torch"] = torch.__version__
