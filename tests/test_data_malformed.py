"""Malformed inputs: every one raises a one-line DataError naming the file and the field."""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from egmf_core.data import DataError, load_dataset, synth, write_synthetic
from egmf_core.data.checksums import verify_checksums
from egmf_core.data.convert import write_npz
from egmf_core.data.mmsa_pickle import write_mmsa_pickle

SIZE = 8  # 8 / 8 / 8 samples


@pytest.fixture(scope="module")
def mmsa_splits():
    """Valid pickle content for mosei and meld, mutated by each case (on a deep copy)."""
    return {name: {s: synth.pickle_split(name, t) for s, t in synth.generate_twin(name, size=SIZE).items()}
            for name in ("mosei", "meld")}


@pytest.fixture(scope="module")
def release_dirs(tmp_path_factory):
    """Valid MELD and CHERMA releases, copied before each case edits them."""
    base = tmp_path_factory.mktemp("releases")
    return {name: write_synthetic(name, base, size=SIZE) for name in ("meld", "cherma")}


def assert_one_line_error(excinfo, file: str, field: str):
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert file in msg, msg
    assert field in msg, msg
    assert isinstance(excinfo.value, ValueError)


# ---- processed pickle ------------------------------------------------------------------------
def _nan_label(s):
    s["train"]["regression_labels"][5] = np.nan


def _label_out_of_range(s):
    s["train"]["regression_labels"][2] = 3.5


def _drop_key(s):
    del s["train"]["audio_lengths"]


def _wrong_rank(s):
    s["train"]["audio"] = s["train"]["audio"][:, :, 0]


def _dim_mismatch(s):
    s["valid"]["vision"] = s["valid"]["vision"][:, :, :30]


def _empty_split(s):
    s["test"] = {k: v[:0] for k, v in s["test"].items()}


def _duplicate_ids(s):
    s["valid"]["id"][3] = s["valid"]["id"][1]


def _length_too_long(s):
    s["train"]["audio_lengths"][3] = 612


def _length_zero(s):
    s["train"]["vision_lengths"][0] = 0


def _nan_feature(s):
    s["train"]["audio"][2, 1, 4] = np.nan


def _neg_inf_vision(s):
    s["train"]["vision"][1, 0, 0] = -np.inf


def _int_features(s):
    s["valid"]["audio"] = np.zeros(s["valid"]["audio"].shape, np.int64)


def _unknown_split(s):
    s["training"] = s.pop("train")


def _missing_split(s):
    del s["test"]


def _short_parallel_array(s):
    s["train"]["annotations"] = s["train"]["annotations"][:-1]


def _text_not_string(s):
    s["train"]["raw_text"][4] = 17


PICKLE_CASES = [
    ("nan_label", "mosei", _nan_label, "train.regression_labels[5]", "is NaN"),
    ("label_out_of_range", "mosei", _label_out_of_range, "train.regression_labels[2]=3.5", "outside"),
    ("missing_key", "mosei", _drop_key, "train.audio_lengths", "missing"),
    ("wrong_rank", "mosei", _wrong_rank, "train.audio", "expected rank 3"),
    ("dim_mismatch_between_splits", "mosei", _dim_mismatch, "valid.vision",
     "dim 30, but train.vision has dim 35"),
    ("empty_split", "mosei", _empty_split, "test", "is empty"),
    ("duplicate_ids", "mosei", _duplicate_ids, "valid.id[3]", "duplicates valid.id[1]"),
    ("length_exceeds_sequence", "mosei", _length_too_long, "train.audio_lengths[3]=612",
     "exceeds audio length 40"),
    ("length_below_one", "mosei", _length_zero, "train.vision_lengths[0]=0", "below 1"),
    ("nan_feature", "mosei", _nan_feature, "train.audio[2,1,4]", "is NaN"),
    ("neg_inf_in_vision", "mosei", _neg_inf_vision, "train.vision[1,0,0]", "is -inf"),
    ("int_features", "mosei", _int_features, "valid.audio", "dtype int64"),
    ("unknown_split_name", "mosei", _unknown_split, "splits", "unexpected split 'training'"),
    ("missing_split", "mosei", _missing_split, "splits", "split 'test' missing"),
    ("parallel_array_too_short", "mosei", _short_parallel_array, "train.annotations", "expected 8 samples"),
    ("text_not_a_string", "mosei", _text_not_string, "train.raw_text[4]", "expected a string"),
    ("class_label_outside_set", "meld",
     lambda s: s["valid"]["classification_labels"].__setitem__(0, 7), "valid.classification_labels[0]=7",
     "not a class index"),
    ("class_label_fraction", "meld",
     lambda s: s["train"].__setitem__("classification_labels", s["train"]["classification_labels"] + 0.5),
     "train.classification_labels[0]", "not an integer"),
]


@pytest.mark.parametrize("case,name,mutate,field,problem", PICKLE_CASES, ids=[c[0] for c in PICKLE_CASES])
def test_malformed_pickle(tmp_path, mmsa_splits, case, name, mutate, field, problem):
    splits = copy.deepcopy(mmsa_splits[name])
    mutate(splits)
    path = write_mmsa_pickle(tmp_path / synth.PICKLE_NAMES[name], splits)
    with pytest.raises(DataError) as excinfo:
        load_dataset(name, tmp_path, strict=True)  # strict: NaN / inf features are errors too
    assert_one_line_error(excinfo, str(path), field)
    assert problem in str(excinfo.value)


def test_missing_dataset_files(tmp_path):
    with pytest.raises(DataError) as excinfo:
        load_dataset("mosei", tmp_path)
    assert_one_line_error(excinfo, str(tmp_path), "unaligned_50.pkl")


def test_missing_root(tmp_path):
    with pytest.raises(DataError) as excinfo:
        load_dataset("mosei", tmp_path / "nowhere")
    assert_one_line_error(excinfo, str(tmp_path / "nowhere"), "root")


def test_truncated_pickle(tmp_path, mmsa_splits):
    path = write_mmsa_pickle(tmp_path / "unaligned_50.pkl", mmsa_splits["mosei"])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError) as excinfo:
        load_dataset("mosei", tmp_path)
    assert_one_line_error(excinfo, str(path), "truncated pickle")


class _RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_runs_nothing(tmp_path, mmsa_splits):
    marker = tmp_path / "pwned"
    splits = copy.deepcopy(mmsa_splits["mosei"])
    splits["train"]["annotations"] = _RunsShell(marker)
    path = tmp_path / "unaligned_50.pkl"
    path.write_bytes(pickle.dumps(splits, protocol=4))
    with pytest.raises(DataError) as excinfo:
        load_dataset("mosei", tmp_path)
    assert_one_line_error(excinfo, str(path), "global")
    assert f"{os.system.__module__}.system refused" in str(excinfo.value)  # posix.system
    assert not marker.exists()
    # the same payload through plain pickle does run: the marker proves the test can fail
    pickle.loads(pickle.dumps(_RunsShell(marker)))
    assert marker.exists()


def test_pickle_naming_a_builtin_callable_is_refused(tmp_path):
    path = tmp_path / "unaligned_50.pkl"
    path.write_bytes(b"cbuiltins\neval\n(V1+1\ntR.")  # protocol 0: eval("1+1")
    with pytest.raises(DataError) as excinfo:
        load_dataset("mosei", tmp_path)
    assert_one_line_error(excinfo, str(path), "builtins.eval refused")


def test_npz_missing_key(tmp_path, mmsa_splits):
    arrays = {f"{s}/{k}": np.asarray(v.tolist() if v.dtype == object else v)
              for s, d in mmsa_splits["mosei"].items() for k, v in d.items() if k != "vision"}
    path = write_npz(tmp_path / "unaligned_50.npz", arrays)
    with pytest.raises(DataError) as excinfo:
        load_dataset("mosei", tmp_path)
    assert_one_line_error(excinfo, str(path), "train.vision")


# ---- MELD's CSV release ----------------------------------------------------------------------
def _meld(tmp_path, release_dirs) -> Path:
    return Path(shutil.copytree(release_dirs["meld"], tmp_path / "meld"))


def _edit_csv(path: Path, old: bytes, new: bytes, count: int = 1):
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, count))


def test_meld_bytes_invalid_in_utf8_and_cp1252(tmp_path, release_dirs):
    folder = _meld(tmp_path, release_dirs)
    csv_path = folder / "dev_sent_emo.csv"
    lines = csv_path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b",", b",\x81", 1)  # 0x81: undefined in cp1252, invalid in utf-8
    csv_path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError) as excinfo:
        load_dataset("meld", tmp_path)
    assert_one_line_error(excinfo, str(csv_path), "row 4 column 'Utterance'")
    assert "neither utf-8 nor cp1252" in str(excinfo.value)


def test_meld_missing_csv(tmp_path, release_dirs):
    folder = _meld(tmp_path, release_dirs)
    (folder / "test_sent_emo.csv").unlink()
    with pytest.raises(DataError) as excinfo:
        load_dataset("meld", tmp_path)
    assert_one_line_error(excinfo, str(folder / "test_sent_emo.csv"), "file does not exist")


def test_meld_missing_column(tmp_path, release_dirs):
    folder = _meld(tmp_path, release_dirs)
    _edit_csv(folder / "test_sent_emo.csv", b"Sentiment,", b"Sentimental,")
    with pytest.raises(DataError) as excinfo:
        load_dataset("meld", tmp_path)
    assert_one_line_error(excinfo, str(folder / "test_sent_emo.csv"), "column 'Sentiment'")


def test_meld_missing_feature_file(tmp_path, release_dirs):
    folder = _meld(tmp_path, release_dirs)
    (folder / "features" / "train" / "dia0_utt1.npz").unlink()
    with pytest.raises(DataError) as excinfo:
        load_dataset("meld", tmp_path)
    assert_one_line_error(excinfo, str(folder / "features" / "train" / "dia0_utt1.npz"),
                          "row 3 of train_sent_emo.csv")


def test_meld_unknown_emotion(tmp_path, release_dirs):
    folder = _meld(tmp_path, release_dirs)
    path = folder / "train_sent_emo.csv"
    lines = path.read_text(encoding="utf-8").split("\n")
    cells = lines[1].split(",")
    cells[3] = "happy"  # Emotion of the first row (no comma in the first utterances' text)
    lines[1] = ",".join(cells)
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        load_dataset("meld", tmp_path)
    assert_one_line_error(excinfo, str(path), "row 2 column 'Emotion'")
    assert "'happy' is not one of neutral" in str(excinfo.value)


def test_meld_duplicate_utterance(tmp_path, release_dirs):
    folder = _meld(tmp_path, release_dirs)
    path = folder / "test_sent_emo.csv"
    lines = path.read_text(encoding="utf-8").split("\n")
    lines.insert(3, lines[2])
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        load_dataset("meld", tmp_path)
    assert_one_line_error(excinfo, str(path), "row 4 Dialogue_ID/Utterance_ID")
    assert "duplicates row 3" in str(excinfo.value)


def test_meld_feature_file_without_visual(tmp_path, release_dirs):
    folder = _meld(tmp_path, release_dirs)
    feature = folder / "features" / "test" / "dia0_utt0.npz"
    write_npz(feature, {"audio": np.ones((5, 64), np.float32)})
    with pytest.raises(DataError) as excinfo:
        load_dataset("meld", tmp_path)
    assert_one_line_error(excinfo, str(feature), "visual missing")
    assert "readable" not in str(excinfo.value)


def test_meld_feature_dim_mismatch(tmp_path, release_dirs):
    folder = _meld(tmp_path, release_dirs)
    feature = folder / "features" / "dev" / "dia0_utt1.npz"
    write_npz(feature, {"audio": np.ones((5, 32), np.float32), "visual": np.ones((4, 64), np.float32)})
    with pytest.raises(DataError) as excinfo:
        load_dataset("meld", tmp_path)
    assert_one_line_error(excinfo, str(feature), "audio")
    assert "has dim 32, but" in str(excinfo.value)


def test_meld_nan_in_feature_file_names_that_file(tmp_path, release_dirs):
    folder = _meld(tmp_path, release_dirs)
    feature = folder / "features" / "train" / "dia0_utt0.npz"
    audio = np.ones((5, 64), np.float32)
    audio[2, 7] = np.nan
    write_npz(feature, {"audio": audio, "visual": np.ones((4, 64), np.float32)})
    assert load_dataset("meld", tmp_path).cleaning["audio_nan"] == 1  # by default: set to 0 and counted
    with pytest.raises(DataError) as excinfo:
        load_dataset("meld", tmp_path, strict=True)
    assert_one_line_error(excinfo, str(feature), "audio[2,7] is NaN")


def test_meld_non_integer_dialogue_id(tmp_path, release_dirs):
    folder = _meld(tmp_path, release_dirs)
    path = folder / "train_sent_emo.csv"
    lines = path.read_text(encoding="utf-8").split("\n")
    cells = lines[1].split(",")
    cells[5] = "zero"
    lines[1] = ",".join(cells)
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        load_dataset("meld", tmp_path)
    assert_one_line_error(excinfo, str(path), "row 2 column 'Dialogue_ID'='zero'")


def test_meld_empty_split(tmp_path, release_dirs):
    folder = _meld(tmp_path, release_dirs)
    path = folder / "dev_sent_emo.csv"
    path.write_bytes(path.read_bytes().split(b"\n")[0] + b"\n")
    with pytest.raises(DataError) as excinfo:
        load_dataset("meld", tmp_path)
    assert_one_line_error(excinfo, str(path), "rows is empty")


# ---- CHERMA's json release -------------------------------------------------------------------
def _cherma(tmp_path, release_dirs) -> Path:
    return Path(shutil.copytree(release_dirs["cherma"], tmp_path / "cherma"))


def _edit_json(path: Path, edit):
    entries = json.loads(path.read_text(encoding="utf-8"))
    edit(entries)
    path.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")


def test_cherma_unknown_chinese_label(tmp_path, release_dirs):
    folder = _cherma(tmp_path, release_dirs)
    _edit_json(folder / "train.json", lambda e: e[3].__setitem__("video_label", "快乐"))
    with pytest.raises(DataError) as excinfo:
        load_dataset("cherma", tmp_path)
    assert_one_line_error(excinfo, str(folder / "train.json"), "[3].video_label='快乐'")


def test_cherma_missing_npy(tmp_path, release_dirs):
    folder = _cherma(tmp_path, release_dirs)
    missing = folder / "audio" / "test" / "c00002.npy"
    missing.unlink()
    with pytest.raises(DataError) as excinfo:
        load_dataset("cherma", tmp_path)
    assert_one_line_error(excinfo, str(missing), "entry [2] of test.json")


def test_cherma_wrong_npy_shape(tmp_path, release_dirs):
    folder = _cherma(tmp_path, release_dirs)
    bad = folder / "visual" / "dev" / "c00001.mp4.npy"
    np.save(bad, np.ones(2048, np.float32))
    with pytest.raises(DataError) as excinfo:
        load_dataset("cherma", tmp_path)
    assert_one_line_error(excinfo, str(bad), "visual has shape (2048,)")


def test_cherma_npy_dim_mismatch(tmp_path, release_dirs):
    folder = _cherma(tmp_path, release_dirs)
    bad = folder / "audio" / "train" / "c00004.npy"
    np.save(bad, np.ones((30, 512), np.float32))
    with pytest.raises(DataError) as excinfo:
        load_dataset("cherma", tmp_path)
    assert_one_line_error(excinfo, str(bad), "audio has dim 512")


def test_cherma_missing_valid_split(tmp_path, release_dirs):
    folder = _cherma(tmp_path, release_dirs)
    (folder / "dev.json").unlink()
    with pytest.raises(DataError) as excinfo:
        load_dataset("cherma", tmp_path)
    assert_one_line_error(excinfo, str(folder / "valid.json"), "split 'valid' not found")


def test_cherma_entry_without_text(tmp_path, release_dirs):
    folder = _cherma(tmp_path, release_dirs)
    _edit_json(folder / "test.json", lambda e: e[0].pop("text"))
    with pytest.raises(DataError) as excinfo:
        load_dataset("cherma", tmp_path)
    assert_one_line_error(excinfo, str(folder / "test.json"), "[0].text missing")


def test_cherma_text_feature_folder_missing_a_file(tmp_path, release_dirs):
    folder = _cherma(tmp_path, release_dirs)
    (folder / "text" / "train").mkdir(parents=True)
    with pytest.raises(DataError) as excinfo:
        load_dataset("cherma", tmp_path)
    assert_one_line_error(excinfo, str(folder / "text" / "train" / "c00000.npy"), "text feature file missing")


def test_cherma_dev_and_valid_both_present(tmp_path, release_dirs):
    folder = _cherma(tmp_path, release_dirs)
    shutil.copy(folder / "dev.json", folder / "valid.json")
    with pytest.raises(DataError) as excinfo:
        load_dataset("cherma", tmp_path)
    assert_one_line_error(excinfo, str(folder), "both valid.json and dev.json")


def test_cherma_duplicate_ids(tmp_path, release_dirs):
    folder = _cherma(tmp_path, release_dirs)
    _edit_json(folder / "train.json", lambda e: e[5].__setitem__("audio_file", e[2]["audio_file"]))
    with pytest.raises(DataError) as excinfo:
        load_dataset("cherma", tmp_path)
    assert_one_line_error(excinfo, str(folder / "train.json"), "[5].audio_file='c00002.wav'")


# ---- checksums -------------------------------------------------------------------------------
def test_checksum_mismatch_names_the_file(tmp_path, mmsa_splits):
    path = write_mmsa_pickle(tmp_path / "unaligned_50.pkl", mmsa_splits["mosei"])
    (tmp_path / "SHA256SUMS").write_text(f"{'ab' * 32}  unaligned_50.pkl\n")
    with pytest.raises(DataError) as excinfo:
        load_dataset("mosei", tmp_path, verify_checksums=True)
    assert_one_line_error(excinfo, str(path), "sha256 mismatch")


def test_checksum_listed_file_missing(tmp_path):
    with pytest.raises(DataError) as excinfo:
        verify_checksums(tmp_path, {"features/a.npz": "0" * 64})
    assert_one_line_error(excinfo, str(tmp_path / "features" / "a.npz"), "does not exist")


def test_checksum_file_malformed_line(tmp_path):
    (tmp_path / "SHA256SUMS").write_text("not a checksum line\n")
    with pytest.raises(DataError) as excinfo:
        verify_checksums(tmp_path)
    assert_one_line_error(excinfo, str(tmp_path / "SHA256SUMS"), "line 1")
