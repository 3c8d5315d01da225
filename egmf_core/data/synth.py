"""Synthetic twins of the four datasets, written in their real on-disk formats, with planted signal.

    python -m egmf_core.data.synth DATASET OUT_DIR [--seed S] [--size N] [--full] [--format pickle|release]

writes ``OUT_DIR/<dataset>/`` so that ``load_dataset(DATASET, OUT_DIR)`` reads it through the
same loader as the real release. Files are byte-identical for the same arguments.
Default forms: mosei and sims_v2 -> MMSA pickle; meld -> official CSV release + feature files;
cherma -> release json + .npy (``--format pickle`` writes the processed pickle for those too).

Sizes. Smoke (default): 480 / 160 / 160 samples, audio 24-40 frames, visual 16-24 frames
(CHERMA 8-16), text features 16 x 768, with the real feature dims (MOSEI 74/35, SIMS-V2 25/177,
MELD 64/64, CHERMA 1024/2048). ``--size N``: N training samples, max(8, N // 3) in valid and
test. ``--full``: the real split sizes and maximum lengths (FULL_SHAPES; CHERMA's sizes are a
guess, and its audio keeps the release's 50-frame cut in both forms). Per-sample lengths are
uniform between a fifth of the maximum and the maximum.

Planted structure (the constants below the imports; a retune is one edit):
- Each sample has a true label y: a class (MELD, CHERMA; MELD keeps its real skew, ~47%
  neutral, fear and disgust ~2.7%) or a score (MOSEI: multiples of 1/3 in [-3, 3], ~20%
  exactly 0; SIMS-V2: multiples of 0.2 in [-1, 1]).
- TEXT carries the strongest signal: a short sentence in the dataset's language (English for
  mosei/meld, Chinese for sims_v2/cherma) of 2-4 filler words (FILLER_COUNT) plus one cue phrase, said twice (CUE_REPEATS), from y's
  lexicon (CUES: per class, or per signed intensity bucket for scores: 7 over [-3, 3] for
  MOSEI, 5 over [-1, 1] for SIMS-V2, exact 0 alone in the middle bucket; see score_bucket).
  For TEXT_CONFLICT_SHARE (25%) of samples the text disagrees with y: half of those
  (TEXT_CONFLICT_DROP_SHARE) carry no cue, the rest a cue of a random other class / bucket.
  Audio and visual always follow the true y, so fusion can beat text alone.
- AUDIO carries a weaker signal: for AUDIO_PRESENT_SHARE (50%) of samples, drawn
  independently of the text conflict, the first AUDIO_SIGNAL_DIMS dims of every valid frame are
  shifted by SHIFT times y's code (a fixed unit prototype per class; for scores, y scaled to
  [-1, 1] along a fixed direction plus a fixed "present" direction, so y = 0 differs from no
  code); the other samples' audio carries no code. Every sample also gets a per-sample offset
  (SAMPLE_NOISE) that pooling over frames cannot average away, and per-frame noise
  (FRAME_NOISE, correlated across dims: drawn in a NOISE_RANK-dim subspace). VISUAL is built
  the same way with the smaller VISUAL_PRESENT_SHARE (30%), so it is the weakest. Where a code
  is present it is clear, so a small model can learn it in a CPU-minute budget; how often it
  is present sets each modality's worth. Expected drop in accuracy of an ideal reader (text
  right 75%): removing text ~0.75 x P(no audio or visual code) = 26 points, audio
  ~0.25 x 0.5 x 0.7 = 9, visual ~0.25 x 0.3 x 0.5 = 4, before chance guesses.
  Measured with gradient-boosted probes (seed 0, 3000 train samples, test split; data/README.md
  has the table): MELD accuracy all three 0.84, drop removing text / audio / visual 0.16 /
  0.04 / 0.02; MOSEI MAE all three 0.37, drops 0.15 / 0.10 / 0.04.
- Real quirks: zero padding past each length; MOSEI audio holds -inf in its last
  NEG_INF_DIMS dims on NEG_INF_FRAME_SHARE of valid frames (the loader zeroes and counts
  them); MELD's CSVs carry code-page mojibake (``\x92`` apostrophes, double-encoded
  ``â€™``, and a dev file saved in cp1252).
- Pickle extras: ``text`` features are zeros (the suite embeds raw text with the LLM),
  ``text_bert`` holds hashed token ids, ``classification_labels`` of scores are 3-class signs
  (0 negative, 1 neutral, 2 positive), ``regression_labels`` of classes are the class index;
  SIMS-V2's ``regression_labels_T`` is the cue bucket's middle value (0 without a cue),
  ``_A`` / ``_V`` equal y. CHERMA's ``txt_label`` is the cue's class (calm without a cue).
"""

from __future__ import annotations

import argparse
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cherma_json import write_cherma_split
from .dataset import CHERMA_LABELS_ZH, MELD_LABELS, SPECS, SPLITS, MultimodalDataset, Split
from .dataset import PICKLE_NAMES as _loader_pickle_names
from .meld_csv import FEATURE_DIRS, SPLIT_FILES, write_feature_file, write_meld_csv
from .mmsa_pickle import write_mmsa_pickle

# Bump when the generated data change (signal constants, vocabulary, sizes): the smoke profile
# keeps its data under .cache/smoke-data/v<SYNTH_VERSION>, so runs on older data never count as cached.
SYNTH_VERSION = 5

# ---- planted signal: tune here --------------------------------------------------------------
TEXT_CONFLICT_SHARE = 0.25  # samples whose text cue disagrees with y (audio/visual still agree)
TEXT_CONFLICT_DROP_SHARE = 0.5  # of those: no cue at all; the rest get another class's cue
FILLER_COUNT = (2, 5)  # filler words per utterance, [low, high)
CUE_REPEATS = 2  # the cue phrase is said this many times (a tiny random-init twin must be able
#                  to find it within a CPU-minute budget; one mention among 3-7 fillers was not)
AUDIO_SIGNAL_DIMS = 8  # leading audio dims that carry y
AUDIO_PRESENT_SHARE = 0.5  # samples whose audio carries y's code (the rest: no code, noise only)
VISUAL_SIGNAL_DIMS = 8
VISUAL_PRESENT_SHARE = 0.3  # weakest modality: fewer samples show y
SHIFT = {"meld": 3.0, "cherma": 3.0, "sims_v2": 6.0, "mosei": 10.0}  # length of y's code where
#   present, in units of SAMPLE_NOISE. Scores need more, as their code must place y on a line, not
#   pick a class; MOSEI most, as its scores fill less of their range (std 1.2 in [-3, 3], SIMS-V2
#   0.6 in [-1, 1]): with 6 the tiny models drew nothing from MOSEI's audio (SYNTH_VERSION 4:
#   removing audio improved MAE by 0.031 over 5 seeds; with 10 it costs 0.10)
SAMPLE_NOISE = 1.0  # per-sample offset std on the signal dims (survives pooling over frames)
FRAME_NOISE = 1.0  # per-frame noise std on every dim ...
NOISE_RANK = 4  # ... drawn in a subspace of this many dims (see _features) ...
NOISE_REF_DIMS = 64  # ... and scaled down by sqrt(NOISE_REF_DIMS / dim) in wider features, so a
#                      frame's noise has the same length in CHERMA's 2048 dims as in MELD's 64
PROTOTYPE_SEED = 1729  # class prototypes / directions are fixed across data seeds
NEG_INF_FRAME_SHARE = 0.03  # MOSEI: share of valid audio frames holding -inf ...
NEG_INF_DIMS = 2  # ... in this many trailing dims (disjoint from the signal dims)
MOSEI_SCORE_MEAN, MOSEI_SCORE_STD, MOSEI_ZERO_SHARE = 0.3, 1.2, 0.1
SIMS_SCORE_MEAN, SIMS_SCORE_STD = 0.0, 0.6
MELD_CLASS_SHARES = (0.471, 0.121, 0.027, 0.068, 0.175, 0.027, 0.111)  # MELD train, official order
CHERMA_CLASS_SHARES = (0.15, 0.06, 0.05, 0.20, 0.30, 0.16, 0.08)  # a guess (not published)
MELD_QUIRK_SHARE = 0.5  # rows with ' or ... written with a code-page quirk

# ---- sizes ---------------------------------------------------------------------------------
SMOKE_SIZES = (480, 160, 160)  # 240 / 80 / 80 up to SYNTH_VERSION 3: too few samples for the tiny
#   models to learn audio/visual (SIMS-V2 full-model test MAE 0.30-0.35, 0.19 with 480), and
#   80-sample test splits left ablation deltas within seed noise
SMOKE_AUDIO_FRAMES = (24, 40)
SMOKE_VISUAL_FRAMES = {"mosei": (16, 24), "sims_v2": (16, 24), "meld": (16, 24), "cherma": (8, 16)}
SMOKE_TEXT_LEN = 16
TEXT_FEATURE_DIM = 768


@dataclass(frozen=True)
class FullShape:
    sizes: tuple[int, int, int]  # train, valid, test
    lengths: tuple[int, int, int]  # text, audio, visual maxima
    dims: tuple[int, int]  # d_a, d_v


FULL_SHAPES = {
    "mosei": FullShape((16326, 1871, 4659), (50, 500, 375), (74, 35)),
    "sims_v2": FullShape((2722, 647, 1034), (50, 925, 232), (25, 177)),
    "meld": FullShape((9989, 1109, 2610), (65, 157, 32), (64, 64)),
    # CHERMA: 28,717 utterances split 80/10/10 is our guess; audio keeps the release's 50-frame cut
    "cherma": FullShape((22974, 2872, 2871), (78, 50, 16), (1024, 2048)),
}
DEFAULT_FORMAT = {"mosei": "pickle", "sims_v2": "pickle", "meld": "release", "cherma": "release"}
# The file each processed twin is written to: the first name the loader looks for. (Its name
# and value are part of ``fingerprint``: keep both.)
PICKLE_NAMES = {name: names[0] for name, names in _loader_pickle_names.items()}

# ---- vocabulary ----------------------------------------------------------------------------
EN_FILLERS = (
    "i", "you", "we", "they", "he", "she", "it", "this", "that", "these", "those", "the", "a",
    "an", "so", "well", "just", "um", "like", "think", "know", "guess", "mean", "said", "told",
    "saw", "went", "came", "got", "get", "have", "had", "was", "is", "are", "were", "be", "been",
    "do", "did", "to", "of", "in", "on", "at", "with", "about", "for", "from", "and", "but", "or",
    "because", "then", "now", "today", "yesterday", "tonight", "here", "there", "movie", "film",
    "story", "actor", "scene", "ending", "music", "plot", "character", "director", "book", "show",
    "episode", "coffee", "apartment", "party", "job", "date", "phone", "door", "car", "dinner",
    "friend", "guy", "girl", "thing", "stuff", "time", "again", "maybe", "kind", "little",
    "whole", "first", "last", "week", "night", "morning", "i'm", "don't", "it's", "that's",
    "you're", "can't", "we're", "didn't", "he's", "she's", "there's", "what's", "let's", "i've",
    "wasn't", "they're", "isn't",
)
ZH_FILLERS = (
    "我", "你", "他", "她", "我们", "你们", "他们", "这个", "那个", "今天", "昨天", "明天", "现在",
    "刚才", "觉得", "知道", "就是", "然后", "可是", "但是", "因为", "所以", "还是", "已经", "一下",
    "一起", "什么", "怎么", "时候", "事情", "工作", "朋友", "家里", "电话", "吃饭", "回来", "出去",
    "说话", "看看", "其实", "如果", "应该", "可能", "需要", "东西", "地方", "公司", "老师", "妈妈",
    "爸爸", "孩子", "电影", "节目", "手机", "衣服", "晚上", "早上", "路上", "问题", "这样", "那样",
    "那么", "这么", "的", "了", "吧", "呢", "这部", "剧情", "演员", "故事", "结局", "音乐", "导演",
)
EN_PUNCT = (".", ".", "!", "?", "...")
ZH_PUNCT = ("。", "。", "！", "？")

# One lexicon per class (in spec.labels order) or per score bucket (low to high).
CUES: dict[str, tuple[tuple[str, ...], ...]] = {
    "mosei": (
        ("terrible", "worst", "hated", "disaster", "unbearable", "horrendous"),
        ("awful", "boring", "waste", "lousy", "annoying", "poorly"),
        ("disappointing", "weak", "dull", "underwhelming", "flawed", "meh"),
        ("okay", "average", "ordinary", "standard", "typical", "fine"),
        ("decent", "pleasant", "enjoyable", "solid", "nice", "likable"),
        ("good", "entertaining", "impressive", "great", "engaging", "fun"),
        ("amazing", "masterpiece", "fantastic", "brilliant", "perfect", "outstanding"),
    ),
    "meld": (  # neutral, surprise, fear, sadness, joy, disgust, anger
        ("alright", "sure", "understood", "hmm", "noted", "yeah"),
        ("wow", "whoa", "unbelievable", "seriously?", "oh my god", "no kidding"),
        ("scared", "afraid", "terrified", "nervous", "frightened", "panicking"),
        ("sad", "miss", "crying", "lonely", "heartbroken", "sorry"),
        ("happy", "yay", "wonderful", "awesome", "love", "excited"),
        ("gross", "disgusting", "yuck", "ew", "nasty", "revolting"),
        ("angry", "furious", "shut up", "hate", "mad", "ridiculous"),
    ),
    "sims_v2": (
        ("烂透了", "糟透了", "非常糟糕", "太差劲了", "一塌糊涂"),
        ("不太好", "有点失望", "差强人意", "不怎么样", "挺无聊"),
        ("还行", "一般", "普普通通", "说不上", "马马虎虎"),
        ("不错", "挺好", "满意", "还不赖", "蛮好的"),
        ("太棒了", "完美", "特别喜欢", "棒极了", "好极了"),
    ),
    "cherma": (  # anger, disgust, fear, happiness, calm, sadness, surprise
        ("气死我了", "太过分了", "混蛋", "火大", "闭嘴", "欺人太甚"),
        ("恶心", "讨厌", "受不了", "真脏", "反感", "令人作呕"),
        ("害怕", "吓死我了", "好可怕", "不敢", "发抖", "慌了"),
        ("开心", "哈哈", "真棒", "乐坏了", "好幸福", "太好了"),
        ("好的", "嗯", "知道了", "没事", "行吧", "慢慢来"),
        ("难过", "伤心", "哭了", "好想你", "心痛", "委屈"),
        ("天哪", "真的吗", "不会吧", "居然", "没想到", "竟然"),
    ),
}
CHERMA_RELEASE_LABELS_ZH = tuple("惊奇" if n == "惊讶" else n for n in CHERMA_LABELS_ZH)  # LFMIM spelling
SENTIMENT_WORDS = {"en": ("negative", "neutral", "positive"), "zh": ("消极", "中性", "积极")}
MELD_SPEAKERS = ("Chandler", "Joey", "Monica", "Phoebe", "Rachel", "Ross", "Gunther", "Janice")


def synth_vocabulary(language: str) -> list[str]:
    """Every word or phrase the generator can put in an utterance, plus label names (sorted).

    For the tiny tokenizer: ``"en"`` covers mosei + meld, ``"zh"`` covers sims_v2 + cherma.
    """
    if language not in ("en", "zh"):
        raise ValueError(f"language: {language!r} is not 'en' or 'zh'")
    words: set[str] = set(EN_FILLERS + EN_PUNCT if language == "en" else ZH_FILLERS + ZH_PUNCT)
    for name, lexicons in CUES.items():
        if SPECS[name].language == language:
            for lexicon in lexicons:
                words.update(lexicon)
    if language == "en":
        words.update(MELD_LABELS + SPECS["cherma"].labels)
    else:
        words.update(CHERMA_LABELS_ZH + CHERMA_RELEASE_LABELS_ZH)
    words.update(SENTIMENT_WORDS[language])
    return sorted(words)


# ---- generation ----------------------------------------------------------------------------
@dataclass
class TwinSplit:
    """One generated split, as the files hold it (raw: -inf kept, padded to the file's length)."""

    ids: list[str]
    text: list[str]
    labels: np.ndarray  # int64 class or float32 score (canonical)
    cue: np.ndarray  # int64 class / bucket whose cue the text carries, -1 for none
    audio: np.ndarray  # float32 (N, L_a, d_a), may hold -inf (MOSEI)
    audio_lengths: np.ndarray
    vision: np.ndarray  # float32 (N, L_v, d_v)
    vision_lengths: np.ndarray
    text_len: int  # L_t of the pickle's text features
    meta: dict[str, Any] = field(default_factory=dict)  # format-specific columns (MELD CSV)


def _rng(seed: int, name: str, split: str, stream: str) -> np.random.Generator:
    key = [seed, list(SPECS).index(name), SPLITS.index(split),
           zlib.crc32(stream.encode())]
    return np.random.default_rng(key)


def split_sizes(name: str, size: int | None, full: bool) -> tuple[int, int, int]:
    """Train/valid/test counts: ``size`` (valid/test size // 3, at least 8), else full or smoke."""
    if size is not None:
        if size < 1:
            raise ValueError(f"size: {size} must be at least 1")
        return size, max(8, size // 3), max(8, size // 3)
    return FULL_SHAPES[name].sizes if full else SMOKE_SIZES


def _n_classes(name: str) -> int:
    return len(CUES[name])


def _draw_labels(name: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if name == "mosei":
        y = np.clip(np.round(rng.normal(MOSEI_SCORE_MEAN, MOSEI_SCORE_STD, n) * 3) / 3, -3, 3)
        y[rng.random(n) < MOSEI_ZERO_SHARE] = 0.0
        return y.astype(np.float32)
    if name == "sims_v2":
        y = np.clip(np.round(rng.normal(SIMS_SCORE_MEAN, SIMS_SCORE_STD, n) * 5) / 5, -1, 1)
        return y.astype(np.float32)
    shares = np.array(MELD_CLASS_SHARES if name == "meld" else CHERMA_CLASS_SHARES)
    return rng.choice(len(shares), size=n, p=shares / shares.sum()).astype(np.int64)


def score_bucket(name: str, y: np.ndarray) -> np.ndarray:
    """Intensity bucket of a score, 0 (most negative) .. B-1 (most positive); B // 2 is exactly 0.

    Buckets keep the sign: MOSEI's 7 are [-3,-2), [-2,-1), [-1,0), {0}, (0,1], (1,2], (2,3];
    SIMS-V2's 5 are [-1,-0.5), [-0.5,0), {0}, (0,0.5], (0.5,1]. So a text cue always tells the
    sign, as an opinion word does.
    """
    half = (_n_classes(name) - 1) // 2
    width = SPECS[name].label_range[1] / half
    y = np.asarray(y, dtype=np.float64)
    magnitude = np.clip(np.ceil(np.abs(y) / width - 1e-6), 0, half)
    return (np.sign(y) * magnitude + half).astype(np.int64)


def bucket_value(name: str, bucket: np.ndarray) -> np.ndarray:
    """A bucket's middle score (0 for the neutral bucket): SIMS-V2's ``regression_labels_T``."""
    half = (_n_classes(name) - 1) // 2
    width = SPECS[name].label_range[1] / half
    k = np.asarray(bucket, dtype=np.float64) - half
    return (np.sign(k) * (np.abs(k) - 0.5) * width + 0.0).astype(np.float32)  # no -0.0


def label_code(name: str, labels: np.ndarray, modality: str, n_dims: int) -> np.ndarray:
    """(N, n_dims) unit-scale code of y: a class prototype or the scaled score times a direction."""
    rng = np.random.default_rng([PROTOTYPE_SEED, list(SPECS).index(name), modality == "audio"])
    spec = SPECS[name]
    if spec.task == "classification":
        protos = rng.standard_normal((len(spec.labels), n_dims))
        protos /= np.linalg.norm(protos, axis=1, keepdims=True)
        return protos[labels]
    # Scores: the scaled score along one direction plus a fixed "present" direction orthogonal to
    # it, so a code for y = 0 differs from no code at all (see AUDIO_PRESENT_SHARE).
    direction, present = np.linalg.qr(rng.standard_normal((n_dims, 2)))[0].T
    lo, hi = spec.label_range
    scaled = 2 * (labels.astype(np.float64) - lo) / (hi - lo) - 1
    return (scaled[:, None] * direction[None, :] + present[None, :]) / np.sqrt(2)


def _cue_classes(name: str, rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    n_classes = _n_classes(name)
    truth = labels if SPECS[name].task == "classification" else score_bucket(name, labels)
    n = len(labels)
    conflict = rng.random(n) < TEXT_CONFLICT_SHARE
    drop = rng.random(n) < TEXT_CONFLICT_DROP_SHARE
    other = (truth + rng.integers(1, n_classes, n)) % n_classes
    return np.where(conflict, np.where(drop, -1, other), truth).astype(np.int64)


def _sentences(name: str, rng: np.random.Generator, cue: np.ndarray) -> list[str]:
    english = SPECS[name].language == "en"
    fillers = EN_FILLERS if english else ZH_FILLERS
    punct = EN_PUNCT if english else ZH_PUNCT
    lexicons = CUES[name]
    n = len(cue)
    n_fill = rng.integers(FILLER_COUNT[0], FILLER_COUNT[1], n)
    fill = rng.integers(0, len(fillers), (n, 7))
    pick = rng.integers(0, 1 << 30, n)
    where = rng.random(n)
    end = rng.integers(0, len(punct), n)
    out = []
    for i in range(n):
        words = [fillers[j] for j in fill[i, : n_fill[i]]]
        if cue[i] >= 0:
            lexicon = lexicons[cue[i]]
            at = int(where[i] * (n_fill[i] + 1))
            for _ in range(CUE_REPEATS):
                words.insert(at, lexicon[pick[i] % len(lexicon)])
        out.append((" " if english else "").join(words) + punct[end[i]])
    return out


def _lengths(rng: np.random.Generator, n: int, bounds: tuple[int, int]) -> np.ndarray:
    return rng.integers(bounds[0], bounds[1] + 1, n).astype(np.int64)


def _features(name: str, rng: np.random.Generator, labels: np.ndarray, lengths: np.ndarray,
              max_len: int, dim: int, modality: str) -> np.ndarray:
    """(N, max_len, dim) float32: noise + y's code on the signal dims, zero past each length."""
    n_sig = min(dim, AUDIO_SIGNAL_DIMS if modality == "audio" else VISUAL_SIGNAL_DIMS)
    share = AUDIO_PRESENT_SHARE if modality == "audio" else VISUAL_PRESENT_SHARE
    # Frame noise lives in a NOISE_RANK-dim subspace (a fixed basis per dataset and modality), as
    # real acoustic and visual features are strongly correlated across dims. Independent noise in
    # all 1024/2048 dims made every sample a unique fingerprint that a tiny model memorised
    # (CHERMA: 95% train vs 31% validation accuracy) instead of learning the text cue.
    basis = np.random.default_rng([PROTOTYPE_SEED, list(SPECS).index(name), modality == "audio", 7]
                                  ).standard_normal((NOISE_RANK, dim)).astype(np.float32)
    basis *= np.float32(FRAME_NOISE / np.sqrt(NOISE_RANK) * np.sqrt(min(1.0, NOISE_REF_DIMS / dim)))
    x = rng.standard_normal((len(labels), max_len, NOISE_RANK), dtype=np.float32) @ basis
    present = rng.random(len(labels)) < share
    offset = SHIFT[name] * label_code(name, labels, modality, n_sig) * present[:, None]
    offset += SAMPLE_NOISE * rng.standard_normal(offset.shape)
    x[:, :, :n_sig] += offset.astype(np.float32)[:, None, :]
    x[np.arange(max_len)[None, :] >= lengths[:, None]] = 0.0
    return x


def _meld_meta(rng: np.random.Generator, labels: np.ndarray) -> dict[str, Any]:
    """Dialogue structure and the CSV's other columns for MELD's release form."""
    n = len(labels)
    dialogue, utterance = np.zeros(n, np.int64), np.zeros(n, np.int64)
    start, d = 0, 0
    while start < n:
        size = int(rng.integers(2, 13))
        stop = min(n, start + size)
        dialogue[start:stop] = d
        utterance[start:stop] = np.arange(stop - start)
        start, d = stop, d + 1
    season = rng.integers(1, 10, d + 1)[dialogue]
    episode = rng.integers(1, 25, d + 1)[dialogue]
    clock = rng.integers(0, 1200, d + 1)[dialogue] * 1000 + utterance * 4000 + rng.integers(0, 999, n)
    duration = rng.integers(800, 4000, n)
    surprise_positive = rng.random(n) < 0.5
    sentiment = []
    for label, pos in zip(labels.tolist(), surprise_positive.tolist()):
        emotion = MELD_LABELS[label]
        sentiment.append("neutral" if emotion == "neutral" else "positive" if emotion == "joy"
                         or (emotion == "surprise" and pos) else "negative")
    return {"dialogue": dialogue, "utterance": utterance, "season": season, "episode": episode,
            "start_ms": clock, "end_ms": clock + duration, "sentiment": sentiment,
            "speaker": [MELD_SPEAKERS[i] for i in rng.integers(0, len(MELD_SPEAKERS), n)],
            "quirk": rng.random(n) < MELD_QUIRK_SHARE}


def labels_and_text(name: str, seed: int, split: str, n: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A split's labels y, the class / bucket of each text cue (-1: none) and the utterances."""
    if name not in SPECS:
        raise ValueError(f"name: unknown dataset {name!r} (expected one of {sorted(SPECS)})")
    labels = _draw_labels(name, _rng(seed, name, split, "labels"), n)
    cue = _cue_classes(name, _rng(seed, name, split, "cue"), labels)
    return labels, cue, _sentences(name, _rng(seed, name, split, "text"), cue)


def generate_split(name: str, seed: int, split: str, n: int, full: bool) -> TwinSplit:
    """One split of the twin, deterministic in (name, seed, split, n, full)."""
    labels, cue, text = labels_and_text(name, seed, split, n)
    shape = FULL_SHAPES[name]
    d_a, d_v = shape.dims
    if full:
        text_len, l_a, l_v = shape.lengths
        a_bounds, v_bounds = (max(1, l_a // 5), l_a), (max(1, l_v // 5), l_v)
    else:
        text_len = SMOKE_TEXT_LEN
        a_bounds, v_bounds = SMOKE_AUDIO_FRAMES, SMOKE_VISUAL_FRAMES[name]
    rng = _rng(seed, name, split, "lengths")
    audio_lengths, vision_lengths = _lengths(rng, n, a_bounds), _lengths(rng, n, v_bounds)
    audio = _features(name, _rng(seed, name, split, "audio"), labels, audio_lengths,
                      a_bounds[1], d_a, "audio")
    if name == "mosei":
        rng = _rng(seed, name, split, "neg_inf")
        hit = (rng.random(audio.shape[:2]) < NEG_INF_FRAME_SHARE) & (
            np.arange(audio.shape[1])[None, :] < audio_lengths[:, None])
        rows, frames = np.nonzero(hit)
        audio[rows, frames, d_a - NEG_INF_DIMS:] = -np.inf
    vision = _features(name, _rng(seed, name, split, "vision"), labels, vision_lengths,
                       v_bounds[1], d_v, "vision")
    meta: dict[str, Any] = {}
    if name == "meld":
        meta = _meld_meta(_rng(seed, name, split, "meta"), labels)
        ids = [f"dia{d}_utt{u}" for d, u in zip(meta["dialogue"].tolist(), meta["utterance"].tolist())]
    elif name == "cherma":
        ids = [f"c{i:05d}" for i in range(n)]
    else:
        ids = [f"{split}{i // 4:05d}$_${i % 4}" for i in range(n)]
    return TwinSplit(ids=ids, text=text, labels=labels, cue=cue, audio=audio,
                     audio_lengths=audio_lengths, vision=vision, vision_lengths=vision_lengths,
                     text_len=text_len, meta=meta)


def canonical_split(twin: TwinSplit) -> tuple[Split, int]:
    """What a loader must return for this split (and how many -inf it replaced)."""
    neg_inf = np.isneginf(twin.audio)
    audio = np.where(neg_inf, np.float32(0), twin.audio)[:, : int(twin.audio_lengths.max())]
    vision = twin.vision[:, : int(twin.vision_lengths.max())]
    return Split(ids=list(twin.ids), text=list(twin.text), audio=np.ascontiguousarray(audio),
                 audio_lengths=twin.audio_lengths.copy(), vision=np.ascontiguousarray(vision),
                 vision_lengths=twin.vision_lengths.copy(), labels=twin.labels.copy()), int(neg_inf.sum())


def generate_twin(name: str, seed: int = 0, size: int | None = None,
                  full: bool = False) -> dict[str, TwinSplit]:
    """All three splits as the files hold them (see split_sizes for the counts)."""
    sizes = split_sizes(name, size, full)
    return {split: generate_split(name, seed, split, n, full) for split, n in zip(SPLITS, sizes)}


def generate(name: str, seed: int = 0, size: int | None = None, full: bool = False) -> MultimodalDataset:
    """The twin in memory: the arrays, texts, labels and cleaning counts that ``load_dataset``
    returns after ``write_synthetic`` with the same arguments (any format; ``source`` differs)."""
    splits, neg_inf = {}, 0
    for split, twin in generate_twin(name, seed, size, full).items():
        splits[split], count = canonical_split(twin)
        neg_inf += count
    sizes = "/".join(str(len(s)) for s in splits.values())
    return MultimodalDataset(spec=SPECS[name], **splits, source=f"synthetic {name} seed={seed} sizes={sizes}",
                             cleaning={"audio_neg_inf": neg_inf, "padding_zeroed": 0})


# ---- writing -------------------------------------------------------------------------------
def _token_ids(text: str, english: bool, length: int) -> np.ndarray:
    """BERT-like (3, length) int64: hashed token ids with [CLS]/[SEP], mask, segment ids."""
    tokens = text.split() if english else list(text)
    ids = [101] + [1000 + zlib.crc32(t.encode()) % 20000 for t in tokens][: length - 2] + [102]
    out = np.zeros((3, length), np.int64)
    out[0, : len(ids)] = ids
    out[1, : len(ids)] = 1
    return out


def pickle_split(name: str, twin: TwinSplit) -> dict[str, np.ndarray]:
    """The split as MMSA's parallel arrays."""
    spec, n = SPECS[name], len(twin.ids)
    english = spec.language == "en"
    arrays: dict[str, np.ndarray] = {
        "id": np.array(twin.ids, dtype=object),
        "raw_text": np.array(twin.text, dtype=object),
        "text": np.zeros((n, twin.text_len, TEXT_FEATURE_DIM), np.float32),
        "text_bert": np.stack([_token_ids(t, english, twin.text_len) for t in twin.text]),
        "audio": twin.audio,
        "vision": twin.vision,
        "audio_lengths": twin.audio_lengths,
        "vision_lengths": twin.vision_lengths,
    }
    if spec.task == "classification":
        arrays["regression_labels"] = twin.labels.astype(np.float32)
        arrays["classification_labels"] = twin.labels
        names = spec.labels if english else spec.label_names_zh
        arrays["annotations"] = np.array([names[k] for k in twin.labels], dtype=object)
    else:
        sign = (np.sign(twin.labels) + 1).astype(np.int64)  # 0 negative, 1 neutral, 2 positive
        arrays["regression_labels"] = twin.labels
        arrays["classification_labels"] = sign
        arrays["annotations"] = np.array([("Negative", "Neutral", "Positive")[k] for k in sign], dtype=object)
    if name == "sims_v2":
        text_value = np.where(twin.cue >= 0, bucket_value(name, twin.cue), 0)
        arrays["regression_labels_T"] = text_value.astype(np.float32)
        arrays["regression_labels_A"] = twin.labels.copy()
        arrays["regression_labels_V"] = twin.labels.copy()
    return arrays


def _ms_to_clock(ms: int) -> str:
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def _quirk(text: str, kind: str) -> str:
    if kind == "c1":  # cp1252 bytes read as latin-1 and saved as utf-8
        return text.replace("'", "\x92").replace("...", "\x85")
    if kind == "double":  # utf-8 read as cp1252 and saved as utf-8
        return text.replace("'", "\u00e2\u20ac\u2122").replace("...", "\u00e2\u20ac\u00a6")
    return text.replace("'", "\u2019").replace("...", "\u2026")  # native cp1252 characters


def write_meld_split(folder: Path, split: str, twin: TwinSplit) -> None:
    """MELD's CSV for one split (dev in cp1252, train/test in utf-8 with mojibake) + features."""
    meta = twin.meta
    encoding = "cp1252" if split == "valid" else "utf-8"
    rows = []
    for i in range(len(twin.ids)):
        text = twin.text[i]
        if meta["quirk"][i]:
            text = _quirk(text, "cp1252" if encoding == "cp1252" else ("c1", "double")[i % 2])
        rows.append({
            "Sr No.": i + 1, "Utterance": text, "Speaker": meta["speaker"][i],
            "Emotion": MELD_LABELS[twin.labels[i]], "Sentiment": meta["sentiment"][i],
            "Dialogue_ID": int(meta["dialogue"][i]), "Utterance_ID": int(meta["utterance"][i]),
            "Season": int(meta["season"][i]), "Episode": int(meta["episode"][i]),
            "StartTime": _ms_to_clock(int(meta["start_ms"][i])),
            "EndTime": _ms_to_clock(int(meta["end_ms"][i])),
        })
        write_feature_file(folder / "features" / FEATURE_DIRS[split] / f"{twin.ids[i]}.npz",
                           twin.audio[i, : twin.audio_lengths[i]],
                           twin.vision[i, : twin.vision_lengths[i]])
    write_meld_csv(folder / SPLIT_FILES[split], rows, encoding)


def write_cherma_release_split(folder: Path, split: str, twin: TwinSplit) -> None:
    stage = "dev" if split == "valid" else split  # the release's loader names the split dev
    zh = CHERMA_RELEASE_LABELS_ZH
    calm = SPECS["cherma"].labels.index("calm")
    entries = [{
        "audio_file": f"{sample_id}.wav", "video_file": f"{sample_id}.mp4", "text": twin.text[i],
        "txt_label": zh[int(twin.cue[i]) if twin.cue[i] >= 0 else calm],
        "audio_label": zh[twin.labels[i]], "visual_label": zh[twin.labels[i]],
        "video_label": zh[twin.labels[i]],
    } for i, sample_id in enumerate(twin.ids)]
    write_cherma_split(folder, stage, entries,
                       [twin.audio[i, : twin.audio_lengths[i]] for i in range(len(entries))],
                       [twin.vision[i, : twin.vision_lengths[i]] for i in range(len(entries))])


def fingerprint(name: str, seed: int = 0, size: int | None = None) -> str:
    """A short digest of what this code generates for ``name``: every module constant (the planted
    signal, vocabulary, sizes), the split sizes, and 16 training samples in full (labels, cues,
    texts, features rounded to 3 decimals, so that a different BLAS cannot flip it), which also
    covers changes to the generating functions. The smoke profile stamps its cached data with
    it, and a test pins it per SYNTH_VERSION.
    """
    import hashlib

    constants = sorted((k, v) for k, v in globals().items() if k.isupper() and not callable(v))
    twin = generate_split(name, seed, "train", 16, False)
    h = hashlib.sha256(repr((constants, split_sizes(name, size, False), twin.text, twin.ids)).encode())
    for array in (twin.labels, twin.cue, twin.audio_lengths, twin.vision_lengths):
        h.update(np.ascontiguousarray(array).tobytes())
    for array in (twin.audio, twin.vision):
        h.update(np.round(np.nan_to_num(array, neginf=-1e9).astype(np.float64), 3).tobytes())
    return h.hexdigest()[:16]


def write_synthetic(name: str, out_dir: str | Path, *, seed: int = 0, size: int | None = None,
                    full: bool = False, fmt: str | None = None) -> Path:
    """Write the twin under ``out_dir/<name>/`` in its real format; return that folder.

    ``fmt``: None (the dataset's release form), ``"pickle"`` or ``"release"`` (for mosei and
    sims_v2 the release is the pickle). Files of the same names are overwritten; other files
    are left alone, so write each form into its own ``out_dir`` (a pickle beside a release is
    the one ``load_dataset`` detects first).
    """
    if name not in SPECS:
        raise ValueError(f"name: unknown dataset {name!r} (expected one of {sorted(SPECS)})")
    fmt = fmt or DEFAULT_FORMAT[name]
    if fmt not in ("pickle", "release"):
        raise ValueError(f"fmt: {fmt!r} is not 'pickle' or 'release'")
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    sizes = split_sizes(name, size, full)
    if fmt == "pickle" or DEFAULT_FORMAT[name] == "pickle":
        splits = {s: pickle_split(name, generate_split(name, seed, s, n, full))
                  for s, n in zip(SPLITS, sizes)}
        write_mmsa_pickle(folder / PICKLE_NAMES[name], splits)
        return folder
    for split, n in zip(SPLITS, sizes):  # one split in memory at a time
        twin = generate_split(name, seed, split, n, full)
        if name == "meld":
            write_meld_split(folder, split, twin)
        else:
            write_cherma_release_split(folder, split, twin)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m egmf_core.data.synth",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=sorted(SPECS))
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=None,
                        help="training samples (valid/test: size // 3, at least 8)")
    parser.add_argument("--full", action="store_true", help="real split sizes and sequence lengths")
    parser.add_argument("--format", dest="fmt", choices=("pickle", "release"), default=None)
    args = parser.parse_args(argv)
    print(write_synthetic(args.dataset, args.out_dir, seed=args.seed, size=args.size,
                          full=args.full, fmt=args.fmt))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
