"""Every choice the suite makes where the paper is silent, as plain sentences for the reports.

Most entries are read from ``egmf_core/config.py``: each dataclass field whose trailing comment
carries ``[C]`` (our choice) or ``[P]`` (taken from the proxy, MSE-Adapter) becomes one sentence
naming the field and its default. The source is parsed (``ast`` + ``tokenize``), never imported,
so this module stays free of torch. Choices that are not config fields are written by hand below.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

CONFIG_SECTIONS = {"ModelConfig": "model", "TrainConfig": "train", "DataConfig": "data"}
SOURCE_TAGS = {
    "S": "from the paper's summary",
    "C": "our choice: neither the paper nor the proxy states it",
    "P": "from the proxy, MSE-Adapter: the paper does not state it",
    "B": "from the baseline's own paper or implementation (TFN: Zadeh et al. 2017, MMSA)",
}
# Fields whose one-line comment is too terse to stand alone in a report: a fuller sentence.
CLEARER = {
    "model.d_h": "Fusion width d_h",
    "model.method": "Which model: EGMF, or a baseline of the main tables (\"mse_adapter\": MSE-Adapter's "
                    "plugin in EGMF's place, same prompt, frozen LLM and loop; \"tfn\": TFN, no LLM)",
    "model.prompt_format": "Prompts are raw text (\"raw\"), even for the chat models Llama-3-Instruct and "
                           "GLM-4-chat; \"chat\" wraps pseudo tokens and utterance in the tokenizer's chat "
                           "template as the user turn, the answer as the assistant turn",
    "model.beta_mode": "The residual weight beta_i is learned, sigmoid(Linear([f_fusion; w])); "
                       "\"fixed\" sets it to 1",
    "train.fusion_lr": "Learning rate of EGMF's own modules (unset = train.lr)",
    "train.max_new_tokens_cls": "New tokens generated for a class answer (covers the longest label)",
    "train.max_new_tokens_reg": "New tokens generated for a score answer (\"-2.5\" plus end of sequence)",
    "train.invalid_fallback": "What the metric uses in place of an unparseable answer "
                              "(majority class or mean score; \"wrong\" counts it as an error)",
    "model.av_encoder": "The AudioVisualEncoder is a per-frame projection with attention pooling "
                        "over valid frames (alternatives: mean_pool, gru)",
    "model.dropout": "Dropout in the fusion and expert modules",
    "model.lora_r": "LoRA rank",
    "model.lora_alpha": "LoRA scaling alpha",
    "model.lora_dropout": "LoRA dropout",
    "train.lr": "Learning rate (AdamW)",
    "train.weight_decay": "AdamW weight decay",
    "train.adam_eps": "AdamW epsilon",
    "train.grad_clip": "Gradient-norm clipping",
    "train.batch_size": "Training batch size",
    "train.eval_batch_size": "Evaluation batch size (no effect on results)",
    "train.epochs": "Epoch cap; early stopping usually ends sooner",
    "train.patience": "Early-stopping patience: 8 (classification) or 10 (regression) "
                      "evaluations without improvement of the key metric when unset",
}
_TAG = re.compile(r"\[(C|P|S|B)\]")

# Choices outside the config dataclasses, in plain sentences.
HAND_WRITTEN: tuple[str, ...] = (
    "MELD's headline number disagrees between sources: the seed summary gives F1 87.30, the "
    "leaderboard weighted F1 65.57 (the usual MELD range); reports show both, each with its source.",
    "The paper does not state MOSEI's F1 convention (has-0 or non-0); both are computed "
    "(f1_has0, f1_non0) and the table file says which one the paper value is compared with.",
    "The paper's table numbering could not be read; the numbers in ablations/table_numbers.toml "
    "are a best guess.",
    "Unparseable LLM answers are counted (invalid_rate, shown per row) and replaced by the "
    "configured fallback (train.invalid_fallback) only when computing the metric; they are never "
    "silently mapped to a class.",
    "Checkpoints and settings are selected on the validation split only (train.select_on='valid'); "
    "the test split is evaluated once, at the selected step.",
    "The smoke profile's data are synthetic, with planted structure: text carries the strongest "
    "signal (its cue misleads or is missing on 25% of samples), audio shows the true label on 50% "
    "of samples and visual on 30% (egmf_core/data/synth.py); its models are "
    "tiny and randomly initialised, trained 400 steps on 480 samples, so smoke numbers are never "
    "compared with the paper's.",
    "Cell verdicts: 'held' when |ours - paper| <= max(1 std over seeds, 0.5 points), 'within "
    "tolerance' when <= max(2 std, 2 points) (0.005 and 0.02 for MAE and Corr), otherwise 'did "
    "not hold'; every comparison reads the metric's direction (MAE is lower-is-better).",
    "The gate's layers are not specified: GateNetwork is Linear(d_h, K) + softmax (w_i is a "
    "distribution over experts) and the second-stage MLP is Linear -> GELU -> Linear with hidden "
    "width d_h (egmf_core/gating.py; not a config field).",
    "Gating collapse is declared when at least 95% of samples have normalised entropy above 0.98 "
    "(alpha near uniform) or one expert's alpha above 0.95 (a hard selector); the paper names the "
    "failure but gives no threshold.",
    "Paired comparisons and claims use the seeds present in both rows (matched seeds, n shown; the "
    "means beside a claim are matched means): mean delta, 95% Student-t interval and paired t-test, "
    "Holm-corrected within a table; a percentile bootstrap only from 10 pairs on; fewer than 3 pairs "
    "give no interval or p-value ('too few seeds').",
    "A claim is 'held' when the whole 95% interval of its paired delta lies where the claim wants it, "
    "'did not hold' when it lies wholly outside, 'inconclusive' when it straddles the boundary.",
    "Eq. 1-2 let only text query audio/visual, while the seed summary calls the attention "
    "'bidirectional': model.fusion_direction='text_queries' (default) follows the equations; "
    "'bidirectional' first lets the audio/visual vectors attend to the text (egmf_core/fusion.py).",
    "Experts differ only in bottleneck width and activation and all read the same pooled f_fusion: "
    "their local / semantic / global roles in the paper are names only (no variant gives them "
    "distinct inputs).",
    "Test-set sampling uncertainty: each run stores a 95% percentile bootstrap of its key metric "
    "over the test samples (1,000 resamples, fixed RNG seed; egmf_core/uncertainty.py), shown "
    "beside the spread over seeds.",
    "Each expert is a bottleneck LayerNorm -> Linear(d_h, d_h/ratio) -> activation -> Linear(d_h/ratio, "
    "d_h); the paper gives only the ratios and activations (model.expert_ratio, model.expert_activation).",
    "Eq. 1-2: queries, keys and Z_cross are LayerNormed before each attention, residuals as written, "
    "no feed-forward block; f_fusion is the mean over the utterance's valid tokens (egmf_core/fusion.py).",
    "Removing text replaces H_text by one learned query vector in the fusion and removes the "
    "utterance from the prompt (model.modalities without 'text').",
    "Prompt wording (egmf_core/prompts.py): 'Multimodal features:' [T_pseudo] 'Utterance: \"...\"' "
    "then the label list with indices or the score range, in the dataset's language; targets are "
    "the label word (Chinese for CHERMA) or the score with one decimal, then end-of-sequence.",
    "Answers are decoded greedily (train.eval_mode='generate'); label scoring is greedy decoding "
    "restricted to the label set, so it returns generation's answer wherever that answer is valid. "
    "Validation passes use the same mode as the test unless train.valid_eval_mode says otherwise "
    "(each report states the modes its runs used).",
    "Regression gating statistics group samples as negative / neutral / positive, neutral being "
    "|y| <= 0.5 (MOSEI) or 0.1 (SIMS-V2), the usual Acc-3 bands.",
    "Baselines (model.method; egmf_core/baselines.py): MSE-Adapter is re-implemented from its paper's "
    "abstract, public summaries of its method and its repository's configs (read through public forks), "
    "not run from its code; it sits where EGMF's fusion sits, with EGMF's prompt, answer parsing, metrics "
    "and training loop, the LLM frozen and no LoRA (its row sets model.lora=false). MSE-Adapter's own "
    "published numbers were not found in a readable source: no paper values.",
    "TFN is the suite's own implementation (egmf_core/tfn.py), not MMSA's: MMSA 2.2.1 installs under our pins "
    "and its TFN runs offline, but it takes the pickles' 768-wide text feature arrays (our Split drops them; "
    "MELD/CHERMA's files have none) and time-averaged audio/vision. Ours learns a token embedding over the "
    "backbone's tokenizer ids (no GloVe/BERT weights: a weaker text input than the paper's, so our TFN is a "
    "lower bound), averages audio/vision over valid frames only, regresses with L1 (MOSEI, SIMS-V2) or "
    "classifies with cross-entropy (MELD, CHERMA), and is scored on its own predictions (eval mode "
    "'direct': no answers to parse). It trains in EGMF's loop (AdamW, cosine, EGMF's batch size and "
    "seeds) at lr 5e-3 (MMSA's); it loads the tokenizer, never the LLM. Its paper values are MMSA's TFN "
    "runs (MOSEI: results/result-stat.md; SIMS-V2: PR #80, commit 21456e9); none for MELD or CHERMA.",
    "Smoke profile: the baselines' widths are shrunk like EGMF's (MSE-Adapter d_mix 64; TFN text 64/32/32, "
    "audio and visual 16, inference 32: profiles.SMOKE_BASELINE_MODEL); the paper profile keeps the papers' "
    "widths. A frozen tiny twin without LoRA answers mostly unparseably in 400 steps (as EGMF's LoRA-off "
    "rows do), so smoke MSE-Adapter rows read 'not comparable'.",
    "Tiny twins (smoke) draw the frozen output layer with std 0.4 instead of 0.02: a random head "
    "with std 0.02 at width 64 caps logit gaps near 2 and no answer could be learned.",
)


def config_path() -> Path:
    """Where egmf_core/config.py lives, found without importing (and so executing) it."""
    spec = importlib.util.find_spec("egmf_core.config")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("egmf_core/config.py: module not found on sys.path")
    return Path(spec.origin)


@dataclass(frozen=True)
class FieldDoc:
    """One field of the config dataclasses, as config.py documents it."""

    name: str  # "train.lr"
    tag: str  # "S" | "P" | "C" | "" (untagged: a setting, not a reading of the paper)
    default: str  # the default's source text, e.g. "5e-5", "list(MODALITIES)"
    text: str  # what the field is, in words


def config_fields(source: str) -> list[FieldDoc]:
    """Every field of the config dataclasses in ``source``, with the tag of its comment (on its
    own lines or on the comment lines right above it)."""
    comments = _line_comments(source)
    lines = source.splitlines()
    out: list[FieldDoc] = []
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.ClassDef) and node.name in CONFIG_SECTIONS):
            continue
        section = CONFIG_SECTIONS[node.name]
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                continue
            above = item.lineno - 1
            while above >= 1 and lines[above - 1].strip().startswith("#"):
                above -= 1
            span = range(above + 1, (item.end_lineno or item.lineno) + 1)
            comment = " ".join(comments.get(ln, "") for ln in span)
            tags = _TAG.findall(comment)
            field_name = f"{section}.{item.target.id}"
            text = CLEARER.get(field_name) or re.sub(r"\s+", " ", _TAG.sub("", comment)).strip(" ;:,-")
            text = f"{text[0].upper()}{text[1:]}" if text else f"Default of {field_name}"
            out.append(FieldDoc(field_name, tags[0] if tags else "", _default_source(source, item.value), text))
    return out


def config_assumptions(source: str) -> list[str]:
    """One sentence per [C]/[P]-tagged field of the config dataclasses in ``source``."""
    return [f"{f.text} (`{f.name}` = {f.default}); {SOURCE_TAGS[f.tag]}."
            for f in config_fields(source) if f.tag in ("C", "P")]


SOURCE_NAMES = {"S": "paper", "P": "proxy", "C": "ours", "B": "baseline", "": "setting"}


def field_defaults(source: str) -> dict[str, object]:
    """Field name -> default value, evaluated from the source text without importing it
    (literals, and ``list(NAME)`` of a module-level tuple); unevaluable defaults keep their text."""
    constants = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    out: dict[str, object] = {}
    for f in config_fields(source):
        m = re.fullmatch(r"list\((\w+)\)", f.default)
        try:
            out[f.name] = list(constants[m[1]]) if m else ast.literal_eval(f.default)
        except (KeyError, ValueError, SyntaxError):
            out[f.name] = f.default
    return out


def as_run_rows(configs: list[dict], source: str | None = None) -> list[tuple[str, str, str, str]]:
    """(field, value as run, source, default when a run differs from it) for every documented
    field: tagged fields always, untagged settings only when some run changed them.

    ``configs`` are the runs' stored RunConfig dicts; a value that differs between runs shows
    as a range (numbers) or a list of the values seen.
    """
    source = source if source is not None else config_path().read_text(encoding="utf-8")
    defaults = field_defaults(source)
    rows = []
    for f in config_fields(source):
        section, name = f.name.split(".", 1)
        seen = [c.get(section, {}).get(name, _ABSENT) for c in configs]
        values = [v for v in seen if v is not _ABSENT]
        if not values:
            continue
        default = defaults.get(f.name)
        differs = any(_canon(v) != _canon(default) for v in values)
        if not f.tag and not differs:
            continue
        rows.append((f.name, _describe(values), SOURCE_NAMES[f.tag], _show(default) if differs else ""))
    return rows


_ABSENT = object()


def _canon(value: object) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)


def _show(value: object) -> str:
    """A value as a report prints it; an absolute path keeps only its last two parts."""
    if isinstance(value, str) and (value.startswith("/") or value.startswith("~") or re.match(r"^[A-Za-z]:\\", value)):
        return ".../" + "/".join(Path(value).parts[-2:])
    return _canon(value) if not isinstance(value, str) else value


def _describe(values: list) -> str:
    unique = sorted({_canon(v): v for v in values}.items())
    if len(unique) == 1:
        return _show(unique[0][1])
    plain = [v for _, v in unique]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in plain):
        return f"{_show(min(plain))} to {_show(max(plain))} (varies by run)"
    shown = [_show(v) for v in plain]
    return " / ".join(shown[:4]) + (f" and {len(shown) - 4} more" if len(shown) > 4 else "") + " (varies by run)"


def _line_comments(source: str) -> dict[int, str]:
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    return comments


def _default_source(source: str, value: ast.expr | None) -> str:
    if value is None:
        return "required"
    # field(default_factory=lambda: {...}) -> the lambda's body
    if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "field":
        for kw in value.keywords:
            if kw.arg == "default_factory" and isinstance(kw.value, ast.Lambda):
                return ast.get_source_segment(source, kw.value.body) or "?"
            if kw.arg == "default":
                return ast.get_source_segment(source, kw.value) or "?"
    return ast.get_source_segment(source, value) or "?"
