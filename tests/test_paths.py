"""One home per name: the weight folders the loader searches are the ones the paper profile expects."""

import pytest

from benchmarks.execution import profiles
from egmf_core import backbones
from egmf_core.config import ModelConfig
from egmf_core.paths import MODEL_ROOT_ENV


def test_paper_model_dirs_are_the_loaders_first_choice():
    assert profiles.MODEL_DIRS == {"glm3": "chatglm3-6b", "glm4": "glm-4-9b-hf", "llama3": "Meta-Llama-3-8B-Instruct"}


@pytest.mark.parametrize("family", sorted(profiles.MODEL_DIRS))
def test_the_loader_finds_the_folder_the_paper_profile_names(family, tmp_path, monkeypatch):
    monkeypatch.setenv(MODEL_ROOT_ENV, str(tmp_path))
    with pytest.raises(backbones.BackboneError, match=profiles.MODEL_DIRS[family]):  # named when missing
        backbones.resolve_model_dir(ModelConfig(backbone=family))
    (tmp_path / profiles.MODEL_DIRS[family]).mkdir()
    assert backbones.resolve_model_dir(ModelConfig(backbone=family)) == tmp_path / profiles.MODEL_DIRS[family]
