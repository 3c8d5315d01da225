"""Table 1: dataset statistics computed from the loaded data (no training), as a RunOutcome.

Metric names (split "train" / "valid" / "test" unless marked "all"):

* ``n_samples``; ``text_len_mean`` / ``text_len_max`` (words for English, characters for Chinese);
  ``audio_len_mean`` / ``audio_len_max`` and ``visual_len_mean`` / ``visual_len_max`` (frames);
* classification: ``label_share:<label>`` (share of the split), ``n_classes``;
* regression: ``label_mean``, ``label_std``, ``label_min``, ``label_max``, ``label_share_zero``;
* "all": ``audio_dim``, ``visual_dim``, ``audio_pad_len``, ``visual_pad_len``, ``language:<code>``
  (1.0), ``n_classes`` or nothing, ``cleaning:<what>`` (counts the loader repaired: padding,
  and NaN / inf feature values set to 0 as ``cleaning:vision_nan``, ``cleaning:audio_pos_inf``, ...),
  and, when valid was carved from train (``python -m egmf_core.data.split``),
  ``valid_split:seed`` and ``valid_split:fraction`` (its sha256 is in the data source).
"""

from __future__ import annotations

import time

import numpy as np

from egmf_core.config import RunConfig
from egmf_core.outcome import RunOutcome


def split_statistics(split, spec) -> dict[str, float]:
    """The statistics of one split (a ``egmf_core.data.dataset.Split``)."""
    n = len(split)
    out: dict[str, float] = {"n_samples": float(n)}
    if n == 0:
        return out
    if spec.language == "zh":
        text_lens = np.array([len("".join(t.split())) for t in split.text], dtype=float)
    else:
        text_lens = np.array([len(t.split()) for t in split.text], dtype=float)
    audio_lens = np.asarray(split.audio_lengths, dtype=float)
    visual_lens = np.asarray(split.vision_lengths, dtype=float)
    for name, lens in (("text", text_lens), ("audio", audio_lens), ("visual", visual_lens)):
        out[f"{name}_len_mean"] = float(lens.mean())
        out[f"{name}_len_max"] = float(lens.max())
    labels = np.asarray(split.labels)
    if spec.task == "classification":
        counts = np.bincount(labels.astype(np.int64), minlength=len(spec.labels))
        for i, label in enumerate(spec.labels):
            out[f"label_share:{label}"] = float(counts[i] / n)
        out["n_classes"] = float(len(spec.labels))
    else:
        y = labels.astype(np.float64)
        out.update(label_mean=float(y.mean()), label_std=float(y.std()), label_min=float(y.min()),
                   label_max=float(y.max()), label_share_zero=float(np.mean(y == 0.0)))
    return out


def dataset_statistics(cfg: RunConfig, *, progress=None, checkpoint_dir=None) -> RunOutcome:
    """Load ``cfg``'s dataset (root already resolved) and describe it; never trains.

    Bad data raise ValueError from the loader, like a training run would.
    """
    from egmf_core.data import load_dataset
    from egmf_core.data.provenance import portable_source

    t0 = time.perf_counter()
    if progress is not None:
        progress(0, 1, f"loading {cfg.data.name}")
    data = load_dataset(cfg.data.name, cfg.data.root, strict=cfg.data.strict)
    metrics = {name: split_statistics(split, data.spec) for name, split in data.splits().items()}
    whole: dict[str, float] = {
        "audio_dim": float(data.audio_dim),
        "visual_dim": float(data.vision_dim),
        "audio_pad_len": float(data.train.audio.shape[1]),
        "visual_pad_len": float(data.train.vision.shape[1]),
        "n_samples": float(sum(len(s) for s in data.splits().values())),
        f"language:{data.spec.language}": 1.0,
    }
    if data.spec.task == "classification":
        whole["n_classes"] = float(len(data.spec.labels))
    whole.update({f"cleaning:{k}": float(v) for k, v in sorted(data.cleaning.items())})
    if data.valid_split:
        whole.update({"valid_split:seed": float(data.valid_split["seed"]),
                      "valid_split:fraction": float(data.valid_split["valid_fraction"])})
    metrics["all"] = whole
    if progress is not None:
        progress(1, 1, "done")
    return RunOutcome(status="ok", metrics=metrics, cost={"wall_s": time.perf_counter() - t0}, device="cpu",
                      data_source=portable_source(data.source, cfg.data.root), data_cleaning=dict(data.cleaning))


def non_finite_summary(datasets, cleaning_json) -> str:
    """"mosei: 26 vision NaN, 1 vision +inf" over a results table's (dataset, data_cleaning_json)
    pairs (the largest count per dataset and key: every run reads the same files), or "none"."""
    import json

    names = {"nan": "NaN", "pos_inf": "+inf", "neg_inf": "-inf"}
    found: dict[str, dict[str, int]] = {}
    for dataset, raw in zip(datasets, cleaning_json):
        try:
            counts = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            continue
        for key, n in counts.items():
            modality, _, kind = key.partition("_")
            if kind in names and n and key != "audio_neg_inf":  # audio -inf: MOSEI's silence, by design
                best = found.setdefault(dataset, {})
                best[f"{modality} {names[kind]}"] = max(best.get(f"{modality} {names[kind]}", 0), int(n))
    return "; ".join(f"{ds}: " + ", ".join(f"{n:,} {what}" for what, n in sorted(c.items()))
                     for ds, c in sorted(found.items())) or "none"
