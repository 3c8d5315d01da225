"""Offline tokenizers for the tiny twins: small, deterministic, English + Chinese, no download.

Each family keeps the traits of its real tokenizer that our code can notice:

- ``llama3``: byte-level BPE with Llama-3's pre-tokenizer regex; ``<|begin_of_text|>`` is bos and
  is prepended to every encoding, ``<|eot_id|>`` is eos; the real tokenizer has no pad, the twin
  adds ``<|finetune_right_pad_id|>`` (Llama 3.1's pad); padding on the right.
- ``glm4``: byte-level BPE; encodings start with ``[gMASK]<sop>``; ``<|endoftext|>`` is eos and pad;
  chat roles ``<|system|> <|user|> <|assistant|> <|observation|>``; padding on the left.
- ``glm3``: a SentencePiece BPE model (``tokenizer.model``, byte_fallback so any text round-trips)
  with ChatGLM3's nine special tokens appended after the sp vocabulary; the fast tokenizer is
  made from it by :func:`egmf_core.convert_chatglm3.convert_tokenizer`, the same path that a real
  ChatGLM3 checkpoint takes.

Special tokens are always appended after the learned vocabulary, as in the real releases, and the
vocabulary is small (about 1k) because the LM head's width dominates tiny-model cost.
``tokenizer.vocab_size`` excludes added tokens: size models by ``len(tokenizer)``.
"""

from __future__ import annotations

import io
import string
import unicodedata
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

DEFAULT_VOCAB_SIZE = 2048  # learned pieces incl. 256 bytes; specials come on top
# Each corpus line is seen this many times, so that every word of the synthetic vocabulary becomes
# one or two tokens, as common words are in a real LLM's vocabulary. Seen once, a word like
# "unbelievable" stayed 9 pieces and a tiny twin could not tell cue words from fillers.
CORPUS_REPEATS = 8

# Llama-3's split pattern (tiktoken cl100k style); GLM-4's tiktoken pattern is the same shape.
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|finetune_right_pad_id|>",
]
GLM4_SPECIALS = [
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
]

_BUILTIN_EN = [
    "What is the emotion of this utterance? Answer with one label.",
    "The emotion is neutral.",
    "The emotion is surprise.",
    "The emotion is fear.",
    "The emotion is sadness.",
    "The emotion is joy.",
    "The emotion is disgust.",
    "The emotion is anger.",
    "Labels: neutral, surprise, fear, sadness, joy, disgust, anger, happiness, calm.",
    "Predict the sentiment score of the utterance in the range [-3, 3].",
    "The sentiment score is -2.5.",
    "The sentiment score is 0.0, and the answer is 1.8.",
    "Score: -1.0 0.2 0.5 1.3 2.7 3.0",
    "Given the multimodal representation and the text, answer with the emotion label.",
    "I can't believe you did that! Oh my god, that's amazing.",
    "I'm so sorry, I really didn't mean to hurt you.",
    "Get out of here right now, I never want to see you again.",
    "Well, I guess it's fine. Whatever you want.",
    "This movie was wonderful, the acting was great and I loved it.",
    "The plot was boring and the ending made no sense at all.",
    "Utterance: we are going to the coffee house, do you want to come?",
    "Answer: joy",
    "0 1 2 3 4 5 6 7 8 9 10 42 100 2025",
]
_BUILTIN_ZH = [
    "这句话的情感是什么？请用一个标签回答。",
    "情绪标签：愤怒、厌恶、恐惧、高兴、平静、悲伤、惊讶。",
    "这句话的情绪是愤怒。",
    "这句话的情绪是厌恶。",
    "这句话的情绪是恐惧。",
    "这句话的情绪是高兴。",
    "这句话的情绪是平静。",
    "这句话的情绪是悲伤。",
    "这句话的情绪是惊讶。",
    "请预测这段话语的情感分数，范围是 -1 到 1。",
    "情感分数是 0.6。",
    "情感分数是 -0.8，答案是 0.2。",
    "根据多模态表示和文本，回答情绪标签。",
    "话语：我今天真的很开心，谢谢你们！",
    "话语：你怎么能这样对我，我太生气了。",
    "话语：我有点害怕，不知道接下来会发生什么。",
    "话语：没关系，一切都会好起来的。",
    "这部电影非常好看，演员的表演很精彩。",
    "答案：高兴",
    "分数：-1.0 -0.4 0.0 0.4 1.0",
]


def _prompt_lines() -> list[str]:
    """The prompt templates and answer targets of every dataset, so prompts tokenise compactly."""
    from egmf_core.answers import label_strings
    from egmf_core.data.dataset import SPECS
    from egmf_core.prompts import prompt_parts

    lines = []
    for spec in SPECS.values():
        parts = prompt_parts(spec)
        lines += [parts.prefix, parts.suffix.replace("{text}", ""), parts.task]
        if spec.task == "classification":
            lines += label_strings(spec)
    lines += [f"{x / 10:.1f}" for x in range(-30, 31)]
    return lines


def default_corpus() -> list[str]:
    """The twins' training text: the synthetic data's vocabulary (en + zh), the prompts' words and a built-in list."""
    from egmf_core.data.synth import synth_vocabulary

    lines = [str(s) for s in synth_vocabulary("en")] + [str(s) for s in synth_vocabulary("zh")]
    return lines + _prompt_lines() + _BUILTIN_EN + _BUILTIN_ZH


def _coverage_lines(corpus: list[str]) -> list[str]:
    """Lines that make every ASCII printable and every CJK character of the corpus a training symbol."""
    ascii_line = " ".join(string.ascii_letters + string.digits + string.punctuation)
    cjk = sorted({ch for line in corpus for ch in line if _is_cjk(ch)})
    # One character per line (a pre-token of its own), repeated, so each CJK character (3 UTF-8
    # bytes) wins its two byte-level merges instead of merging across neighbours.
    return [ascii_line] + [ch for ch in cjk for _ in range(4)]


def _is_cjk(ch: str) -> bool:
    return "CJK" in unicodedata.name(ch, "") or ch in "，。、？！：；“”‘’（）《》"


def training_lines(corpus: list[str] | None, *, leading_space: bool = False) -> list[str]:
    """The corpus (default: :func:`default_corpus`) repeated, plus coverage lines, in a fixed order.

    ``leading_space`` adds each line again after a space, so that byte-level BPE learns the
    in-sentence form of a word ("Ġword") as well as its line-initial form.
    """
    corpus = default_corpus() if corpus is None else [str(s) for s in corpus]
    lines = corpus + [" " + c for c in corpus] if leading_space else corpus
    return lines * CORPUS_REPEATS + _coverage_lines(corpus)


def build_bpe_tokenizer(
    family: str, corpus: list[str] | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE
) -> PreTrainedTokenizerFast:
    """A byte-level BPE for ``llama3`` or ``glm4``, trained offline on ``corpus``, with the family's specials."""
    if family not in ("llama3", "glm4"):
        raise ValueError(f"build_bpe_tokenizer: family={family!r} must be 'llama3' or 'glm4' (glm3 uses SentencePiece)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text encodes
    )
    tok.train_from_iterator(training_lines(corpus, leading_space=True), trainer=trainer)

    specials = LLAMA3_SPECIALS if family == "llama3" else GLM4_SPECIALS
    tok.add_special_tokens(specials)  # ids = learned size + i, as in the real releases
    if family == "llama3":
        bos, eos, pad, side = "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>", "right"
        prefix = [bos]
    else:
        bos, eos, pad, side = None, "<|endoftext|>", "<|endoftext|>", "left"
        prefix = ["[gMASK]", "<sop>"]
    tok.post_processor = processors.TemplateProcessing(
        single=" ".join(prefix + ["$A"]),
        pair=" ".join(prefix + ["$A", "$B:1"]),
        special_tokens=[(t, tok.token_to_id(t)) for t in prefix],
    )
    extra = [t for t in specials if t not in {bos, eos, pad}]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        extra_special_tokens=extra,
        padding_side=side,
        clean_up_tokenization_spaces=False,
        model_max_length=8192,
    )


def train_sentencepiece(
    corpus: list[str] | None, out_path: str | Path, vocab_size: int = DEFAULT_VOCAB_SIZE
) -> Path:
    """Train a SentencePiece BPE (byte_fallback, identity normalisation) and write ``tokenizer.model``.

    Ids 0/1/2 are ``<unk> <s> </s>``, as in ChatGLM3's model; single-threaded so the result is
    the same for the same corpus.
    """
    import sentencepiece as spm

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_lines(corpus)),
        model_writer=buf,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a small corpus may not reach vocab_size merges
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",  # lossless: no NFKC folding
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    out_path.write_bytes(buf.getvalue())
    return out_path


def build_twin_tokenizer(
    family: str, corpus: list[str] | None = None, workdir: str | Path | None = None
) -> PreTrainedTokenizerFast:
    """The twin tokenizer of a family; glm3 needs ``workdir`` to hold its ``tokenizer.model``."""
    if family == "glm3":
        if workdir is None:
            raise ValueError("build_twin_tokenizer: family 'glm3' needs workdir for its tokenizer.model")
        from egmf_core.convert_chatglm3 import convert_tokenizer

        train_sentencepiece(corpus, Path(workdir) / "tokenizer.model")
        return convert_tokenizer(workdir)
    return build_bpe_tokenizer(family, corpus)
