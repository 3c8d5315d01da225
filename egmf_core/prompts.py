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

from egmf_core.config import ConfigError
from egmf_core.data.dataset import DatasetSpec

# Where T_pseudo and the utterance go in a rendered chat template: characters no template holds.
PSEUDO_SLOT, TEXT_SLOT = "\x00T_pseudo\x00", "\x00utterance\x00"


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


def chat_prompt_pieces(tokenizer, parts: PromptParts, text_in_prompt: bool) -> list[str]:
    """``model.prompt_format = "chat"``: the text around T_pseudo (and the utterance) in the
    tokenizer's chat template: ``[before T_pseudo, after it (, after the utterance)]``.

    The user turn holds E_prefix, T_pseudo, E_suffix(utterance) and P_task; the generation
    prompt (the assistant turn's header) follows, so the answer is the assistant's turn.
    """
    if not getattr(tokenizer, "chat_template", None):
        where = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
        raise ConfigError(f"config field model.prompt_format='chat': {where} has no chat template "
                          "(tokenizer_config.json chat_template); use 'raw'")
    suffix = parts.suffix.replace("{text}", TEXT_SLOT) if text_in_prompt else ""
    user = parts.prefix + PSEUDO_SLOT + suffix + parts.task
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True)
    head, rest = rendered.split(PSEUDO_SLOT)
    return [head, *rest.split(TEXT_SLOT)]
