"""Figures for the reports: pure functions of the tidy results table that write PNGs.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no global
backend switch) and saved without the "Software" metadata, so the same table gives the same PNG
bytes. Error bars are the std over seeds computed here, never seaborn's bootstrap (random).
Each function returns the paths it wrote; it writes nothing when there is nothing to plot.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from benchmarks.stats import dataset_key_metric, display_name, gating_runs, improvement, ok_metric_rows, to_display
from egmf_core.checkpoint import atomic_write_bytes
from egmf_core.data.dataset import SPECS

REFERENCE_COLOR = "#c0392b"
ROW_COLOR = "#7f8c8d"
DPI = 100
_STYLE = {"font.size": 9, "axes.titlesize": 10}


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (the suite's one writer: temp, fsync, rename, fsync dir)."""
    atomic_write_bytes(path, data)


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    write_file_atomically(path, buf.getvalue())
    return path


def _figure(n_panels: int, width: float = 3.6, height: float = 3.2) -> tuple[Figure, list]:
    fig = Figure(figsize=(max(width * n_panels, 4.0), height), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, list(axes)


def _cell_stats(df: pd.DataFrame, rows: Sequence[str], dataset: str, metric: str, split: str = "test"):
    """(rows present, means, stds) in printed units for one dataset and metric."""
    ok = ok_metric_rows(df)
    sel = ok[(ok["dataset"] == dataset) & (ok["metric"] == metric) & (ok["split"] == split)]
    names, means, stds = [], [], []
    for r in rows:
        v = sel.loc[sel["row"] == r, "value"].to_numpy(dtype=float)
        if v.size == 0:
            continue
        names.append(r)
        means.append(to_display(metric, float(v.mean())))
        stds.append(to_display(metric, float(v.std(ddof=1))) if v.size > 1 else 0.0)
    return names, np.array(means), np.array(stds)


def _datasets(df: pd.DataFrame, datasets: Sequence[str] | None) -> list[str]:
    present = set(df["dataset"].astype(str))
    return [d for d in (datasets or sorted(present)) if d in present]


def ablation_bars(df: pd.DataFrame, out_dir: Path, *, table: str, rows: Sequence[str],
                  reference: str | None = None, datasets: Sequence[str] | None = None) -> list[Path]:
    """Bars of each row's key metric (mean, error bar = std over seeds), one panel per dataset;
    the reference row is highlighted. Writes ``<table>_bars.png``."""
    panels = [d for d in _datasets(df, datasets) if _cell_stats(df, rows, d, dataset_key_metric(d))[0]]
    if not panels:
        return []
    with rc_context(_STYLE), sns.axes_style("whitegrid"):
        fig, axes = _figure(len(panels))
        for ax, ds in zip(axes, panels):
            metric = dataset_key_metric(ds)
            names, means, stds = _cell_stats(df, rows, ds, metric)
            colors = [REFERENCE_COLOR if n == reference else ROW_COLOR for n in names]
            ax.bar(range(len(names)), means, yerr=stds, color=colors, capsize=3)
            ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
            ax.set_title(ds)
            ax.set_ylabel(display_name(metric))
        if reference:
            fig.suptitle(f"{table}: key metric per row (red = reference {reference})")
        return [_save(fig, Path(out_dir) / f"{table}_bars.png")]


def backbone_bars(df: pd.DataFrame, out_dir: Path, *, table: str, rows: Sequence[str],
                  datasets: Sequence[str] | None = None) -> list[Path]:
    """Backbones side by side on each dataset's key metric, labelled with their total parameters
    (from the results). Writes ``<table>_backbones.png``."""
    panels = [d for d in _datasets(df, datasets) if _cell_stats(df, rows, d, dataset_key_metric(d))[0]]
    if not panels:
        return []
    params = {}
    if "total_params" in df.columns:
        totals = pd.to_numeric(df["total_params"], errors="coerce")
        p = df.assign(total_params=totals).groupby("row")["total_params"].mean()
        params = {r: float(v) for r, v in p.items() if np.isfinite(v)}
    palette = sns.color_palette("colorblind", n_colors=max(len(rows), 1))
    with rc_context(_STYLE), sns.axes_style("whitegrid"):
        fig, axes = _figure(len(panels))
        for ax, ds in zip(axes, panels):
            metric = dataset_key_metric(ds)
            names, means, stds = _cell_stats(df, rows, ds, metric)
            colors = [palette[list(rows).index(n)] for n in names]
            ax.bar(range(len(names)), means, yerr=stds, color=colors, capsize=3)
            labels = [f"{n}\n{params[n] / 1e6:.1f}M params" if n in params else n for n in names]
            ax.set_xticks(range(len(names)), labels, rotation=30, ha="right")
            ax.set_title(ds)
            ax.set_ylabel(display_name(metric))
        fig.suptitle(f"{table}: backbones on each dataset's key metric")
        return [_save(fig, Path(out_dir) / f"{table}_backbones.png")]


def lora_deltas(df: pd.DataFrame, out_dir: Path, *, table: str, pairs: Sequence[tuple[str, str, str]],
                datasets: Sequence[str] | None = None) -> list[Path]:
    """LoRA on minus off, per backbone, on each dataset's key metric (positive = LoRA helps,
    direction-aware), English datasets first, then Chinese. ``pairs`` = (backbone, on row, off
    row). Writes ``<table>_lora_deltas.png``."""
    ds_all = _datasets(df, datasets)
    order = sorted(ds_all, key=lambda d: (SPECS[d].language != "en", ds_all.index(d)))
    data: dict[str, list[tuple[str, float]]] = {}
    for ds in order:
        metric = dataset_key_metric(ds)
        for backbone, on, off in pairs:
            names, means, _ = _cell_stats(df, [on, off], ds, metric)
            if names == [on, off]:
                # means are in printed units already; improvement() only reads the direction
                data.setdefault(ds, []).append((backbone, improvement(metric, means[0], means[1])))
    if not data:
        return []
    panels = [d for d in order if d in data]
    backbones = [b for b, _, _ in pairs]
    palette = sns.color_palette("colorblind", n_colors=max(len(backbones), 1))
    with rc_context(_STYLE), sns.axes_style("whitegrid"):
        fig, axes = _figure(len(panels), width=2.8)
        for ax, ds in zip(axes, panels):
            names = [b for b, _ in data[ds]]
            values = [v for _, v in data[ds]]
            ax.bar(range(len(names)), values, color=[palette[backbones.index(b)] for b in names])
            ax.axhline(0.0, color="black", linewidth=0.8)
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
            lang = "English" if SPECS[ds].language == "en" else "Chinese"
            ax.set_title(f"{ds} ({lang})")
            ax.set_ylabel(f"LoRA on - off, {display_name(dataset_key_metric(ds))} (+ = better)")
        fig.suptitle(f"{table}: LoRA on minus off per backbone")
        return [_save(fig, Path(out_dir) / f"{table}_lora_deltas.png")]


def gating_alpha_box(df: pd.DataFrame, out_dir: Path, *, table: str, row: str,
                     datasets: Sequence[str] | None = None) -> list[Path]:
    """Per-run mean alpha of each expert (box + points over seeds), one panel per dataset, for
    one row. Writes ``<table>_gating_alpha.png``."""
    runs = gating_runs(df)
    runs = runs[runs["row"] == row]
    panels = [d for d in _datasets(df, datasets) if (runs["dataset"] == d).any()]
    if not panels:
        return []
    with rc_context(_STYLE), sns.axes_style("whitegrid"):
        fig, axes = _figure(len(panels), width=3.0)
        for ax, ds in zip(axes, panels):
            long = pd.DataFrame(
                [{"expert": e, "alpha": float(a)} for alpha in runs.loc[runs["dataset"] == ds, "alpha"]
                 for e, a in sorted(alpha.items())]
            )
            experts = sorted(long["expert"].unique())
            per_expert = [long.loc[long["expert"] == e, "alpha"].to_numpy() for e in experts]
            # matplotlib's own boxplot: seaborn 0.13's passes the deprecated `vert` to matplotlib 3.11
            ax.boxplot(per_expert, tick_labels=experts, showfliers=False, patch_artist=True,
                       boxprops={"facecolor": "#d5dbdb"}, medianprops={"color": "black"})
            for i, values in enumerate(per_expert, start=1):
                ax.scatter(np.full(len(values), i), values, color="black", s=12, zorder=3)
            ax.set_xlabel("expert")
            ax.axhline(1.0 / len(experts), color=REFERENCE_COLOR, linestyle="--", linewidth=0.8)
            ax.set_ylim(0.0, 1.0)
            ax.set_title(ds)
            ax.set_ylabel("mean alpha per run")
        fig.suptitle(f"{table} / {row}: gating weights per expert (dashed = uniform)")
        return [_save(fig, Path(out_dir) / f"{table}_gating_alpha.png")]


def gating_alpha_by_label(df: pd.DataFrame, out_dir: Path, *, table: str, row: str,
                          datasets: Sequence[str] | None = None) -> list[Path]:
    """Heatmap of mean alpha per label (emotion, or sentiment bin) and expert, averaged over
    seeds, for one row; one PNG per dataset: ``<table>_gating_by_label_<dataset>.png``."""
    runs = gating_runs(df)
    runs = runs[runs["row"] == row]
    written = []
    for ds in _datasets(df, datasets):
        tables = [t for t in runs.loc[runs["dataset"] == ds, "alpha_by_label"] if isinstance(t, dict) and t]
        if not tables:
            continue
        frame = pd.concat([pd.DataFrame(t).T for t in tables]).groupby(level=0).mean()
        known = _label_order(ds)
        labels = [lab for lab in known if lab in frame.index] + sorted(set(frame.index) - set(known))
        frame = frame.loc[labels, sorted(frame.columns)]
        with rc_context(_STYLE), sns.axes_style("white"):
            fig, axes = _figure(1, width=4.2, height=0.35 * len(labels) + 1.6)
            sns.heatmap(frame, ax=axes[0], vmin=0.0, vmax=1.0, annot=True, fmt=".2f", cmap="viridis", cbar=False)
            axes[0].set_xlabel("expert")
            axes[0].set_ylabel("label")
            axes[0].set_title(f"{table} / {row} on {ds}: mean alpha per label")
            written.append(_save(fig, Path(out_dir) / f"{table}_gating_by_label_{ds}.png"))
    return written


def _label_order(dataset: str) -> list[str]:
    spec = SPECS.get(dataset)
    if spec is None:
        return []
    return list(spec.labels) if spec.labels else ["negative", "neutral", "positive"]
