"""The synthetic twins: deterministic bytes, the documented sizes, quirks and planted signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from egmf_core.data import generate, load_dataset, synth, synth_vocabulary, write_synthetic
from egmf_core.data.dataset import SPECS


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in files}


@pytest.mark.parametrize("name", ["mosei", "sims_v2", "meld", "cherma"])
def test_same_seed_same_bytes_other_seed_other_data(tmp_path, name):
    size = 8 if name == "cherma" else 24
    a = _tree_bytes(write_synthetic(name, tmp_path / "a", seed=5, size=size))
    b = _tree_bytes(write_synthetic(name, tmp_path / "b", seed=5, size=size))
    c = _tree_bytes(write_synthetic(name, tmp_path / "c", seed=6, size=size))
    assert a == b
    assert a.keys() == c.keys() if name in ("mosei", "sims_v2", "cherma") else True
    assert any(a[k] != c.get(k) for k in a)
    assert generate(name, seed=5, size=size).train.text != generate(name, seed=6, size=size).train.text


def test_default_and_requested_sizes():
    assert synth.split_sizes("mosei", None, False) == (480, 160, 160)
    assert synth.split_sizes("mosei", 30, False) == (30, 10, 10)
    assert synth.split_sizes("meld", 12, False) == (12, 8, 8)  # valid/test at least 8
    assert synth.split_sizes("mosei", None, True) == (16326, 1871, 4659)
    assert synth.split_sizes("meld", None, True) == (9989, 1109, 2610)
    ds = generate("mosei")
    assert [len(s) for s in ds.splits().values()] == [480, 160, 160]
    assert 24 <= ds.train.audio_lengths.min() and ds.train.audio_lengths.max() <= 40
    assert 16 <= ds.train.vision_lengths.min() and ds.train.vision_lengths.max() <= 24
    assert (ds.audio_dim, ds.vision_dim) == (74, 35)
    assert (generate("sims_v2", size=8).audio_dim, generate("sims_v2", size=8).vision_dim) == (25, 177)


def test_full_lengths_reach_the_real_maxima(monkeypatch):
    monkeypatch.setitem(synth.FULL_SHAPES, "meld", synth.FullShape((200, 8, 8), (65, 157, 32), (64, 64)))
    ds = generate("meld", full=True)
    assert len(ds.train) == 200
    assert ds.train.audio.shape[1] <= 157 and ds.train.audio_lengths.min() >= 157 // 5
    assert ds.train.vision_lengths.max() <= 32


def test_label_grids_and_skew():
    mosei = synth.labels_and_text("mosei", 0, "train", 3000)[0]
    np.testing.assert_allclose(mosei * 3, np.round(mosei * 3), atol=1e-5)  # multiples of 1/3
    assert mosei.dtype == np.float32 and mosei.min() >= -3 and mosei.max() <= 3
    assert 0.1 < np.mean(mosei == 0) < 0.35
    sims = synth.labels_and_text("sims_v2", 0, "train", 3000)[0]
    np.testing.assert_allclose(sims * 5, np.round(sims * 5), atol=1e-5)  # multiples of 0.2
    assert sims.min() >= -1 and sims.max() <= 1
    meld = np.bincount(synth.labels_and_text("meld", 0, "train", 3000)[0], minlength=7) / 3000
    assert 0.43 < meld[0] < 0.51  # neutral ~47%
    assert meld[2] < 0.05 and meld[5] < 0.05  # fear, disgust rare


def test_mosei_neg_inf_only_in_valid_frames_of_trailing_dims():
    twin = synth.generate_split("mosei", 0, "train", 240, False)
    hit = np.isneginf(twin.audio)
    frames = np.arange(twin.audio.shape[1])[None, :] < twin.audio_lengths[:, None]
    share = hit.any(-1)[frames].mean()
    assert 0.015 < share < 0.05
    assert not hit[~frames].any()
    assert not hit[..., : -synth.NEG_INF_DIMS].any()


def test_text_cue_agreement_share():
    labels, cue, _ = synth.labels_and_text("meld", 0, "train", 4000)
    assert abs(np.mean(cue == labels) - (1 - synth.TEXT_CONFLICT_SHARE)) < 0.03
    assert abs(np.mean(cue == -1) - synth.TEXT_CONFLICT_SHARE * synth.TEXT_CONFLICT_DROP_SHARE) < 0.03


def _segments(text: str, vocab: set[str]) -> bool:
    """Whether ``text`` splits into vocabulary items (word break by dynamic programming)."""
    ok = [True] + [False] * len(text)
    for end in range(1, len(text) + 1):
        ok[end] = any(ok[start] and text[start:end] in vocab for start in range(max(0, end - 20), end))
    return ok[-1]


@pytest.mark.parametrize("name", ["mosei", "sims_v2", "meld", "cherma"])
def test_vocabulary_covers_every_emitted_word(name):
    language = SPECS[name].language
    vocab = set(synth_vocabulary(language))
    for text in synth.labels_and_text(name, 0, "train", 300)[2]:
        assert _segments(text, vocab | {" "}), text  # English words are joined by spaces
    assert 100 < len(vocab) < 600


def test_vocabulary_keeps_fillers_apart_from_cues_and_has_labels():
    for name, lexicons in synth.CUES.items():
        cues = [c for lexicon in lexicons for c in lexicon]
        assert len(cues) == len(set(cues)), name  # no cue in two classes
        fillers = set(synth.EN_FILLERS if SPECS[name].language == "en" else synth.ZH_FILLERS)
        assert not fillers & set(cues), name
        assert not fillers & {w for c in cues for w in c.split()} - {"oh", "my"}, name
    assert {"neutral", "disgust", "anger"} <= set(synth_vocabulary("en"))
    assert set(SPECS["cherma"].label_names_zh) <= set(synth_vocabulary("zh"))
    with pytest.raises(ValueError):
        synth_vocabulary("fr")


def _balanced_accuracy(pred, truth) -> float:
    return float(np.mean([np.mean(pred[truth == c] == c) for c in np.unique(truth)]))


def _nearest_centroid(train_x, train_y, test_x):
    classes = np.unique(train_y)
    centroids = np.stack([train_x[train_y == c].mean(0) for c in classes])
    return classes[np.argmin(((test_x[:, None] - centroids[None]) ** 2).sum(-1), axis=1)]


def test_planted_signal_text_beats_audio_beats_visual_beats_chance():
    twins = synth.generate_twin("meld", size=1500)
    tr, te = twins["train"], twins["valid"]

    def pooled(x, lengths):
        return x[..., :8].sum(1) / lengths[:, None]

    audio = _balanced_accuracy(_nearest_centroid(pooled(tr.audio, tr.audio_lengths), tr.labels,
                                                 pooled(te.audio, te.audio_lengths)), te.labels)
    visual = _balanced_accuracy(_nearest_centroid(pooled(tr.vision, tr.vision_lengths), tr.labels,
                                                  pooled(te.vision, te.vision_lengths)), te.labels)
    text = _balanced_accuracy(te.cue, te.labels)  # a reader of the cue word
    print(f"balanced accuracy: text {text:.3f} audio {audio:.3f} visual {visual:.3f}")
    assert text > audio + 0.15
    assert audio > visual + 0.03  # 0.481 vs 0.436 on SYNTH_VERSION 4 (codes on 50% vs 30% of samples)
    assert visual > 1 / 7 + 0.05


def test_synthetic_release_loads_with_default_smoke_size(tmp_path):
    write_synthetic("meld", tmp_path)
    ds = load_dataset("meld", tmp_path)
    assert [len(s) for s in ds.splits().values()] == [480, 160, 160]


# What SYNTH_VERSION's code generates. A change to the planted signal, the vocabulary or the sizes
# changes these: then bump SYNTH_VERSION (and benchmarks.execution.profiles.SMOKE_DATA_VERSION), so that
# results on the old data are never taken for results on the new, and pin the new values here.
FINGERPRINTS = {
    4: {"mosei": "6d12fc7e2855b981", "sims_v2": "711636f7b39801b4", "meld": "ea01673b7a7694a1",
        "cherma": "3c991a09d62b7029"},
    5: {"mosei": "21f045dc7bfe0d87", "sims_v2": "eb0eda4977898b94", "meld": "774f442f252340cc",
        "cherma": "978852ad0d52ef32"},
}


def test_the_generated_data_are_what_this_synth_version_pins():
    got = {name: synth.fingerprint(name) for name in FINGERPRINTS[synth.SYNTH_VERSION]}
    assert got == FINGERPRINTS[synth.SYNTH_VERSION], "synthetic data changed: bump SYNTH_VERSION"


def test_the_fingerprint_sees_a_signal_constant_and_the_sizes(monkeypatch):
    before = synth.fingerprint("meld")
    monkeypatch.setattr(synth, "VISUAL_PRESENT_SHARE", 0.31)
    assert synth.fingerprint("meld") != before
    monkeypatch.undo()
    monkeypatch.setattr(synth, "SMOKE_SIZES", (481, 160, 160))
    assert synth.fingerprint("meld") != before
