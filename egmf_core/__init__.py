"""EGMF core: the model, its backbones, data loaders, metrics and the one train/eval loop.

The public API, which ``benchmarks/`` and the tests use, is imported from the module that owns
each name, so that a light user (reports, configs, metrics) never pays for torch:

* ``egmf_core.config``: ``RunConfig`` (``ModelConfig``, ``TrainConfig``, ``DataConfig``),
  ``apply_overrides``, ``validate``, ``config_hash`` and the allowed names (``DATASETS`` ...)
* ``egmf_core.data``: ``load_dataset``, ``find_dataset_folder``, ``detect_format``;
  ``egmf_core.data.dataset.SPECS``; ``egmf_core.data.synth.write_synthetic`` (the smoke data)
* ``egmf_core.run``: ``run_experiment`` (one config in, one ``egmf_core.outcome.RunOutcome``
  out), ``build_model``
* ``egmf_core.train``: ``fit``, ``evaluate`` (tokenizer and dataset spec come from their
  ``egmf_core.batching.PromptEncoder``); ``egmf_core.checkpoint``: ``Checkpointer``, ``FitState``,
  ``remove_checkpoint``
* ``egmf_core.metrics``: ``compute_metrics``, ``METRIC_INFO``, ``key_metric``
* ``egmf_core.lfs``: Git LFS pointer checks (the paper profile's preflight)
* ``egmf_core.atomic``: ``atomic_write_bytes``; ``egmf_core.paths``: ``REPO_ROOT``, ``REPO_MARKER``,
  ``FAMILIES``, ``FAMILY_DIRS``, ``DATA_ROOT_ENV``, ``MODEL_ROOT_ENV``

Everything else is internal to the core. Nothing here imports ``benchmarks``.
"""
