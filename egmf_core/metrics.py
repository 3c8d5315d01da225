"""The field's evaluation metrics for the four datasets, as pure functions of (y_true, y_pred).

Definitions follow MMSA (``src/MMSA/utils/metricsTop.py``) for MOSEI and SIMS-V2, which is what
the proxy and the paper's peers report, and scikit-learn for the emotion datasets. Every value
is a plain float; accuracies and F1 scores are fractions in [0, 1] (reports print them as
percentage points), MAE and Pearson correlation are in the label's own units.

Inputs are validated once, here: 1-D, same length, non-empty, finite, and for classification
integer class indices inside the dataset's label set. Errors are :class:`MetricInputError`
naming the argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, f1_score

from egmf_core.data.dataset import SPECS


class MetricInputError(ValueError):
    """Bad metric input; the message names the argument (``y_true``, ``y_pred``, ``name``)."""


@dataclass(frozen=True)
class MetricInfo:
    """How to read one metric key: its printed name, direction and unit."""

    key: str
    display_name: str  # as reports print it, e.g. "Acc-2 (non-0)"
    higher_is_better: bool  # False for MAE: a "drop" in MAE is an improvement
    scale: str  # "fraction" (print x100 as points) | "raw" (label units)
    definition: str  # one line; the full definition is in the function's docstring


METRIC_INFO: dict[str, MetricInfo] = {m.key: m for m in (
    MetricInfo("acc2_has0", "Acc-2 (has-0)", True, "fraction", "accuracy of y<0 vs y>=0, all samples"),
    MetricInfo("f1_has0", "F1 (has-0)", True, "fraction", "weighted F1 of y<0 vs y>=0, all samples"),
    MetricInfo("acc2_non0", "Acc-2 (non-0)", True, "fraction", "accuracy of y<0 vs y>0, y_true==0 dropped"),
    MetricInfo("f1_non0", "F1 (non-0)", True, "fraction", "weighted F1 of y<0 vs y>0, y_true==0 dropped"),
    MetricInfo("acc2", "Acc-2", True, "fraction", "SIMS-V2: accuracy on [-1,0] vs (0,1]"),
    MetricInfo("acc3", "Acc-3", True, "fraction", "SIMS-V2: accuracy on [-1,-.1], (-.1,.1], (.1,1]"),
    MetricInfo("acc5", "Acc-5", True, "fraction", "MOSEI: round(clip(y,-2,2)); SIMS-V2: 5 bins"),
    MetricInfo("acc7", "Acc-7", True, "fraction", "MOSEI: accuracy of round(clip(y,-3,3))"),
    MetricInfo("f1", "F1", True, "fraction", "SIMS-V2: weighted F1 on the Acc-2 split"),
    MetricInfo("mae", "MAE", False, "raw", "mean absolute error"),
    MetricInfo("corr", "Corr", True, "raw", "Pearson correlation; 0.0 if either side is constant"),
    MetricInfo("acc", "Acc", True, "fraction", "accuracy"),
    MetricInfo("wf1", "WF1", True, "fraction", "F1 averaged over classes weighted by true support"),
    MetricInfo("macro_f1", "Macro-F1", True, "fraction", "unweighted mean F1 over classes in y_true or y_pred"),
)}

METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "mosei": ("acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc5", "acc7", "mae", "corr"),
    "sims_v2": ("acc2", "acc3", "acc5", "f1", "mae", "corr"),
    "meld": ("acc", "wf1", "macro_f1"),
    "cherma": ("acc", "wf1", "macro_f1"),
}

# SIMS-V2 bin edges (MMSA's ms_2/ms_3/ms_5 without the outer +-1.01); each bin is (left, right]
# and the first is closed on the left at -1 because values are clipped to [-1, 1] first.
SIMS_V2_EDGES: dict[int, tuple[float, ...]] = {
    2: (0.0,),
    3: (-0.1, 0.1),
    5: (-0.7, -0.1, 0.1, 0.7),
}


def key_metric(name: str) -> str:
    """The validation metric that selects checkpoints: ``"wf1"`` for MELD/CHERMA, ``"mae"`` for MOSEI/SIMS-V2."""
    _check_name(name)
    return SPECS[name].key_metric


def metric_keys(name: str) -> tuple[str, ...]:
    """The keys :func:`compute_metrics` returns for dataset ``name``, in report order."""
    _check_name(name)
    return METRIC_KEYS[name]


def compute_metrics(name: str, y_true, y_pred) -> dict[str, float]:
    """All metrics the field reports for dataset ``name`` (see :data:`METRIC_KEYS`).

    Parameters
    ----------
    name : {"mosei", "sims_v2", "meld", "cherma"}
    y_true, y_pred : array-like of shape (n_samples,)
        Scores for MOSEI/SIMS-V2, class indices into ``SPECS[name].labels`` for MELD/CHERMA.

    Returns
    -------
    dict
        Metric key -> float, keys in the order of ``METRIC_KEYS[name]``.

    Examples
    --------
    >>> compute_metrics("meld", [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0])["acc"]
    0.6666666666666666
    >>> try:
    ...     compute_metrics("imdb", [1], [1])
    ... except ValueError as err:
    ...     print(err)
    name: unknown dataset 'imdb' (known: cherma, meld, mosei, sims_v2)
    """
    _check_name(name)
    if name == "mosei":
        return mosei_metrics(y_true, y_pred)
    if name == "sims_v2":
        return sims_v2_metrics(y_true, y_pred)
    return classification_metrics(y_true, y_pred, n_classes=len(SPECS[name].labels))


def mosei_metrics(y_true, y_pred) -> dict[str, float]:
    """CMU-MOSEI regression metrics, exactly as MMSA computes them.

    * ``acc2_has0`` / ``f1_has0``: every sample, class ``y < 0`` (negative) vs ``y >= 0``
      (non-negative); F1 is sklearn's weighted F1 (weights = true support).
    * ``acc2_non0`` / ``f1_non0``: samples with ``y_true == 0`` are dropped (the mask uses
      ``y_true`` only), then ``y > 0`` vs ``y <= 0`` on both sides, so a kept prediction of
      exactly 0 counts as negative.
    * ``acc7``: clip both to [-3, 3], then ``np.round`` (round half to even: 0.5 -> 0,
      1.5 -> 2, 2.5 -> 2, -0.5 -> -0), then exact match.
    * ``acc5``: the same after clipping to [-2, 2].
    * ``mae``: mean absolute error on the raw, unclipped values (MMSA does not clip here).
    * ``corr``: Pearson correlation of the raw values; 0.0 when either side is constant
      (``scipy.stats.pearsonr`` returns nan there, MMSA's ``np.corrcoef`` too).

    If every ``y_true`` is 0 the non-0 metrics are undefined and returned as nan.
    Clipping and rounding run in the input's precision (float32 stays float32), as MMSA does
    on float32 tensors; MAE and correlation are computed in float64.

    Examples
    --------
    Six samples; the has-0 split is [-, -, +, +, +, +] for y_true and [-, +, -, +, +, +] for
    y_pred (4/6 agree); dropping y_true == 0 leaves 5 samples of which 4 agree; Acc-7 misses
    sample 0 (-3 vs -2) and sample 5 (2 vs 1); MAE = (0.4+0.6+0.1+0+1.0+0.6)/6 = 0.45.

    >>> m = mosei_metrics([-2.6, -0.4, 0.0, 0.5, 1.5, 2.0], [-2.2, 0.2, -0.1, 0.5, 2.5, 1.4])
    >>> {k: round(v, 4) for k, v in m.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'acc2_has0': 0.6667, 'f1_has0': 0.6667, 'acc2_non0': 0.8, 'f1_non0': 0.781,
     'acc5': 0.8333, 'acc7': 0.6667, 'mae': 0.45, 'corr': 0.9379}
    """
    t, p = _check_scores(y_true, y_pred)
    has0_t, has0_p = t >= 0, p >= 0
    keep = t != 0
    if keep.any():
        non0_t, non0_p = t[keep] > 0, p[keep] > 0
        acc2_non0 = float(accuracy_score(non0_t, non0_p))
        f1_non0 = _weighted_f1(non0_t, non0_p)
    else:
        acc2_non0 = f1_non0 = float("nan")
    return {
        "acc2_has0": float(accuracy_score(has0_t, has0_p)),
        "f1_has0": _weighted_f1(has0_t, has0_p),
        "acc2_non0": acc2_non0,
        "f1_non0": f1_non0,
        "acc5": _rounded_accuracy(t, p, bound=2.0),
        "acc7": _rounded_accuracy(t, p, bound=3.0),
        "mae": _mae(t, p),
        "corr": pearson_corr(t, p),
    }


def sims_v2_metrics(y_true, y_pred) -> dict[str, float]:
    """CH-SIMS v2 regression metrics, exactly as MMSA computes them.

    Both sides are first clipped to [-1, 1]; every metric, MAE and correlation included, uses
    the clipped values. Bins (see :func:`sims_v2_classes`), left-open and right-closed except
    the first:

    * ``acc2``: [-1, 0], (0, 1]  (a score of exactly 0 is negative)
    * ``acc3``: [-1, -0.1], (-0.1, 0.1], (0.1, 1]
    * ``acc5``: [-1, -0.7], (-0.7, -0.1], (-0.1, 0.1], (0.1, 0.7], (0.7, 1]
    * ``f1``: sklearn's weighted F1 on the ``acc2`` classes.
    * ``mae``, ``corr``: as in :func:`mosei_metrics` but on the clipped values.

    Examples
    --------
    y_pred clips to [-1, 0.1, 0.05, 0.7, 0.6]; Acc-2 classes are [0,0,0,1,1] vs [0,1,1,1,1]
    (3/5); Acc-3 [0,0,1,2,2] vs [0,1,1,2,2] (4/5); Acc-5 [0,1,2,3,4] vs [0,2,2,3,3] (3/5);
    MAE = (0.2+0.2+0.05+0.3+0.4)/5 = 0.23.

    >>> m = sims_v2_metrics([-0.8, -0.1, 0.0, 0.4, 1.0], [-1.2, 0.1, 0.05, 0.7, 0.6])
    >>> {k: round(v, 4) for k, v in m.items()}
    {'acc2': 0.6, 'acc3': 0.8, 'acc5': 0.6, 'f1': 0.5667, 'mae': 0.23, 'corr': 0.9075}
    """
    t, p = _check_scores(y_true, y_pred)
    t, p = _clip(t, 1.0), _clip(p, 1.0)
    t2, p2 = sims_v2_classes(t, 2), sims_v2_classes(p, 2)
    return {
        "acc2": float(accuracy_score(t2, p2)),
        "acc3": float(accuracy_score(sims_v2_classes(t, 3), sims_v2_classes(p, 3))),
        "acc5": float(accuracy_score(sims_v2_classes(t, 5), sims_v2_classes(p, 5))),
        "f1": _weighted_f1(t2, p2),
        "mae": _mae(t, p),
        "corr": pearson_corr(t, p),
    }


def sims_v2_classes(values, n_classes: int) -> np.ndarray:
    """The SIMS-V2 bin index (0 = most negative) of each score, for 2, 3 or 5 bins.

    Bins are right-closed: a value exactly on an edge goes to the lower bin, so -0.1 is in
    [-1, -0.1] and 0.1 in (-0.1, 0.1]. Edges are compared in the input's own precision, so a
    float32 -0.7 sits exactly on the -0.7 edge (as in MMSA, whose tensors are float32). Values
    are clipped to [-1, 1] first.

    >>> sims_v2_classes([-1.0, -0.7, -0.69, -0.1, 0.0, 0.1, 0.7, 0.71, 1.0], 5).tolist()
    [0, 0, 1, 1, 2, 2, 3, 4, 4]
    """
    if n_classes not in SIMS_V2_EDGES:
        raise MetricInputError(f"n_classes: expected one of 2, 3, 5, got {n_classes!r}")
    v = _clip(_as_float(np.asarray(values)), 1.0)
    edges = np.asarray(SIMS_V2_EDGES[n_classes], dtype=v.dtype)
    # searchsorted(side="left") counts edges strictly below v: bin i is (edges[i-1], edges[i]].
    return np.searchsorted(edges, v, side="left").astype(np.int64)


def classification_metrics(y_true, y_pred, n_classes: int) -> dict[str, float]:
    """Emotion-recognition metrics: ``acc``, ``wf1`` (weighted F1) and ``macro_f1``.

    ``wf1`` averages per-class F1 weighted by each class's support in ``y_true`` (MELD's and
    CHERMA's headline metric). ``macro_f1`` is the unweighted mean of per-class F1 over the
    classes that occur in ``y_true`` or ``y_pred`` (sklearn's default label set); a class in
    ``y_true`` that is never predicted contributes F1 = 0, a class absent from both sides is
    not averaged. Values must be integer class indices in ``[0, n_classes)``.

    Examples
    --------
    Per-class F1 is 0.5, 2/3, 0.8 for classes 0, 1, 2 (supports 2, 1, 3); classes 3-6 never
    occur. Macro = (0.5+0.6667+0.8)/3, weighted = (2*0.5+0.6667+3*0.8)/6.

    >>> m = classification_metrics([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], n_classes=7)
    >>> {k: round(v, 4) for k, v in m.items()}
    {'acc': 0.6667, 'wf1': 0.6778, 'macro_f1': 0.6556}
    """
    t, p = _check_classes(y_true, y_pred, n_classes)
    return {
        "acc": float(accuracy_score(t, p)),
        "wf1": _weighted_f1(t, p),
        "macro_f1": float(f1_score(t, p, average="macro", zero_division=0)),
    }


def per_class_f1(y_true, y_pred, labels: Sequence[str]) -> dict[str, float]:
    """F1 of every class, keyed by its name, over ``labels=range(len(labels))``.

    A class never predicted, or absent from both sides, gets 0.0 (``zero_division=0``), so the
    dict always has one entry per label, in index order.

    >>> per_class_f1([0, 1, 2, 2], [0, 1, 1, 1], ["neutral", "joy", "anger"])
    {'neutral': 1.0, 'joy': 0.5, 'anger': 0.0}
    """
    labels = list(labels)
    if not labels:
        raise MetricInputError("labels: empty label list")
    t, p = _check_classes(y_true, y_pred, len(labels))
    scores = f1_score(t, p, labels=list(range(len(labels))), average=None, zero_division=0)
    return {name: float(s) for name, s in zip(labels, scores)}


def acc2_positive(name: str, values) -> np.ndarray:
    """Which side of the dataset's headline Acc-2 split each score falls on (True = positive).

    MOSEI's has-0 split puts 0 with the positives (``y >= 0``); SIMS-V2 puts it with the
    negatives (``y > 0``). Used to construct answers that are guaranteed wrong.

    >>> acc2_positive("mosei", [0.0]).tolist(), acc2_positive("sims_v2", [0.0]).tolist()
    ([True], [False])
    """
    _check_name(name)
    v = _as_float(np.asarray(values))
    if name == "mosei":
        return v >= 0
    if name == "sims_v2":
        return sims_v2_classes(v, 2) == 1
    raise MetricInputError(f"name: {name!r} is not a regression dataset")


def pearson_corr(y_true, y_pred) -> float:
    """Pearson's r via ``scipy.stats.pearsonr``; 0.0 when either side is constant.

    pearsonr (like MMSA's ``np.corrcoef``) returns nan for a constant input; a model that
    always answers the same score carries no linear information, so we report 0.0 rather
    than letting a nan reach tables and averages across seeds.

    Deviations from the means are (-1, 0, 1) and (-1, 1, 0): r = 1 / sqrt(2 * 2) = 0.5.

    >>> round(pearson_corr([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]), 12)
    0.5
    >>> pearson_corr([1.0, 2.0, 3.0], [0.5, 0.5, 0.5])
    0.0
    """
    t, p = _check_scores(y_true, y_pred)
    t, p = t.astype(np.float64), p.astype(np.float64)
    if len(t) < 2 or np.ptp(t) == 0 or np.ptp(p) == 0:
        return 0.0
    return float(pearsonr(t, p).statistic)


# ---- helpers: validation at the boundary, arithmetic inside -------------------------------

def _check_name(name: str) -> None:
    if name not in METRIC_KEYS:
        raise MetricInputError(f"name: unknown dataset {name!r} (known: {', '.join(sorted(METRIC_KEYS))})")


def _as_1d(arg: str, values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise MetricInputError(f"{arg}: expected a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise MetricInputError(f"{arg}: empty")
    if arr.dtype.kind not in "biuf":
        raise MetricInputError(f"{arg}: expected numbers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise MetricInputError(f"{arg}: {bad.size} non-finite value(s) (NaN/inf), first at index {bad[0]}")
    return arr


def _check_pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t, p = _as_1d("y_true", y_true), _as_1d("y_pred", y_pred)
    if len(t) != len(p):
        raise MetricInputError(f"y_pred: length {len(p)} does not match y_true's {len(t)}")
    return t, p


def _check_scores(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t, p = _check_pair(y_true, y_pred)
    return _as_float(t), _as_float(p)


def _check_classes(y_true, y_pred, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    pair = _check_pair(y_true, y_pred)
    out = []
    for arg, arr in zip(("y_true", "y_pred"), pair):
        if arr.dtype.kind == "f" and np.any(arr != np.round(arr)):
            idx = int(np.flatnonzero(arr != np.round(arr))[0])
            raise MetricInputError(f"{arg}: class indices must be integers, got {arr[idx]} at index {idx}")
        arr = arr.astype(np.int64)
        bad = np.flatnonzero((arr < 0) | (arr >= n_classes))
        if bad.size:
            raise MetricInputError(
                f"{arg}: class index {arr[bad[0]]} at index {bad[0]} is outside [0, {n_classes})")
        out.append(arr)
    return out[0], out[1]


def _as_float(arr: np.ndarray) -> np.ndarray:
    # Keep float32 as float32 so decimal edges (-0.7, 0.1) compare exactly, as in MMSA.
    return arr if arr.dtype == np.float32 else arr.astype(np.float64)


def _clip(values: np.ndarray, bound: float) -> np.ndarray:
    return np.clip(values, -bound, bound)


def _rounded_accuracy(t: np.ndarray, p: np.ndarray, bound: float) -> float:
    return float(np.mean(np.round(_clip(t, bound)) == np.round(_clip(p, bound))))


def _mae(t: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(np.abs(t.astype(np.float64) - p.astype(np.float64))))


def _weighted_f1(t: np.ndarray, p: np.ndarray) -> float:
    return float(f1_score(t, p, average="weighted", zero_division=0))
