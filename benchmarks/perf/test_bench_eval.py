"""An evaluation batch per tiny twin: free generation (the paper's way) vs label scoring.

Each twin is first trained for the smoke profile's 150 steps on the synthetic MELD twin so that
generation answers with labels. The benchmarks time one batch of ``eval_batch_size`` (32) test
samples per mode; the last test measures the speed-up over the whole test split in one run,
checks that scoring picks the generated label wherever generation is valid, and records both
in reports/smoke/cost.json (not a timed assertion: the target is 3x, the number is what it is).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
import torch

from benchmarks.perf import overhead
from benchmarks.perf.conftest import TWINS, TwinBench
from egmf_core.answers import parse_answers
from egmf_core.batching import collate
from egmf_core.decoding import generate_answers, score_labels

REPEATS = 5  # interleaved repetitions of the whole test split per mode (median)
SPEEDUP_TARGET = 3.0
WHY_BELOW_TARGET = (
    "Why the target is not met here: every MELD label is one token plus end-of-sequence in all three twins' "
    "tokenizers, so scoring is one forward pass over the prompt, and a trained model's generation is that same "
    "prompt pass plus one single-token decoding step before every row has ended (generation stops early). The "
    "prompt pass (32 rows x ~90 tokens) dominates both (compare 'prefill' with 'generate': the step after it adds "
    "a fraction of the prompt pass); score_labels keeps only the last position's logits and skips the KV cache "
    "when the first token decides, so the two share the same prompt pass. Scoring can only save the decoding steps after the "
    "prompt, so it reaches 3x only when generation runs 3 prompt-equivalents: answers of many tokens, or hardware "
    "where each decoding step costs about as much as the prompt pass (large models at small batch on a GPU)."
)


def collated_test_batches(tb: TwinBench) -> list[dict]:
    """The test split as left-padded evaluation batches of eval_batch_size."""
    size, n = tb.cfg.train.eval_batch_size, len(tb.test)
    return [collate(tb.test, range(s, min(s + size, n)), with_answer=False)
            for s in range(0, n, size)]


def generate_texts(tb: TwinBench, batch: dict) -> list[str]:
    return generate_answers(tb.model, batch, tb.tokenizer, tb.cfg.train.max_new_tokens_cls)


def score(tb: TwinBench, batch: dict) -> np.ndarray:
    return score_labels(tb.model, batch, tb.encoder.label_answers).numpy()


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("mode", ["generate", "score"])
def test_evaluation_batch(benchmark, twins, twin, mode):
    """One test batch answered by free generation (texts) or label scoring (a class per sample)."""
    tb = twins.trained(twin)
    tb.model.eval()
    batch = collated_test_batches(tb)[0]
    answers = benchmark(generate_texts if mode == "generate" else score, tb, batch)
    assert len(answers) == len(batch["input_ids"])


def prefill_only(tb: TwinBench, batch: dict) -> list[str]:
    """Generation stopped after its first token: the prompt's forward pass plus generate()'s overhead."""
    return generate_answers(tb.model, batch, tb.tokenizer, 1)


def llm_forwards(tb: TwinBench, fn) -> int:
    """How many forward passes of the LLM ``fn`` makes."""
    calls = []
    handle = tb.model.llm.get_base_model().register_forward_hook(lambda *_: calls.append(1))
    try:
        fn()
    finally:
        handle.remove()
    return len(calls)


def measure_modes(tb: TwinBench, repeats: int = REPEATS) -> dict:
    """Seconds per batch of each mode (median over interleaved passes) and the agreement of their answers.

    ``prefill`` (generation cut after one token) splits generation's time into the prompt's forward
    pass and the decoding steps after it.
    """
    tb.model.eval()
    batches = collated_test_batches(tb)
    runs = {"generate": lambda b: generate_texts(tb, b), "score": lambda b: score(tb, b),
            "prefill": lambda b: prefill_only(tb, b)}
    times = {mode: [] for mode in runs}
    texts, chosen = [], []
    for r in range(repeats):
        for mode in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            t0 = time.perf_counter()
            out = [runs[mode](b) for b in batches]
            times[mode].append((time.perf_counter() - t0) / len(batches))
            if r == 0 and mode != "prefill":
                (texts if mode == "generate" else chosen).extend(out)
    parsed = parse_answers([t for batch in texts for t in batch], tb.spec)
    scored = np.concatenate(chosen)
    valid = parsed.valid
    gen_s, score_s = statistics.median(times["generate"]), statistics.median(times["score"])
    return {
        "twin": tb.name,
        "batch": tb.cfg.train.eval_batch_size,
        "batches": len(batches),
        "samples": int(len(scored)),
        "generate_s": gen_s,
        "score_s": score_s,
        "prefill_s": statistics.median(times["prefill"]),
        "speedup": gen_s / score_s,
        "forwards_generate": llm_forwards(tb, lambda: generate_texts(tb, batches[0])),
        "forwards_score": llm_forwards(tb, lambda: score(tb, batches[0])),
        "valid_share": float(valid.mean()),
        "identical_where_valid": bool(np.array_equal(parsed.values[valid], scored[valid])),
        "disagreements": int((parsed.values[valid] != scored[valid]).sum()),
        "max_new_tokens": tb.cfg.train.max_new_tokens_cls,
        "label_answer_tokens": [len(a) for a in tb.encoder.label_answers],
        "train_steps": tb.fit_result.steps if tb.fit_result is not None else 0,
    }


def test_scoring_is_faster_than_generation_with_identical_valid_predictions(twins, capsys):
    rows = [measure_modes(twins.trained(t)) for t in TWINS]
    note = (f"Median over {REPEATS} interleaved passes over the 80-sample test split of the synthetic MELD twin, "
            f"per batch of 32, after {rows[0]['train_steps']} training steps (smoke settings), "
            f"{torch.get_num_threads()} torch thread(s). Target: scoring at least {SPEEDUP_TARGET:g}x faster than "
            "generation. 'prefill' is generation cut after its first token; 'forwards' counts the LLM's forward "
            "passes on the first batch.")
    if any(r["speedup"] < SPEEDUP_TARGET for r in rows):
        note += " " + WHY_BELOW_TARGET
    path = overhead.record_cost("scoring_vs_generation", {"note": note, "rows": rows, "target": SPEEDUP_TARGET})
    with capsys.disabled():
        print()
        for r in rows:
            print(f"{r['twin']}: generate {1000 * r['generate_s']:.1f} ms/batch, score {1000 * r['score_s']:.1f} "
                  f"ms/batch -> {r['speedup']:.2f}x (target {SPEEDUP_TARGET:g}x: "
                  f"{'met' if r['speedup'] >= SPEEDUP_TARGET else 'NOT met'}); valid generations "
                  f"{100 * r['valid_share']:.1f}%, identical where valid: {r['identical_where_valid']}")
        print(f"(recorded in {path})")
    for r in rows:
        assert r["valid_share"] >= 0.5, f"{r['twin']}: too few valid generations to compare ({r['valid_share']:.2f})"
        assert r["identical_where_valid"], f"{r['twin']}: scoring disagrees with {r['disagreements']} valid answers"
