"""EGMF core: the model, its backbones, data loaders, metrics and the one train/eval loop.

The public functions are imported lazily so that light users (reports, metrics) never pay for
torch: ``from egmf_core import load_dataset, build_model, fit, evaluate, compute_metrics,
run_experiment``.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "load_dataset": "egmf_core.data",
    "build_model": "egmf_core.run",
    "run_experiment": "egmf_core.run",
    "fit": "egmf_core.train",
    "evaluate": "egmf_core.train",
    "compute_metrics": "egmf_core.metrics",
    "RunConfig": "egmf_core.config",
    "ModelConfig": "egmf_core.config",
    "TrainConfig": "egmf_core.config",
    "DataConfig": "egmf_core.config",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'egmf_core' has no attribute {name!r}")
