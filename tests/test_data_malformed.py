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


def _write_mosei(root: Path, splits) -> Path:
    return write_mmsa_pickle(root / "unaligned_50.pkl", splits)


def _truncate_pickle(root, splits):
    path = _write_mosei(root, splits)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _builtin_callable_pickle(root, splits):
    (root / "unaligned_50.pkl").write_bytes(b"cbuiltins\neval\n(V1+1\ntR.")  # protocol 0: eval("1+1")


def _npz_without_vision(root, splits):
    arrays = {f"{s}/{k}": np.asarray(v.tolist() if v.dtype == object else v)
              for s, d in splits.items() for k, v in d.items() if k != "vision"}
    write_npz(root / "unaligned_50.npz", arrays)


def _bad_checksum(root, splits):
    _write_mosei(root, splits)
    (root / "SHA256SUMS").write_text(f"{'ab' * 32}  unaligned_50.pkl\n")


# ---- MELD's CSV release (under root/meld) ------------------------------------------------------
def _edit_csv(path: Path, old: bytes, new: bytes, count: int = 1):
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, count))


def _edit_lines(path: Path, edit):
    lines = path.read_text(encoding="utf-8").split("\n")
    edit(lines)
    path.write_text("\n".join(lines), encoding="utf-8")


def _set_cell(lines, row: int, column: int, value: str):
    cells = lines[row].split(",")  # no comma in the first utterances' text
    cells[column] = value
    lines[row] = ",".join(cells)


def _meld_undecodable_byte(root, splits):
    path = root / "meld" / "dev_sent_emo.csv"
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b",", b",\x81", 1)  # 0x81: undefined in cp1252, invalid in utf-8
    path.write_bytes(b"\n".join(lines))


def _meld_nan_feature(root, splits):
    audio = np.ones((5, 64), np.float32)
    audio[2, 7] = np.nan
    write_npz(root / "meld" / "features" / "train" / "dia0_utt0.npz",
              {"audio": audio, "visual": np.ones((4, 64), np.float32)})


def _meld_empty_split(root, splits):
    path = root / "meld" / "dev_sent_emo.csv"
    path.write_bytes(path.read_bytes().split(b"\n")[0] + b"\n")


# ---- CHERMA's json release (under root/cherma) -------------------------------------------------
def _edit_json(path: Path, edit):
    entries = json.loads(path.read_text(encoding="utf-8"))
    edit(entries)
    path.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")


def _load(name: str, **kwargs):
    return lambda root: load_dataset(name, root, **kwargs)


M, C = "meld", "cherma"
MELD_FEATURES = "meld/features"
# (id, release copied under root first or None, edit(root, mosei_splits), file under root named by
#  the error, field named by it, further words of the message, load(root)). The error must be a
#  one-line DataError naming both.
CASES = [
    ("missing_dataset_files", None, lambda r, s: None, "", "unaligned_50.pkl", "", _load("mosei")),
    ("missing_root", None, lambda r, s: None, "nowhere", "root", "",
     lambda root: load_dataset("mosei", root / "nowhere")),
    ("truncated_pickle", None, _truncate_pickle, "unaligned_50.pkl", "truncated pickle", "", _load("mosei")),
    ("pickle_naming_a_builtin_callable", None, _builtin_callable_pickle, "unaligned_50.pkl",
     "builtins.eval refused", "", _load("mosei")),
    ("npz_missing_key", None, _npz_without_vision, "unaligned_50.npz", "train.vision", "", _load("mosei")),
    ("meld_bytes_invalid_in_utf8_and_cp1252", M, _meld_undecodable_byte, "meld/dev_sent_emo.csv",
     "row 4 column 'Utterance'", "neither utf-8 nor cp1252", _load(M)),
    ("meld_missing_csv", M, lambda r, s: (r / "meld" / "test_sent_emo.csv").unlink(), "meld/test_sent_emo.csv",
     "file does not exist", "", _load(M)),
    ("meld_missing_column", M, lambda r, s: _edit_csv(r / "meld" / "test_sent_emo.csv", b"Sentiment,", b"Sentimental,"),
     "meld/test_sent_emo.csv", "column 'Sentiment'", "", _load(M)),
    ("meld_missing_feature_file", M, lambda r, s: (r / MELD_FEATURES / "train" / "dia0_utt1.npz").unlink(),
     f"{MELD_FEATURES}/train/dia0_utt1.npz", "row 3 of train_sent_emo.csv", "", _load(M)),
    ("meld_unknown_emotion", M,
     lambda r, s: _edit_lines(r / "meld" / "train_sent_emo.csv", lambda lines: _set_cell(lines, 1, 3, "happy")),
     "meld/train_sent_emo.csv", "row 2 column 'Emotion'", "'happy' is not one of neutral", _load(M)),
    ("meld_duplicate_utterance", M,
     lambda r, s: _edit_lines(r / "meld" / "test_sent_emo.csv", lambda lines: lines.insert(3, lines[2])),
     "meld/test_sent_emo.csv", "row 4 Dialogue_ID/Utterance_ID", "duplicates row 3", _load(M)),
    ("meld_feature_file_without_visual", M,
     lambda r, s: write_npz(r / MELD_FEATURES / "test" / "dia0_utt0.npz", {"audio": np.ones((5, 64), np.float32)}),
     f"{MELD_FEATURES}/test/dia0_utt0.npz", "visual missing", "", _load(M)),
    ("meld_feature_dim_mismatch", M,
     lambda r, s: write_npz(r / MELD_FEATURES / "dev" / "dia0_utt1.npz",
                            {"audio": np.ones((5, 32), np.float32), "visual": np.ones((4, 64), np.float32)}),
     f"{MELD_FEATURES}/dev/dia0_utt1.npz", "audio", "has dim 32, but", _load(M)),
    ("meld_nan_in_feature_file_names_that_file", M, _meld_nan_feature, f"{MELD_FEATURES}/train/dia0_utt0.npz",
     "audio[2,7] is NaN", "", _load(M, strict=True)),
    ("meld_non_integer_dialogue_id", M,
     lambda r, s: _edit_lines(r / "meld" / "train_sent_emo.csv", lambda lines: _set_cell(lines, 1, 5, "zero")),
     "meld/train_sent_emo.csv", "row 2 column 'Dialogue_ID'='zero'", "", _load(M)),
    ("meld_empty_split", M, _meld_empty_split, "meld/dev_sent_emo.csv", "rows is empty", "", _load(M)),
    ("cherma_unknown_chinese_label", C,
     lambda r, s: _edit_json(r / "cherma" / "train.json", lambda e: e[3].__setitem__("video_label", "快乐")),
     "cherma/train.json", "[3].video_label='快乐'", "", _load(C)),
    ("cherma_missing_npy", C, lambda r, s: (r / "cherma" / "audio" / "test" / "c00002.npy").unlink(),
     "cherma/audio/test/c00002.npy", "entry [2] of test.json", "", _load(C)),
    ("cherma_wrong_npy_shape", C,
     lambda r, s: np.save(r / "cherma" / "visual" / "dev" / "c00001.mp4.npy", np.ones(2048, np.float32)),
     "cherma/visual/dev/c00001.mp4.npy", "visual has shape (2048,)", "", _load(C)),
    ("cherma_npy_dim_mismatch", C,
     lambda r, s: np.save(r / "cherma" / "audio" / "train" / "c00004.npy", np.ones((30, 512), np.float32)),
     "cherma/audio/train/c00004.npy", "audio has dim 512", "", _load(C)),
    ("cherma_missing_valid_split", C, lambda r, s: (r / "cherma" / "dev.json").unlink(), "cherma/valid.json",
     "split 'valid' not found", "", _load(C)),
    ("cherma_entry_without_text", C, lambda r, s: _edit_json(r / "cherma" / "test.json", lambda e: e[0].pop("text")),
     "cherma/test.json", "[0].text missing", "", _load(C)),
    ("cherma_text_feature_folder_missing_a_file", C, lambda r, s: (r / "cherma" / "text" / "train").mkdir(parents=True),
     "cherma/text/train/c00000.npy", "text feature file missing", "", _load(C)),
    ("cherma_dev_and_valid_both_present", C,
     lambda r, s: shutil.copy(r / "cherma" / "dev.json", r / "cherma" / "valid.json"), "cherma",
     "both valid.json and dev.json", "", _load(C)),
    ("cherma_duplicate_ids", C,
     lambda r, s: _edit_json(r / "cherma" / "train.json", lambda e: e[5].__setitem__("audio_file", e[2]["audio_file"])),
     "cherma/train.json", "[5].audio_file='c00002.wav'", "", _load(C)),
    ("checksum_mismatch_names_the_file", None, _bad_checksum, "unaligned_50.pkl", "sha256 mismatch", "",
     _load("mosei", verify_checksums=True)),
    ("checksum_listed_file_missing", None, lambda r, s: None, "features/a.npz", "does not exist", "",
     lambda root: verify_checksums(root, {"features/a.npz": "0" * 64})),
    ("checksum_file_malformed_line", None, lambda r, s: (r / "SHA256SUMS").write_text("not a checksum line\n"),
     "SHA256SUMS", "line 1", "", lambda root: verify_checksums(root)),
]


@pytest.mark.parametrize("case,release,edit,file,field,problem,load", CASES, ids=[c[0] for c in CASES])
def test_malformed_input(tmp_path, mmsa_splits, release_dirs, case, release, edit, file, field, problem, load):
    if release is not None:
        shutil.copytree(release_dirs[release], tmp_path / release)
    edit(tmp_path, copy.deepcopy(mmsa_splits["mosei"]))
    with pytest.raises(DataError) as excinfo:
        load(tmp_path)
    assert_one_line_error(excinfo, str(tmp_path / file) if file else str(tmp_path), field)
    assert problem in str(excinfo.value)


def test_a_feature_file_without_visual_is_not_called_unreadable(tmp_path, release_dirs):
    folder = Path(shutil.copytree(release_dirs["meld"], tmp_path / "meld"))
    write_npz(folder / "features" / "test" / "dia0_utt0.npz", {"audio": np.ones((5, 64), np.float32)})
    with pytest.raises(DataError, match="visual missing") as excinfo:
        load_dataset("meld", tmp_path)
    assert "readable" not in str(excinfo.value)


def test_nan_in_a_meld_feature_file_is_zeroed_and_counted_unless_strict(tmp_path, release_dirs):
    shutil.copytree(release_dirs["meld"], tmp_path / "meld")
    _meld_nan_feature(tmp_path, None)
    assert load_dataset("meld", tmp_path).cleaning["audio_nan"] == 1  # strict: an error (CASES)


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
