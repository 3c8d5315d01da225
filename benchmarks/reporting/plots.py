"""Figures for the reports: pure functions of the tidy results table that write PNGs.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no global
backend switch) and saved without the "Software" metadata, so the same table gives the same PNG
bytes. Error bars are the std over seeds computed here, never seaborn's bootstrap (random).
Each function returns the paths it wrote; it writes nothing when there is nothing to plot.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from benchmarks.reporting.stats import (
    dataset_key_metric,
    display_name,
    gating_runs,
    higher_is_better,
    ok_metric_rows,
    paired_comparison,
    seed_values,
    to_display,
)
from benchmarks.reporting.training_curves import curve_frame
from egmf_core.atomic import atomic_write_bytes
from egmf_core.data.dataset import SPECS

REFERENCE_COLOR = "#c0392b"
ROW_COLOR = "#7f8c8d"
DPI = 100
_STYLE = {"font.size": 9, "axes.titlesize": 10}
LABEL_WIDTH = 14  # characters per tick-label line


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())
    return path


def _figure(n_panels: int, width: float = 3.6, height: float = 3.2) -> tuple[Figure, list]:
    fig = Figure(figsize=(max(width * n_panels, 4.0), height), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, list(axes)


def _cell_stats(df: pd.DataFrame, rows: Sequence[str], dataset: str, metric: str, split: str = "test"):
    """(rows present, means, stds, ns) in printed units for one dataset and metric; std is over
    the n seeds of each row (0 with one seed)."""
    ok = ok_metric_rows(df)
    sel = ok[(ok["dataset"] == dataset) & (ok["metric"] == metric) & (ok["split"] == split)]
    names, means, stds, ns = [], [], [], []
    for r in rows:
        v = sel.loc[sel["row"] == r].drop_duplicates(subset=["seed"], keep="last")["value"].to_numpy(dtype=float)
        if v.size == 0:
            continue
        names.append(r)
        means.append(to_display(metric, float(v.mean())))
        stds.append(to_display(metric, float(v.std(ddof=1))) if v.size > 1 else 0.0)
        ns.append(int(v.size))
    return names, np.array(means), np.array(stds), ns


def _datasets(df: pd.DataFrame, datasets: Sequence[str] | None) -> list[str]:
    present = set(df["dataset"].astype(str))
    return [d for d in (datasets or sorted(present)) if d in present]


def _wrap(text: str, width: int = LABEL_WIDTH) -> str:
    """Long tick labels and titles broken over lines, so they neither squash axes nor get cut."""
    return "\n".join(textwrap.wrap(str(text), width=width, break_long_words=False)) or str(text)


def _suptitle(fig: Figure, text: str) -> None:
    """A figure title wrapped to the figure's width (about 11 characters per inch), never cut."""
    fig.suptitle(_wrap(text, max(24, int(fig.get_figwidth() * 11))))


def _bar_panel(ax, names: list[str], means, stds, ns: list[int], colors: list, labels: list[str],
               skipped: dict[str, float]) -> None:
    """Bars with error bars = std over each bar's n seeds, n under each label; rows that are not
    comparable (too many unparseable answers) get no bar, only their label and the reason."""
    keep = [i for i, n in enumerate(names) if n not in skipped]
    xs = np.arange(len(names))
    ax.bar(xs[keep], np.asarray(means)[keep], yerr=np.asarray(stds)[keep], color=[colors[i] for i in keep],
           capsize=3, error_kw={"elinewidth": 1})
    wrapped = ["\n".join(_wrap(part) for part in lab.split("\n")) for lab in labels]
    ticks = [f"{lab}\n(n={n})" if name not in skipped else f"{lab}\nnot comparable:\n"
             f"{100 * skipped[name]:.0f}% unparseable" for lab, n, name in zip(wrapped, ns, names)]
    ax.set_xticks(xs, ticks, rotation=0, fontsize=7)
    ax.set_xlim(-0.6, len(names) - 0.4)  # the same slots whether or not every row has a bar
    if keep:
        lo = float(min(np.asarray(means)[keep] - np.asarray(stds)[keep]))
        hi = float(max(np.asarray(means)[keep] + np.asarray(stds)[keep]))
        pad = 0.1 * max(hi - lo, 1e-6)
        ax.set_ylim(min(0.0, lo - pad), hi + pad)


def _panel_width(n_bars: int) -> float:
    return max(2.8, 0.9 * n_bars + 1.0)


def ablation_bars(df: pd.DataFrame, out_dir: Path, *, table: str, rows: Sequence[str],
                  reference: str | None = None, datasets: Sequence[str] | None = None,
                  not_comparable: dict[tuple[str, str], float] | None = None) -> list[Path]:
    """Bars of each row's key metric (mean; error bar = std over the n seeds shown under each bar),
    one panel per dataset; the reference row is highlighted. ``not_comparable`` maps (row, dataset)
    to its unparseable share: those rows get no bar. Writes ``<table>_bars.png``."""
    panels = _key_metric_panels(df, rows, datasets)
    if not panels:
        return []

    def style(names, ds):
        return [REFERENCE_COLOR if n == reference else ROW_COLOR for n in names], names

    with rc_context(_STYLE), sns.axes_style("whitegrid"):
        fig = _key_metric_figure(df, rows, panels, not_comparable or {}, style)
        ref = f" (red = reference {reference})" if reference else ""
        _suptitle(fig, f"{table}: key metric per row{ref}; error bars = std over n seeds")
        return [_save(fig, Path(out_dir) / f"{table}_bars.png")]


def _key_metric_panels(df: pd.DataFrame, rows: Sequence[str], datasets: Sequence[str] | None) -> list[str]:
    """The datasets with at least one row's key metric in the results: one panel each."""
    return [d for d in _datasets(df, datasets) if _cell_stats(df, rows, d, dataset_key_metric(d))[0]]


def _key_metric_figure(df: pd.DataFrame, rows: Sequence[str], panels: list[str],
                       skip: dict[tuple[str, str], float], style: Callable) -> Figure:
    """One bar panel per dataset of each row's key metric; ``style(names, dataset)`` gives (colors, labels)."""
    fig, axes = _figure(len(panels), width=_panel_width(len(rows)), height=3.8)
    for ax, ds in zip(axes, panels):
        metric = dataset_key_metric(ds)
        names, means, stds, ns = _cell_stats(df, rows, ds, metric)
        colors, labels = style(names, ds)
        _bar_panel(ax, names, means, stds, ns, colors, labels, {r: v for (r, d), v in skip.items() if d == ds})
        ax.set_title(ds)
        ax.set_ylabel(display_name(metric))
    return fig


def _format_params(n: float) -> str:
    """A parameter count with three significant digits: 6.24B, 461M, 461k."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def backbone_bars(df: pd.DataFrame, out_dir: Path, *, table: str, rows: Sequence[str],
                  datasets: Sequence[str] | None = None,
                  not_comparable: dict[tuple[str, str], float] | None = None) -> list[Path]:
    """Backbones side by side on each dataset's key metric, each labelled with its total parameters
    on that dataset (from the results; the count depends on the dataset's labels and features).
    Writes ``<table>_backbones.png``."""
    panels = _key_metric_panels(df, rows, datasets)
    if not panels:
        return []
    params: dict[tuple[str, str], float] = {}
    if "total_params" in df.columns:
        totals = df.assign(total_params=pd.to_numeric(df["total_params"], errors="coerce"))
        for (r, d), v in totals.groupby(["row", "dataset"])["total_params"].mean().items():
            if np.isfinite(v):
                params[(r, d)] = float(v)
    palette = sns.color_palette("colorblind", n_colors=max(len(rows), 1))

    def style(names, ds):
        colors = [palette[list(rows).index(n)] for n in names]
        return colors, [f"{n}\n{_format_params(params[(n, ds)])} params" if (n, ds) in params else n for n in names]

    with rc_context(_STYLE), sns.axes_style("whitegrid"):
        fig = _key_metric_figure(df, rows, panels, not_comparable or {}, style)
        _suptitle(fig, f"{table}: backbones on each dataset's key metric; error bars = std over n seeds")
        return [_save(fig, Path(out_dir) / f"{table}_backbones.png")]


def lora_deltas(df: pd.DataFrame, out_dir: Path, *, table: str, pairs: Sequence[tuple[str, str, str]],
                datasets: Sequence[str] | None = None,
                not_comparable: dict[tuple[str, str], float] | None = None) -> list[Path]:
    """LoRA on minus off, per backbone, on each dataset's key metric (positive = LoRA helps,
    direction-aware), on the seeds both rows have, English datasets first, then Chinese.
    ``pairs`` = (backbone, on row, off row); a pair with a side in ``not_comparable`` is shown
    as "not comparable" instead of a bar. Writes ``<table>_lora_deltas.png``."""
    ds_all = _datasets(df, datasets)
    order = sorted(ds_all, key=lambda d: (SPECS[d].language != "en", ds_all.index(d)))
    skip = not_comparable or {}
    data: dict[str, list[tuple[str, float, int, float]]] = {}
    for ds in order:
        metric = dataset_key_metric(ds)
        for backbone, on, off in pairs:
            res = paired_comparison(seed_values(df, on, ds, metric), seed_values(df, off, ds, metric),
                                    higher_is_better=bool(higher_is_better(metric)))
            if res.n:
                bad = max(skip.get((on, ds), 0.0), skip.get((off, ds), 0.0))
                data.setdefault(ds, []).append((backbone, to_display(metric, res.mean_delta), res.n, bad))
    if not data:
        return []
    panels = [d for d in order if d in data]
    backbones = [b for b, _, _ in pairs]
    palette = sns.color_palette("colorblind", n_colors=max(len(backbones), 1))
    with rc_context(_STYLE), sns.axes_style("whitegrid"):
        fig, axes = _figure(len(panels), width=_panel_width(len(backbones)), height=3.8)
        for ax, ds in zip(axes, panels):
            entries = data[ds]
            names = [b for b, *_ in entries]
            skipped = {b: bad for b, _, _, bad in entries if bad}
            _bar_panel(ax, names, [v for _, v, _, _ in entries], [0.0] * len(entries), [n for _, _, n, _ in entries],
                       [palette[backbones.index(b)] for b in names], names, skipped)
            ax.axhline(0.0, color="black", linewidth=0.8)
            lang = "English" if SPECS[ds].language == "en" else "Chinese"
            ax.set_title(f"{ds} ({lang})")
            ax.set_ylabel(_wrap(f"LoRA on - off, {display_name(dataset_key_metric(ds))} (+ = better)", 30))
        _suptitle(fig, f"{table}: LoRA on minus off per backbone, mean paired delta over n matched seeds")
        return [_save(fig, Path(out_dir) / f"{table}_lora_deltas.png")]


def training_curves(df: pd.DataFrame, out_dir: Path, *, table: str, rows: Sequence[str],
                    datasets: Sequence[str] | None = None) -> list[Path]:
    """Validation key metric against the training step, mean over seeds per row, one panel per
    dataset (from the runs' valid_history). Writes ``<table>_training.png``; nothing when no run
    recorded a history."""
    curves = curve_frame(df, dataset_key_metric)
    panels = [d for d in _datasets(df, datasets) if (curves["dataset"] == d).any()]
    if not panels:
        return []
    palette = sns.color_palette("colorblind", n_colors=max(len(rows), 1))
    with rc_context(_STYLE), sns.axes_style("whitegrid"):
        fig, axes = _figure(len(panels), width=3.4, height=3.6)
        for ax, ds in zip(axes, panels):
            sel = curves[curves["dataset"] == ds]
            metric = dataset_key_metric(ds)
            for i, row in enumerate(rows):
                g = sel[sel["row"] == row].groupby("step")["value"].mean()
                if not g.empty:
                    ax.plot(g.index, [to_display(metric, v) for v in g.to_numpy()], marker="o", markersize=3,
                            color=palette[i % len(palette)], label=row)
            ax.set_title(ds)
            ax.set_xlabel("step")
            ax.set_ylabel(f"valid {display_name(metric)}")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5), fontsize=7)
        _suptitle(fig, f"{table}: validation key metric per step (mean over seeds)")
        return [_save(fig, Path(out_dir) / f"{table}_training.png")]


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
        _suptitle(fig, f"{table} / {row}: gating weights per expert (dashed = uniform)")
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
            axes[0].set_title(_wrap(f"{table} / {row} on {ds}: mean alpha per label", 40))
            written.append(_save(fig, Path(out_dir) / f"{table}_gating_by_label_{ds}.png"))
    return written


def _label_order(dataset: str) -> list[str]:
    spec = SPECS.get(dataset)
    if spec is None:
        return []
    return list(spec.labels) if spec.labels else ["negative", "neutral", "positive"]
