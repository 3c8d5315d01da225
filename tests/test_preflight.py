"""The paper profile's preflight: LFS pointer stubs and unreadable files end the grid in one line, exit 2."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from benchmarks.cli import main
from benchmarks.execution.profiles import MODEL_DIRS
from egmf_core.backbones import BackboneError, build_backbone
from egmf_core.config import ModelConfig
from egmf_core.convert_chatglm3 import ChatGLMConversionError, load_chatglm_state_dict
from egmf_core.data import DataError, load_dataset
from egmf_core.data.synth import write_synthetic
from egmf_core.twins import save_twin_real_layout

POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
           b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12477\n")


def stub(path: Path) -> None:
    path.write_bytes(POINTER)


@pytest.fixture(scope="module")
def twin_layouts(tmp_path_factory):
    base = tmp_path_factory.mktemp("twins")
    return {f: save_twin_real_layout(f"{f}-tiny", base / f) or base / f for f in ("glm3", "llama3")}


def paper_roots(tmp_path: Path, twin_layouts, family: str = "glm3") -> tuple[Path, Path, Path]:
    data_root, model_root = tmp_path / "data", tmp_path / "models"
    write_synthetic("sims_v2", data_root, seed=0, size=8)
    model_dir = model_root / MODEL_DIRS[family]
    model_dir.mkdir(parents=True)
    for f in twin_layouts[family].iterdir():
        (model_dir / f.name).write_bytes(f.read_bytes())
    return data_root, model_root, model_dir


def reproduce(tmp_path, data_root, model_root, capsys) -> tuple[int, str]:
    rc = main(["reproduce", "3", "--profile", "paper", "--data-root", str(data_root), "--model-root", str(model_root),
               "--datasets", "sims_v2", "--seeds", "1111", "--results-root", str(tmp_path / "results"),
               "--reports-root", str(tmp_path / "reports"), "--no-report"])
    return rc, capsys.readouterr().err


def test_model_folder_of_lfs_stubs_is_one_line_exit_2_nothing_written(tmp_path, twin_layouts, capsys):
    data_root, model_root, model_dir = paper_roots(tmp_path, twin_layouts)
    for name in ("model.safetensors", "tokenizer.model"):
        stub(model_dir / name)
    rc, err = reproduce(tmp_path, data_root, model_root, capsys)
    assert rc == 2
    assert err == (f"error: {model_dir / 'model.safetensors'}: is a Git LFS pointer, not the file "
                   f"(run git lfs pull in {model_dir})\n")
    assert not (tmp_path / "results").exists()


def test_data_file_as_lfs_stub_is_refused_before_any_run(tmp_path, twin_layouts, capsys):
    data_root, model_root, _ = paper_roots(tmp_path, twin_layouts)
    pkl = data_root / "sims_v2" / "unaligned.pkl"
    stub(pkl)
    rc, err = reproduce(tmp_path, data_root, model_root, capsys)
    assert rc == 2
    assert err == f"error: {pkl}: is a Git LFS pointer, not the file (run git lfs pull in {pkl.parent})\n"
    assert not (tmp_path / "results").exists()
    with pytest.raises(DataError, match="is a Git LFS pointer"):  # and the loader says the same
        load_dataset("sims_v2", data_root)


def test_corrupt_sentencepiece_tokenizer_is_one_line_naming_it(tmp_path, twin_layouts, capsys):
    data_root, model_root, model_dir = paper_roots(tmp_path, twin_layouts)
    (model_dir / "tokenizer.model").write_bytes(b"\x0a\xff\xff\xff\xff\xff" * 40)  # protobuf: wire format corrupt
    rc, err = reproduce(tmp_path, data_root, model_root, capsys)
    assert rc == 2
    assert err.startswith(f"error: {model_dir / 'tokenizer.model'}: cannot load the tokenizer (")
    assert err.count("\n") == 1
    assert not (tmp_path / "results").exists()


def test_architecture_mismatch_is_found_by_preflight(tmp_path, twin_layouts, capsys):
    data_root, model_root, model_dir = paper_roots(tmp_path, twin_layouts)
    (model_dir / "config.json").write_text((twin_layouts["llama3"] / "config.json").read_text())
    rc, err = reproduce(tmp_path, data_root, model_root, capsys)
    assert rc == 2 and "model_type='llama' is not a glm3 checkpoint" in err
    assert not (tmp_path / "results").exists()


def _hostile_bin(path: Path) -> None:
    class Boom:
        def __reduce__(self):
            import os

            return (os.system, ("echo hacked",))

    path.write_bytes(pickle.dumps({"w": Boom()}, protocol=2))  # torch.load(weights_only=True) refuses os.system


def test_unpicklable_llama_weights_name_the_file_without_weights_only_advice(tmp_path, twin_layouts):
    model_dir = tmp_path / "llama"
    model_dir.mkdir()
    for f in twin_layouts["llama3"].iterdir():
        if f.suffix != ".safetensors":
            (model_dir / f.name).write_bytes(f.read_bytes())
    _hostile_bin(model_dir / "pytorch_model.bin")
    with pytest.raises(BackboneError) as excinfo:
        build_backbone(ModelConfig(backbone="llama3", model_path=str(model_dir), lora=False), device="cpu")
    msg = str(excinfo.value)
    assert msg.startswith(f"{model_dir / 'pytorch_model.bin'}: cannot load the model (")
    assert "weights_only=False" not in msg and "\n" not in msg


def test_chatglm3_converter_names_an_unpicklable_shard(tmp_path):
    _hostile_bin(tmp_path / "pytorch_model.bin")
    with pytest.raises(ChatGLMConversionError) as excinfo:
        load_chatglm_state_dict(tmp_path)
    msg = str(excinfo.value)
    assert msg == (f"{tmp_path / 'pytorch_model.bin'}: cannot load the weights (torch cannot unpickle it "
                   "safely: the file is corrupt, truncated or not a checkpoint)")
    stub(tmp_path / "pytorch_model.bin")
    with pytest.raises(ChatGLMConversionError, match="pytorch_model.bin: is a Git LFS pointer"):
        load_chatglm_state_dict(tmp_path)
