"""CHERMA's release has train and test only: the refusal names the split tool, which carves valid."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.execution.dataset_stats import dataset_statistics
from egmf_core.config import RunConfig
from egmf_core.data import DataError, load_dataset, write_synthetic
from egmf_core.data.dataset import CHERMA_LABELS
from egmf_core.data.split import main as split_main
from egmf_core.data.valid_split import stratified_valid_indices
from tests.test_data_processed import write_processed

COMMAND = "python -m egmf_core.data.split cherma ROOT --valid-fraction 0.1 --seed 0"


@pytest.fixture()
def release_without_valid(tmp_path):
    folder = write_synthetic("cherma", tmp_path, size=30)
    (folder / "dev.json").unlink()  # the twin names its validation split dev.json
    return tmp_path, folder


def test_loader_refusal_names_the_split_command(release_without_valid):
    root, folder = release_without_valid
    with pytest.raises(DataError) as excinfo:
        load_dataset("cherma", root)
    assert str(excinfo.value) == (f"{folder / 'valid.json'}: missing: split 'valid' not found (the original "
                                  f"release has train/test only: make one with `{COMMAND}`)")


def test_split_tool_carves_a_stratified_deterministic_valid(release_without_valid, capsys):
    root, folder = release_without_valid
    full_train = json.loads((folder / "train.json").read_text(encoding="utf-8"))
    assert split_main(["cherma", str(root), "--valid-fraction", "0.2", "--seed", "0"]) == 0
    manifest_path = folder / "valid_split.json"
    first = manifest_path.read_bytes()
    manifest = json.loads(first)
    assert manifest["seed"] == 0 and manifest["valid_fraction"] == 0.2
    assert len(manifest["train_sha256"]) == 64 and len(manifest["valid_sha256"]) == 64
    ds = load_dataset("cherma", root)
    assert len(ds.train) + len(ds.valid) == len(full_train) == 30
    assert len(ds.valid) == len(manifest["valid_indices"])
    assert not set(ds.train.ids) & set(ds.valid.ids)
    for c in range(len(CHERMA_LABELS)):  # each class gives round(0.2 * n_c) (at least 1 of 2+)
        n_c = int((ds.train.labels == c).sum() + (ds.valid.labels == c).sum())
        expected = 0 if n_c < 2 else min(max(round(0.2 * n_c), 1), n_c - 1)
        assert int((ds.valid.labels == c).sum()) == expected
    assert ds.valid_split["seed"] == 0 and "valid_split.json (seed 0" in ds.source
    manifest_path.unlink()
    assert split_main(["cherma", str(root), "--valid-fraction", "0.2", "--seed", "0"]) == 0
    assert manifest_path.read_bytes() == first  # same data, fraction, seed: same bytes
    assert split_main(["cherma", str(root), "--valid-fraction", "0.2", "--seed", "1"]) == 0
    assert json.loads(manifest_path.read_bytes())["valid_ids"] != manifest["valid_ids"]


def test_split_is_reported_in_table_1(release_without_valid):
    root, _ = release_without_valid
    split_main(["cherma", str(root), "--seed", "3"])
    cfg = RunConfig.from_dict({"profile": "paper", "data": {"name": "cherma", "root": str(root)}})
    outcome = dataset_statistics(cfg)
    assert outcome.metrics["all"]["valid_split:seed"] == 3.0
    assert outcome.metrics["all"]["valid_split:fraction"] == 0.1
    assert "valid carved from train" in outcome.data_source


def test_a_changed_train_refuses_the_old_manifest(release_without_valid):
    root, folder = release_without_valid
    split_main(["cherma", str(root)])
    train = json.loads((folder / "train.json").read_text(encoding="utf-8"))
    (folder / "train.json").write_text(json.dumps(train[:-1], ensure_ascii=False), encoding="utf-8")
    with pytest.raises(DataError, match=r"valid_split\.json: n_train_source=30 but train has 29 samples"):
        load_dataset("cherma", root)


def test_processed_cherma_without_valid(tmp_path, capsys):
    write_processed(tmp_path, "cherma", "CHERMA0723", splits=("train", "test"))
    with pytest.raises(DataError, match="make one with `python -m egmf_core.data.split cherma ROOT"):
        load_dataset("cherma", tmp_path)
    assert split_main(["cherma", str(tmp_path), "--valid-fraction", "0.3", "--seed", "0"]) == 0
    assert "valid_split.json: 2 of 9 train samples form valid" in capsys.readouterr().out
    ds = load_dataset("cherma", tmp_path)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (7, 2, 5)


def test_split_refuses_a_release_that_has_valid(tmp_path, capsys):
    write_synthetic("cherma", tmp_path, size=8)
    with pytest.raises(SystemExit) as excinfo:
        split_main(["cherma", str(tmp_path)])
    assert excinfo.value.code == 2
    assert "dev.json: exists: this release has a validation split already" in capsys.readouterr().err


def test_stratified_draw_by_hand():
    labels = np.array([0] * 10 + [1] * 5 + [2])
    idx = stratified_valid_indices(labels, 0.2, seed=0)
    assert np.bincount(labels[idx], minlength=3).tolist() == [2, 1, 0]
    np.testing.assert_array_equal(idx, stratified_valid_indices(labels, 0.2, seed=0))
