"""Round trips: synthetic twin in memory -> real on-disk format -> load_dataset -> identical arrays."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest

from egmf_core.data import DataError, checksums, convert, generate, load_dataset, synth, write_synthetic
from egmf_core.data.cherma_json import AUDIO_MAX_FRAMES
from egmf_core.data.meld_csv import decode_csv_bytes
from egmf_core.data.mmsa_pickle import write_mmsa_pickle
from egmf_core.data.validate import fix_text
from egmf_core.paths import REPO_ROOT

REPO = REPO_ROOT
SIZE = 24  # 24 / 8 / 8 samples: seconds for the whole file


def assert_same_dataset(loaded, expected):
    assert loaded.spec == expected.spec
    assert loaded.cleaning == expected.cleaning
    for split in ("train", "valid", "test"):
        a, b = getattr(loaded, split), getattr(expected, split)
        assert a.ids == b.ids
        assert a.text == b.text
        for field in ("audio", "audio_lengths", "vision", "vision_lengths", "labels"):
            x, y = getattr(a, field), getattr(b, field)
            assert x.dtype == y.dtype, (split, field)
            assert x.shape == y.shape, (split, field)
            np.testing.assert_array_equal(x, y, err_msg=f"{split}.{field}")


@pytest.mark.parametrize("name,fmt,source", [
    ("mosei", None, "mmsa-pickle"),
    ("sims_v2", None, "mmsa-pickle"),
    ("meld", None, "meld-csv"),
    ("meld", "pickle", "mmsa-pickle"),
    ("cherma", None, "cherma-json"),
    ("cherma", "pickle", "mmsa-pickle"),
])
def test_twin_round_trips_through_its_format(tmp_path, name, fmt, source):
    write_synthetic(name, tmp_path, seed=3, size=SIZE, fmt=fmt)
    loaded = load_dataset(name, tmp_path)
    assert loaded.source.endswith(f"({source})")
    assert_same_dataset(loaded, generate(name, seed=3, size=SIZE))


def test_canonical_dtypes_and_padding(tmp_path):
    write_synthetic("meld", tmp_path, size=SIZE)
    ds = load_dataset("meld", tmp_path)
    for split in ds.splits().values():
        assert split.audio.dtype == np.float32 and split.labels.dtype == np.int64
        assert split.audio.shape[1] == split.audio_lengths.max()  # padded to the split's longest
        i = int(np.argmin(split.audio_lengths))
        assert np.all(split.audio[i, split.audio_lengths[i]:] == 0)
        assert np.all(np.abs(split.audio[i, : split.audio_lengths[i]]).sum(-1) > 0)
    assert ds.audio_dim == 64 and ds.vision_dim == 64


def test_mosei_neg_inf_is_zeroed_and_counted(tmp_path):
    write_synthetic("mosei", tmp_path, size=SIZE)
    ds = load_dataset("mosei", tmp_path)
    twins = synth.generate_twin("mosei", size=SIZE)
    n_neg_inf = sum(int(np.isneginf(t.audio).sum()) for t in twins.values())
    assert n_neg_inf > 0
    assert ds.cleaning["audio_neg_inf"] == n_neg_inf
    assert all(np.isfinite(s.audio).all() for s in ds.splits().values())


def test_npz_form_matches_pickle_and_loads_without_pickle(tmp_path):
    folder = write_synthetic("sims_v2", tmp_path / "pkl", size=SIZE)
    out = tmp_path / "npz" / "sims_v2" / "unaligned.npz"
    assert convert.main([str(folder / "unaligned.pkl"), str(out)]) == 0
    with np.load(out, allow_pickle=False) as npz:
        assert npz["train/raw_text"].dtype.kind == "U"
        assert npz["train/regression_labels_T"].shape == (SIZE,)
        assert npz["train/text"].shape == (SIZE, 16, 768)
    assert_same_dataset(load_dataset("sims_v2", tmp_path / "npz"), load_dataset("sims_v2", tmp_path / "pkl"))
    assert load_dataset("sims_v2", tmp_path / "npz").source.endswith("(npz)")
    first = out.read_bytes()
    convert.convert_pickle_to_npz(folder / "unaligned.pkl", out)
    assert out.read_bytes() == first  # fixed zip timestamps


def test_root_may_be_the_dataset_folder_itself(tmp_path):
    folder = write_synthetic("mosei", tmp_path, size=SIZE)
    assert len(load_dataset("mosei", folder).train) == SIZE


def test_any_single_pickle_name_is_accepted(tmp_path):
    folder = write_synthetic("mosei", tmp_path, size=SIZE)
    (folder / "unaligned_50.pkl").rename(folder / "mosei_features.pkl")
    assert load_dataset("mosei", tmp_path).source.endswith("mosei_features.pkl (mmsa-pickle)")


def _numpy1_protocol2(obj) -> bytes:
    """A protocol-2 pickle naming numpy 1.x globals, as older MMSA releases were written."""
    return pickle.dumps(obj, protocol=2).replace(b"numpy._core.", b"numpy.core.")


@pytest.mark.parametrize("protocol", [2, 4])
def test_older_pickles_with_lists_and_float64_load(tmp_path, protocol):
    twins = synth.generate_twin("mosei", size=SIZE)
    splits = {s: synth.pickle_split("mosei", t) for s, t in twins.items()}
    for arrays in splits.values():  # MMSA stores some fields as lists, features sometimes as float64
        arrays["audio_lengths"] = arrays["audio_lengths"].tolist()
        arrays["id"] = list(arrays["id"])
        arrays["vision"] = arrays["vision"].astype(np.float64)
    path = tmp_path / "mosei" / "unaligned_50.pkl"
    path.parent.mkdir()
    data = _numpy1_protocol2(splits) if protocol == 2 else pickle.dumps(splits, protocol=4)
    if protocol == 2:
        assert b"numpy.core.multiarray\n_reconstruct" in data and b"_codecs\nencode" in data
    path.write_bytes(data)
    assert_same_dataset(load_dataset("mosei", tmp_path), generate("mosei", size=SIZE))


def test_nonzero_padding_is_zeroed_and_counted(tmp_path):
    twins = synth.generate_twin("meld", size=SIZE)
    splits = {s: synth.pickle_split("meld", t) for s, t in twins.items()}
    i = int(np.argmin(splits["train"]["vision_lengths"]))
    splits["train"]["vision"][i, -1, 0] = 5.0  # past the length: padding
    write_mmsa_pickle(tmp_path / "meld.pkl", splits)
    ds = load_dataset("meld", tmp_path)
    assert ds.cleaning["padding_zeroed"] == 1
    assert np.all(ds.train.vision[i, ds.train.vision_lengths[i]:] == 0)


def test_cherma_audio_is_cut_to_50_frames_and_release_spellings_map(tmp_path):
    folder = write_synthetic("cherma", tmp_path, size=8)
    np.save(folder / "audio" / "train" / "c00000.npy", np.ones((60, 1024), np.float32))
    ds = load_dataset("cherma", tmp_path)
    assert ds.train.audio_lengths[0] == AUDIO_MAX_FRAMES == 50
    assert ds.train.audio.shape[1] == 50
    from egmf_core.data.cherma_json import label_index
    index = label_index(ds.spec)
    assert index["惊奇"] == index["惊讶"] == ds.spec.labels.index("surprise") == 6
    assert index["平静"] == index["neutral"] == 4


def test_meld_text_repair():
    assert fix_text("I'm fine...") == "I'm fine..."
    assert fix_text("I\x92m fine\x85") == "I'm fine..."
    assert fix_text("I\u00e2\u20ac\u2122m fine\u00e2\u20ac\u00a6") == "I'm fine..."
    assert fix_text("\u201cHi\u201d \u2013 caf\u00e9") == '"Hi" - caf\u00e9'
    assert decode_csv_bytes("it’s".encode("cp1252")) == ("it’s", "cp1252")
    assert decode_csv_bytes(b"\xef\xbb\xbfok") == ("ok", "utf-8")


def test_meld_release_exercises_both_encodings(tmp_path):
    folder = write_synthetic("meld", tmp_path, size=60)
    dev = (folder / "dev_sent_emo.csv").read_bytes()
    train = (folder / "train_sent_emo.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        dev.decode("utf-8")  # cp1252 bytes, like a file saved on Windows
    assert "\x92".encode("utf-8") in train or "â€™".encode("utf-8") in train
    ds = load_dataset("meld", tmp_path)
    assert not any("\x92" in t or "â" in t for s in ds.splits().values() for t in s.text)
    assert any("'" in t for t in ds.valid.text + ds.train.text)


def test_checksums_write_and_verify(tmp_path):
    folder = write_synthetic("mosei", tmp_path, size=SIZE)
    assert checksums.main([str(folder)]) == 0
    sums = (folder / "SHA256SUMS").read_text().splitlines()
    assert sums == [f"{checksums.sha256_file(folder / 'unaligned_50.pkl')}  unaligned_50.pkl"]
    assert len(load_dataset("mosei", tmp_path, verify_checksums=True).train) == SIZE
    digest = checksums.sha256_file(folder / "unaligned_50.pkl")
    assert checksums.verify_checksums(folder, {"unaligned_50.pkl": digest}) == 1
    with pytest.raises(DataError, match="unaligned_50.pkl: sha256 mismatch"):
        load_dataset("mosei", tmp_path, checksums={"unaligned_50.pkl": "0" * 64})


def test_cli_entry_points_run_as_modules(tmp_path):
    out = subprocess.run([sys.executable, "-m", "egmf_core.data.synth", "sims_v2", str(tmp_path),
                          "--size", "8", "--seed", "1"], cwd=REPO, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == str(tmp_path / "sims_v2")
    assert len(load_dataset("sims_v2", tmp_path).test) == 8
    err = subprocess.run([sys.executable, "-m", "egmf_core.data.convert", str(tmp_path / "nope.pkl"),
                          str(tmp_path / "x.npz")], cwd=REPO, capture_output=True, text=True)
    assert err.returncode == 2 and "nope.pkl: file does not exist" in err.stderr


def test_detection_prefers_the_pickle_and_fmt_forces_the_release(tmp_path):
    write_synthetic("meld", tmp_path, seed=1, size=SIZE)  # CSV release
    write_synthetic("meld", tmp_path, seed=2, size=SIZE, fmt="pickle")  # meld.pkl beside it
    assert load_dataset("meld", tmp_path).source.endswith("meld.pkl (mmsa-pickle)")
    assert_same_dataset(load_dataset("meld", tmp_path, fmt="meld-csv"), generate("meld", seed=1, size=SIZE))
    with pytest.raises(DataError, match="fmt 'csv' is not one of"):
        load_dataset("meld", tmp_path, fmt="csv")
    with pytest.raises(DataError, match="fmt 'cherma-json' does not apply to meld"):
        load_dataset("meld", tmp_path, fmt="cherma-json")
    with pytest.raises(DataError, match="name 'iemocap' is not a dataset"):
        load_dataset("iemocap", tmp_path)


def test_english_pickle_text_gets_the_same_repair(tmp_path):
    twins = synth.generate_twin("meld", size=SIZE)
    splits = {s: synth.pickle_split("meld", t) for s, t in twins.items()}
    splits["train"]["raw_text"][0] = "I\x92m here\x85"
    write_mmsa_pickle(tmp_path / "meld.pkl", splits)
    assert load_dataset("meld", tmp_path).train.text[0] == "I'm here..."
