"""Turning the LLM's generated text into predictions, and predictions into target text.

The model answers as text: a class (an English word, a Chinese label string, or its index)
or a score with one decimal. Parsing is strict and never guesses: an answer that is not one
of the accepted forms is *invalid*, counted in ``invalid_rate``, and only replaced through an
explicit, reported fallback (:func:`fill_invalid`). The proxy (MSE-Adapter) maps unparseable
output to 0 silently; we do not.

What counts as "the answer" (both parsers):
1. NFKC normalisation (full-width letters, digits and punctuation become half-width).
2. Leading whitespace and blank lines are skipped (ChatGLM3 starts its reply with a newline).
3. The answer ends at the first line break or end-of-sequence marker (:data:`EOS_MARKERS`).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from egmf_core.config import INVALID_FALLBACKS as FALLBACKS
from egmf_core.data.dataset import DatasetSpec
from egmf_core.metrics import acc2_positive


class AnswerError(ValueError):
    """A parsing or fallback request that cannot work; the message names the argument."""


# Special tokens that may survive decoding without skip_special_tokens (Llama 2/3, GLM, GPT-2,
# Qwen, SentencePiece); the answer ends at the first one.
EOS_MARKERS = ("</s>", "<eos>", "<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<|im_end|>",
               "<|user|>", "<|observation|>", "<|assistant|>")
QUOTES = "\"'`“”‘’「」『』《》〈〉«»"  # stripped from both ends of a label answer
TRAILING_PUNCT = ".,;:!?。，、；：！？…~"  # stripped from the end of a label answer (after NFKC)

# Minimal alias table: alias -> canonical English label. Used only when the canonical label
# is in the dataset's label set and the alias is not itself one of its labels. It covers the
# words of CHERMA's release (happy, sad, neutral) and the common Chinese synonyms a
# Chinese-instructed LLM produces for CHERMA's labels.
LABEL_ALIASES: dict[str, str] = {
    "happy": "happiness", "开心": "happiness", "快乐": "happiness",
    "sad": "sadness", "伤心": "sadness", "难过": "sadness",
    "neutral": "calm", "中性": "calm",
    "生气": "anger",
    "害怕": "fear",
}

_UNICODE_MINUS = "\u2212"
# First signed decimal number: "+1.5", "-0.6", "2", ".5", "-.5", "2.", "1e-1". A sign written
# in Chinese directly before the digits ("负0.6", "正0.6") counts as a sign.
_NUMBER = re.compile(r"([+\-负正]?)((?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+\-]?[0-9]+)?)")
_INDEX = re.compile(r"[0-9]+")


def answer_text(text: str) -> str:
    """The answer part of a generated text: NFKC, leading blank lines skipped, cut at the first
    line break or end-of-sequence marker, surrounding whitespace stripped.

    >>> answer_text("\\n  Joy.\\nanger")
    'Joy.'
    >>> answer_text("－１．５</s>")
    '-1.5'
    """
    text = unicodedata.normalize("NFKC", text).lstrip()
    for marker in EOS_MARKERS:
        text = text.split(marker, 1)[0]
    lines = text.splitlines()
    return lines[0].strip() if lines else ""


def parse_label(text: str, spec: DatasetSpec) -> int | None:
    """The class index a generated answer names, or None if it names no single class.

    Accepted (after :func:`answer_text`, surrounding quotes and trailing punctuation removed,
    case-folded): the English label word (``spec.labels``), the Chinese label string
    (``spec.label_names_zh``), an alias from :data:`LABEL_ALIASES`, or the class index as a
    bare integer in ``[0, K)``. Anything else is None: empty text, two labels, an unknown
    word, an index out of range, a sentence around the label.

    >>> from egmf_core.data.dataset import SPECS
    >>> parse_label(" Joy.", SPECS["meld"]), parse_label("4", SPECS["meld"])
    (4, 4)
    >>> parse_label("“高兴”。", SPECS["cherma"]), parse_label("joy or anger", SPECS["meld"])
    (3, None)
    """
    _require_task(spec, "classification")
    answer = _strip_decorations(answer_text(text)).casefold()
    if not answer:
        return None
    if _INDEX.fullmatch(answer):
        index = int(answer)
        return index if index < len(spec.labels) else None
    return _label_lookup(spec).get(answer)


def parse_score(text: str, spec: DatasetSpec) -> float | None:
    """The first signed decimal number in a generated answer, clipped to ``spec.label_range``.

    Accepts stray text around the number ("score: -1.0", "1.2分"), a leading "+", a missing
    leading zero (".5", "-.5"), the unicode minus sign (U+2212), full-width digits and signs
    (via NFKC) and a Chinese sign directly before the digits ("负0.6" is -0.6). When the answer
    holds several numbers the first one wins ("1.0 or 2.0" is 1.0). None when there is no
    number (empty text, "nan", "inf", words) or the number overflows to infinity.

    >>> from egmf_core.data.dataset import SPECS
    >>> parse_score("score: −1.25分", SPECS["mosei"]), parse_score("+7", SPECS["mosei"])
    (-1.25, 3.0)
    >>> parse_score("nan", SPECS["sims_v2"]) is None
    True
    """
    _require_task(spec, "regression")
    match = _NUMBER.search(answer_text(text).replace(_UNICODE_MINUS, "-"))
    if match is None:
        return None
    sign = -1.0 if match.group(1) in ("-", "负") else 1.0
    value = sign * float(match.group(2))
    if not math.isfinite(value):
        return None
    lo, hi = spec.label_range
    return float(min(max(value, lo), hi))


@dataclass
class ParsedAnswers:
    """A batch of parsed answers. Invalid entries hold -1 (classes) or nan (scores), which
    every metric rejects, so they cannot be scored without an explicit :func:`fill_invalid`."""

    values: np.ndarray  # int64 class indices or float32 scores, shape (N,)
    valid: np.ndarray  # bool (N,): the answer parsed
    invalid_rate: float  # share of invalid answers, 0.0 for an empty batch

    @property
    def n_invalid(self) -> int:
        return int((~self.valid).sum())


def parse_answers(texts: Sequence[str], spec: DatasetSpec) -> ParsedAnswers:
    """Parse every generated text with :func:`parse_label` or :func:`parse_score` by ``spec.task``.

    >>> from egmf_core.data.dataset import SPECS
    >>> parsed = parse_answers(["joy", "4", "happy"], SPECS["meld"])
    >>> parsed.values.tolist(), parsed.valid.tolist(), round(parsed.invalid_rate, 4)
    ([4, 4, -1], [True, True, False], 0.3333)
    """
    if spec.task == "classification":
        parsed = [parse_label(t, spec) for t in texts]
        values = np.array([-1 if v is None else v for v in parsed], dtype=np.int64)
    else:
        parsed = [parse_score(t, spec) for t in texts]
        values = np.array([np.nan if v is None else v for v in parsed], dtype=np.float32)
    valid = np.array([v is not None for v in parsed], dtype=bool)
    invalid_rate = float((~valid).mean()) if len(valid) else 0.0
    return ParsedAnswers(values=values, valid=valid, invalid_rate=invalid_rate)


def fill_invalid(values: np.ndarray, valid: np.ndarray, spec: DatasetSpec, fallback: str,
                 train_labels=None, y_true=None) -> np.ndarray:
    """A copy of ``values`` with every invalid entry replaced by an explicit fallback.

    Fallbacks (which one was used must be reported next to ``invalid_rate``):

    * ``"majority"``: classification, the most frequent training class (ties: lowest index);
      regression, the training median. Needs ``train_labels``.
    * ``"mean"``: regression only, the training mean. Needs ``train_labels``.
    * ``"wrong"``: an answer guaranteed to be scored wrong. Needs ``y_true``. Classification:
      class ``(y_true + 1) % K``. Regression: the end of ``spec.label_range`` farther from
      ``y_true``; at the exact midpoint, the end on the other side of the dataset's Acc-2
      split (MOSEI 0 -> -3, SIMS-V2 0 -> 1), so Acc-2/5/7 all count it wrong.

    >>> from egmf_core.data.dataset import SPECS
    >>> fill_invalid(np.array([2, -1]), np.array([True, False]), SPECS["meld"], "wrong",
    ...              y_true=np.array([2, 6])).tolist()
    [2, 0]
    >>> fill_invalid(np.array([0.5, np.nan, np.nan]), np.array([True, False, False]),
    ...              SPECS["mosei"], "wrong", y_true=np.array([0.5, 0.0, -1.0])).tolist()
    [0.5, -3.0, 3.0]
    """
    if fallback not in FALLBACKS:
        raise AnswerError(f"fallback: unknown {fallback!r} (known: {', '.join(FALLBACKS)})")
    values, valid = np.asarray(values), np.asarray(valid, dtype=bool)
    if values.shape != valid.shape or values.ndim != 1:
        raise AnswerError(f"valid: shape {valid.shape} does not match values' {values.shape} (both 1-D)")
    classification = spec.task == "classification"
    out = values.astype(np.int64 if classification else np.float32)
    invalid = ~valid

    if fallback == "wrong":
        truth = _check_y_true(y_true, len(values), spec)
        if classification:
            out[invalid] = (truth[invalid] + 1) % len(spec.labels)
        else:
            out[invalid] = _farthest_in_range(truth[invalid], spec)
        return out

    train = _check_train_labels(train_labels, spec)
    if classification:
        if fallback == "mean":
            raise AnswerError(f"fallback: 'mean' is undefined for classification dataset {spec.name!r}")
        out[invalid] = int(np.bincount(train, minlength=len(spec.labels)).argmax())
    else:
        out[invalid] = float(np.median(train) if fallback == "majority" else np.mean(train))
    return out


def format_target(value, spec: DatasetSpec, class_target: str = "word") -> str:
    """The exact text the model is trained to produce for a label.

    Classification: the English label word (MELD), the Chinese label string for a Chinese
    dataset with Chinese names (CHERMA), or with ``class_target="index"`` the index as text.
    Regression: the score clipped to ``spec.label_range`` with exactly one decimal, rounded
    to the nearest one-decimal value, with no negative zero ("-1.3", "0.0", "2.0").
    :func:`parse_label` / :func:`parse_score` read every output back to the same value.

    >>> from egmf_core.data.dataset import SPECS
    >>> format_target(4, SPECS["meld"]), format_target(3, SPECS["cherma"])
    ('joy', '高兴')
    >>> format_target(-0.04, SPECS["mosei"]), format_target(-3.7, SPECS["mosei"])
    ('0.0', '-3.0')
    """
    if spec.task == "classification":
        index = _check_index(value, spec)
        return label_strings(spec, class_target)[index]
    score = float(value)
    if not math.isfinite(score):
        raise AnswerError(f"value: score must be finite, got {value!r}")
    lo, hi = spec.label_range
    text = f"{min(max(score, lo), hi):.1f}"
    return "0.0" if text == "-0.0" else text


def label_strings(spec: DatasetSpec, class_target: str = "word") -> list[str]:
    """The target text of every class in index order (the candidates for label scoring).

    >>> from egmf_core.data.dataset import SPECS
    >>> label_strings(SPECS["cherma"])[:3], label_strings(SPECS["meld"], "index")[:3]
    (['愤怒', '厌恶', '恐惧'], ['0', '1', '2'])
    """
    _require_task(spec, "classification")
    if class_target == "index":
        return [str(i) for i in range(len(spec.labels))]
    if class_target != "word":
        raise AnswerError(f"class_target: expected 'word' or 'index', got {class_target!r}")
    if spec.language == "zh" and spec.label_names_zh:
        return list(spec.label_names_zh)
    return list(spec.labels)


# ---- helpers ------------------------------------------------------------------------------

def _strip_decorations(answer: str) -> str:
    """Remove surrounding quotes and trailing punctuation until nothing changes."""
    previous = None
    while answer != previous:
        previous = answer
        answer = answer.strip().strip(QUOTES).rstrip(TRAILING_PUNCT)
    return answer


def _normal(word: str) -> str:
    return unicodedata.normalize("NFKC", word).strip().casefold()


@lru_cache(maxsize=None)
def _label_lookup(spec: DatasetSpec) -> dict[str, int]:
    """Normalised accepted string -> class index; labels take precedence over aliases."""
    table: dict[str, int] = {}
    for names in (spec.labels, spec.label_names_zh):
        for index, name in enumerate(names):
            table[_normal(name)] = index
    for alias, canonical in LABEL_ALIASES.items():
        if canonical in spec.labels:
            table.setdefault(_normal(alias), spec.labels.index(canonical))
    return table


def _require_task(spec: DatasetSpec, task: str) -> None:
    if spec.task != task:
        raise AnswerError(f"spec: dataset {spec.name!r} is {spec.task}, this needs {task}")


def _check_index(value, spec: DatasetSpec) -> int:
    try:
        integral = not isinstance(value, (bool, np.bool_)) and float(value).is_integer()
    except (TypeError, ValueError):
        integral = False
    if not integral:
        raise AnswerError(f"value: class index must be an integer, got {value!r}")
    index = int(value)
    if not 0 <= index < len(spec.labels):
        raise AnswerError(f"value: class index {index} outside [0, {len(spec.labels)}) for {spec.name!r}")
    return index


def _check_train_labels(train_labels, spec: DatasetSpec) -> np.ndarray:
    if train_labels is None:
        raise AnswerError("train_labels: required by the 'majority' and 'mean' fallbacks")
    train = np.asarray(train_labels)
    if train.ndim != 1 or train.size == 0:
        raise AnswerError(f"train_labels: expected a non-empty 1-D array, got shape {train.shape}")
    if not np.all(np.isfinite(train.astype(np.float64))):
        raise AnswerError("train_labels: contains NaN or inf")
    if spec.task == "classification":
        train = train.astype(np.int64)
        if train.min() < 0 or train.max() >= len(spec.labels):
            raise AnswerError(f"train_labels: class indices outside [0, {len(spec.labels)})")
    return train.astype(np.float64) if spec.task == "regression" else train


def _check_y_true(y_true, n: int, spec: DatasetSpec) -> np.ndarray:
    if y_true is None:
        raise AnswerError("y_true: required by the 'wrong' fallback")
    truth = np.asarray(y_true)
    if truth.shape != (n,):
        raise AnswerError(f"y_true: shape {truth.shape} does not match values' ({n},)")
    if not np.all(np.isfinite(truth.astype(np.float64))):
        raise AnswerError("y_true: contains NaN or inf")
    if spec.task == "classification":
        truth = truth.astype(np.int64)
        if n and (truth.min() < 0 or truth.max() >= len(spec.labels)):
            raise AnswerError(f"y_true: class indices outside [0, {len(spec.labels)})")
    return truth


def _farthest_in_range(truth: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """The end of the label range farther from each true score (Acc-2 side breaks ties)."""
    lo, hi = spec.label_range
    mid = (lo + hi) / 2
    t = np.clip(truth.astype(np.float64), lo, hi)
    on_mid = t == mid
    take_lo = t > mid
    if on_mid.any():
        take_lo[on_mid] = acc2_positive(spec.name, t[on_mid])
    return np.where(take_lo, lo, hi)
