"""Where the repository is, the marker that stands for it in configs, and weight folder names, and the cache folder.

A config names files under the clone as ``<repo>/...`` so that a run's id (the hash of its
config) does not depend on where the repository lives; ``egmf_core.run`` and
``benchmarks.execution.profiles`` expand the marker right before a run. Standard library only.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
REPO_MARKER = "<repo>"


def default_cache_dir() -> Path:
    """Where built twins and converted checkpoints are cached: ``$EGMF_CACHE`` if set, else ``<repo>/.cache``."""
    return Path(os.environ.get("EGMF_CACHE") or REPO_ROOT / ".cache")

def expand_repo_marker(path: str, root: Path = REPO_ROOT) -> Path:
    """``<repo>/x`` -> ``x`` under ``root`` (this clone); any other path as given (``~`` expanded)."""
    if path.startswith(REPO_MARKER):
        return root / path[len(REPO_MARKER):].lstrip("/")
    return Path(path).expanduser()


DATA_ROOT_ENV = "EGMF_DATA_ROOT"  # the paper profile's datasets, when no --data-root is given
MODEL_ROOT_ENV = "EGMF_MODEL_ROOT"  # backbone weights, when no --model-root / model.model_path is given

# Backbone family -> the folder names its HF checkpoint may have under $EGMF_MODEL_ROOT, the
# first being where the paper profile expects it (benchmarks.execution.profiles.MODEL_DIRS).
FAMILY_DIRS: dict[str, tuple[str, ...]] = {
    "glm3": ("chatglm3-6b",),  # THUDM/chatglm3-6b (converted to the native Glm layout on load)
    "glm4": ("glm-4-9b-hf", "glm-4-9b-chat-hf"),  # THUDM/glm-4-9b-hf (GlmForCausalLM)
    "llama3": ("Meta-Llama-3-8B-Instruct",),  # meta-llama/Meta-Llama-3-8B-Instruct
}
FAMILIES: tuple[str, ...] = tuple(FAMILY_DIRS)  # the three backbone families: glm3, glm4, llama3
