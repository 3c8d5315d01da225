"""Prompt templates per task and language: the text around the pseudo tokens.

The paper wraps the pseudo tokens as ``I_wrapped = [E_prefix; T_pseudo; E_suffix; P_task]``
but does not publish its wording. These templates follow the closest public design [P]:
the prefix announces the multimodal features, the suffix carries the utterance (when
``model.text_in_prompt`` and the text modality are on), and the task prompt names the label set
with indices (classification) or the score range (regression), in the dataset's language.
The exact strings are an assumption listed in every report.
"""

from __future__ import annotations

from dataclasses import dataclass

from egmf_core.data.dataset import DatasetSpec


@dataclass(frozen=True)
class PromptParts:
    """The three text pieces around T_pseudo; the utterance slot is filled per sample."""

    prefix: str  # E_prefix
    suffix: str  # E_suffix, with "{text}" where the utterance goes
    task: str  # P_task, ends where the answer begins


_PREFIX = {"en": "Multimodal features:", "zh": "多模态特征："}
_SUFFIX = {"en": ' Utterance: "{text}".', "zh": "话语：“{text}”。"}


def _label_list(spec: DatasetSpec) -> str:
    names = spec.label_names_zh if spec.language == "zh" and spec.label_names_zh else spec.labels
    sep = "，" if spec.language == "zh" else ", "
    return sep.join(f"{i} {n}" for i, n in enumerate(names))


def prompt_parts(spec: DatasetSpec) -> PromptParts:
    """The prompt pieces for a dataset's task and language."""
    lang = spec.language
    if spec.task == "classification":
        if lang == "zh":
            task = f"说话人表达了哪种情绪？选项：{_label_list(spec)}。答案："
        else:
            task = f" Which emotion does the speaker express? Options: {_label_list(spec)}. Answer:"
    else:
        lo, hi = spec.label_range
        if lang == "zh":
            task = f"请给出情感分数（{lo:.1f}到{hi:.1f}，保留一位小数）。答案："
        else:
            task = f" Rate the sentiment from {lo:.1f} to {hi:.1f} with one decimal. Answer:"
    return PromptParts(prefix=_PREFIX[lang], suffix=_SUFFIX[lang], task=task)


def answer_prefix(spec: DatasetSpec) -> str:
    """What separates the prompt from the answer: a space in English, nothing in Chinese."""
    return " " if spec.language == "en" else ""
