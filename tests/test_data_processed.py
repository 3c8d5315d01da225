"""MSE-Adapter's processed MELD / CHERMA lists, NaN features, and their one-line errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from egmf_core.data import DataError, detect_format, load_dataset, synth
from egmf_core.data.convert import main as convert_main
from egmf_core.data.dataset import CHERMA_LABELS, MELD_LABELS
from egmf_core.data.mmsa_pickle import write_mmsa_pickle

# MSE-Adapter's label strings (MELD English; CHERMA Chinese, surprise spelled 惊奇)
MELD_STRINGS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
CHERMA_STRINGS = ("愤怒", "厌恶", "恐惧", "高兴", "平静", "悲伤", "惊奇")
# (L_a, d_a, L_v, d_v): real dims, MELD's real lengths, CHERMA's audio cut short to stay cheap
SHAPES = {"meld": (157, 64, 32, 64), "cherma": (24, 1024, 16, 2048)}
N = {"train": 9, "valid": 4, "test": 5}


def make_split(name: str, split: str, n: int, seed: int) -> list[dict]:
    """A list like MSE-Adapter's: arrays pre-padded to one shape, zero past each length."""
    la, da, lv, dv = SHAPES[name]
    strings = MELD_STRINGS if name == "meld" else CHERMA_STRINGS
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        a_len, v_len = 1 + (i * 7) % la, 1 + (i * 3) % lv
        audio = np.zeros((la, da), dtype=np.float32)
        audio[:a_len] = rng.normal(size=(a_len, da))
        video = np.zeros((lv, dv), dtype=np.float32)
        video[:v_len] = rng.normal(size=(v_len, dv))
        items.append({"features": {"text": f"{split} utterance {i}", "audio": audio, "video": video,
                                   "audio_len": a_len, "video_len": v_len},
                      "label": strings[i % len(strings)]})
    return items


def write_processed(root: Path, name: str, folder: str, splits=("train", "valid", "test")) -> dict:
    out = root / folder
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for k, split in enumerate(splits):
        written[split] = make_split(name, split, N[split], seed=k)
        with open(out / f"{name}_{split}.pkl", "wb") as handle:
            pickle.dump(written[split], handle, protocol=4)
    return written


@pytest.mark.parametrize("name,folder", [("meld", "MELD"), ("cherma", "CHERMA0723"), ("meld", "meld")])
def test_processed_layout_loads_with_sizes_labels_lengths_values(tmp_path, name, folder):
    written = write_processed(tmp_path, name, folder)
    assert detect_format(name, tmp_path / folder)[0] == "mse-adapter-pickle"
    ds = load_dataset(name, tmp_path)
    labels = MELD_LABELS if name == "meld" else CHERMA_LABELS
    la, da, lv, dv = SHAPES[name]
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (9, 4, 5)
    assert (ds.audio_dim, ds.vision_dim) == (da, dv)
    assert "mse-adapter-pickle" in ds.source
    for split_name, split in ds.splits().items():
        items = written[split_name]
        assert split.text == [it["features"]["text"] for it in items]
        assert split.ids[0] == f"{split_name}_0"
        # label i % 7 of the list is class i % 7 in the spec's order (惊奇 -> surprise)
        assert [labels[c] for c in split.labels] == [labels[i % 7] for i in range(len(items))]
        assert split.audio_lengths.tolist() == [it["features"]["audio_len"] for it in items]
        assert split.vision_lengths.tolist() == [it["features"]["video_len"] for it in items]
        assert split.audio.shape[1] == max(split.audio_lengths)  # trimmed to the longest sample
        j = len(items) - 1
        np.testing.assert_array_equal(split.audio[j, : split.audio_lengths[j]],
                                      items[j]["features"]["audio"][: split.audio_lengths[j]])
        np.testing.assert_array_equal(split.vision[j], items[j]["features"]["video"][: split.vision.shape[1]])
    assert ds.cleaning == {"audio_neg_inf": 0, "padding_zeroed": 0}


def test_cherma_english_and_both_surprise_spellings(tmp_path):
    write_processed(tmp_path, "cherma", "cherma")
    path = tmp_path / "cherma" / "cherma_test.pkl"
    items = pickle.loads(path.read_bytes())
    items[0]["label"], items[1]["label"], items[2]["label"] = "惊讶", "Surprise", "happiness"
    path.write_bytes(pickle.dumps(items))
    ds = load_dataset("cherma", tmp_path)
    assert [CHERMA_LABELS[c] for c in ds.test.labels[:3]] == ["surprise", "surprise", "happiness"]


def _rewrite(path: Path, edit) -> None:
    items = pickle.loads(path.read_bytes())
    edit(items)
    path.write_bytes(pickle.dumps(items))


@pytest.mark.parametrize("edit,field,problem", [
    (lambda it: it[3].__setitem__("label", "contempt"), "[3].label", "='contempt' is not a meld label"),
    (lambda it: it[2]["features"].__setitem__("audio_len", 158), "valid.audio_lengths[2]",
     "=158 exceeds audio length 157"),
    (lambda it: it[1]["features"].__setitem__("video_len", 0), "valid.vision_lengths[1]", "=0 is below 1"),
    (lambda it: it[2]["features"].__setitem__("audio", np.zeros((150, 64), np.float32)), "[2].features.audio",
     "has shape (150, 64), but [0] has (157, 64)"),
    (lambda it: it[0]["features"].pop("video_len"), "[0].features.video_len", "missing"),
])
def test_processed_errors_are_one_line_naming_file_and_index(tmp_path, edit, field, problem):
    write_processed(tmp_path, "meld", "MELD")
    path = tmp_path / "MELD" / "meld_valid.pkl"
    _rewrite(path, edit)
    with pytest.raises(DataError) as excinfo:
        load_dataset("meld", tmp_path)
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ")
    assert field in msg and problem in msg, msg


def test_processed_pickle_goes_through_the_restricted_unpickler(tmp_path):
    write_processed(tmp_path, "meld", "MELD")

    class Boom:
        def __reduce__(self):
            import os

            return (os.system, ("echo hacked",))

    (tmp_path / "MELD" / "meld_test.pkl").write_bytes(pickle.dumps([Boom()]))
    with pytest.raises(DataError, match=r"meld_test\.pkl: global .*system refused"):
        load_dataset("meld", tmp_path)


def test_padding_past_length_is_zeroed_and_counted(tmp_path):
    write_processed(tmp_path, "meld", "MELD")
    _rewrite(tmp_path / "MELD" / "meld_train.pkl",
             lambda it: it[0]["features"]["video"].__setitem__((slice(5, 7), 0), 1.0))  # video_len of [0] is 1
    ds = load_dataset("meld", tmp_path)
    assert ds.cleaning["padding_zeroed"] == 2
    assert not ds.train.vision[0, 1:].any()


def test_convert_writes_the_pickle_free_npz(tmp_path, capsys):
    write_processed(tmp_path, "cherma", "CHERMA0723")
    out = tmp_path / "npz" / "cherma" / "cherma.npz"
    assert convert_main([str(tmp_path / "CHERMA0723"), str(out)]) == 0
    with np.load(out, allow_pickle=False) as npz:
        assert npz["train/audio"].shape == (9, 24, 1024) and npz["test/vision"].shape == (5, 16, 2048)
        assert npz["valid/classification_labels"].tolist() == [0, 1, 2, 3]
    from_npz, from_pkl = load_dataset("cherma", tmp_path / "npz"), load_dataset("cherma", tmp_path)
    np.testing.assert_array_equal(from_npz.test.audio, from_pkl.test.audio)
    assert from_npz.valid.text == from_pkl.valid.text
    assert "(npz)" in from_npz.source


# ---- NaN / inf features ----------------------------------------------------------------------------
@pytest.fixture()
def mosei_with_nan(tmp_path):
    """A MOSEI MMSA pickle with two NaN vision frames, one +inf vision value and one NaN audio value."""
    twins = synth.generate_twin("mosei", size=8)
    splits = {s: synth.pickle_split("mosei", t) for s, t in twins.items()}
    splits["train"]["vision"][1, 0, :] = np.nan  # a whole NaN frame (d_v values)
    splits["train"]["vision"][2, 1, :] = np.nan
    splits["valid"]["vision"][0, 0, 3] = np.inf
    splits["test"]["audio"][4, 0, 0] = np.nan
    path = write_mmsa_pickle(tmp_path / "mosei" / "unaligned_50.pkl", splits)
    n_neg_inf = sum(int(np.isneginf(t.audio).sum()) for t in twins.values())
    return tmp_path, path, splits, n_neg_inf


def test_nan_and_inf_features_become_zero_and_are_counted(mosei_with_nan):
    root, _, splits, n_neg_inf = mosei_with_nan
    d_v = splits["train"]["vision"].shape[-1]
    ds = load_dataset("mosei", root)
    assert ds.cleaning["vision_nan"] == 2 * d_v
    assert ds.cleaning["vision_pos_inf"] == 1
    assert ds.cleaning["audio_nan"] == 1
    assert ds.cleaning["audio_neg_inf"] == n_neg_inf
    assert "vision_neg_inf" not in ds.cleaning and "audio_pos_inf" not in ds.cleaning
    assert not ds.train.vision[1, 0].any() and not ds.train.vision[2, 1].any()
    assert ds.valid.vision[0, 0, 3] == 0.0 and ds.test.audio[4, 0, 0] == 0.0
    for split in ds.splits().values():
        assert np.isfinite(split.audio).all() and np.isfinite(split.vision).all()
    np.testing.assert_array_equal(ds.train.vision[3], splits["train"]["vision"][3, : ds.train.vision.shape[1]])


def test_strict_makes_nan_features_an_error(mosei_with_nan):
    root, path, _, _ = mosei_with_nan
    with pytest.raises(DataError) as excinfo:
        load_dataset("mosei", root, strict=True)
    assert str(excinfo.value) == f"{path}: train.vision[1,0,0] is NaN (strict data: NaN and inf are errors)"


def test_nan_labels_stay_errors_without_strict(mosei_with_nan):
    root, path, splits, _ = mosei_with_nan
    splits["test"]["regression_labels"][2] = np.nan
    write_mmsa_pickle(path, splits)
    with pytest.raises(DataError, match=r"test\.regression_labels\[2\] is NaN"):
        load_dataset("mosei", root)


def test_table_1_and_report_show_the_counts_and_strict_data_refuses(mosei_with_nan, tmp_path, capsys):
    import pandas as pd

    from benchmarks.cli import main

    root, path, splits, _ = mosei_with_nan
    d_v = splits["train"]["vision"].shape[-1]
    out = tmp_path / "out"
    args = ["reproduce", "datasets", "--profile", "paper", "--data-root", str(root), "--datasets", "mosei",
            "--results-root", str(out / "results"), "--reports-root", str(out / "reports")]
    assert main([*args, "--strict-data"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {path}: train.vision[1,0,0] is NaN (strict data: NaN and inf are errors)\n"
    assert main(args) == 0
    df = pd.read_csv(out / "results" / "paper" / "datasets.csv")
    counts = df[df.split == "all"].set_index("metric")["value"]
    assert counts["cleaning:vision_nan"] == 2 * d_v and counts["cleaning:vision_pos_inf"] == 1
    assert counts["cleaning:audio_nan"] == 1
    report = (out / "reports" / "paper" / "datasets.md").read_text()
    assert f"| NaN / inf features set to 0 | mosei: 1 audio NaN, 1 vision +inf, {2 * d_v:,} vision NaN |" in report
