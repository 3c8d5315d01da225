"""One home per name: the weight folders the loader searches are the ones the paper profile expects."""

from benchmarks.execution import profiles
from egmf_core import backbones, paths


def test_paper_model_dirs_are_the_loaders_first_choice():
    assert profiles.MODEL_DIRS == {"glm3": "chatglm3-6b", "glm4": "glm-4-9b-hf", "llama3": "Meta-Llama-3-8B-Instruct"}
    assert backbones.FAMILY_DIRS == paths.FAMILY_DIRS  # until backbones.py imports it from egmf_core.paths
