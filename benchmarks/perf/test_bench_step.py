"""A full training step per tiny twin, through the one training loop (egmf_core.train.fit).

Each round is ``fit`` for STEPS optimizer steps at the smoke profile's settings (batch 16, LoRA
r 8, d_h 64) on the synthetic MELD twin, ending with one validation pass over VALID_SAMPLES
samples; ``extra_info`` carries fit's own per-step time (collate + forward + backward + clip +
AdamW + schedule, without the validation pass) and samples/s.
"""

from __future__ import annotations

import dataclasses

import pytest

from benchmarks.perf.conftest import TWINS
from egmf_core.batching import EncodedSplit
from egmf_core.config import apply_overrides

STEPS = 10
VALID_SAMPLES = 8


def head(enc: EncodedSplit, n: int) -> EncodedSplit:
    """The first n samples of an encoded split."""
    return dataclasses.replace(
        enc, utterance_ids=enc.utterance_ids[:n], prompt_ids=enc.prompt_ids[:n], pseudo_start=enc.pseudo_start[:n],
        answer_ids=enc.answer_ids[:n], audio=enc.audio[:n], audio_lengths=enc.audio_lengths[:n],
        vision=enc.vision[:n], vision_lengths=enc.vision_lengths[:n], labels=enc.labels[:n])


@pytest.mark.parametrize("twin", TWINS)
def test_training_steps(benchmark, twins, twin):
    from egmf_core.train import fit

    tb = twins.fresh(twin)
    cfg = apply_overrides(tb.cfg, {"train.max_steps": STEPS, "train.eval_every": STEPS}).train
    valid = head(tb.valid, VALID_SAMPLES)

    def run():
        return fit(tb.model, tb.train, valid, tb.encoder, cfg, seed=tb.cfg.seed)

    result = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert result.steps == STEPS
    benchmark.extra_info.update(steps_per_round=STEPS, batch_size=cfg.batch_size,
                                step_time_s=result.step_time_s, samples_per_s=result.samples_per_s)


@pytest.mark.parametrize("twin", TWINS)
def test_step_dispatch(benchmark, twin):
    """aten operators and host reads (a GPU sync each) per training step: the step reads nothing
    back; the loop reads the loss once per ``train.log_every`` steps (benchmarks/perf/dispatch.py;
    before/after in reports/smoke/step_dispatch.md)."""
    from benchmarks.perf.dispatch import measure

    result = benchmark.pedantic(lambda: measure(twin, steps=5), rounds=1, iterations=1)
    assert 0 < result["aten_ops_per_step"] < 20_000
    assert result["host_reads_per_step"] < 1  # was 2 per step before the loss was read back in windows
    benchmark.extra_info.update(result)
