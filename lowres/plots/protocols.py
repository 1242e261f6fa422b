"""The figures of a sweep's other protocols (``lowres sweep --protocol``), drawn only when the
table holds their rows: ``rank1_vs_resolution``, ``cmc`` and ``ring_margin_rank1`` (closed
set), ``tpir_vs_resolution`` (open set), ``template_vs_resolution`` and
``ring_margin_template`` (template 1:1). The two margin figures are
:func:`lowres.plots.sweep.figure_ring_margin` on their rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lowres.plots.style import (
    caption,
    draw_curves,
    fmt_far,
    log2_size_axis,
    model_legend,
    model_line,
    new_figure,
    width_panels,
)

PROTOCOL_FIGURE_STEMS = (
    "rank1_vs_resolution",
    "cmc",
    "ring_margin_rank1",
    "tpir_vs_resolution",
    "template_vs_resolution",
    "ring_margin_template",
)
"""Figures a sweep draws only with ``--protocol identification`` / ``open-set`` / ``template``."""

RANK_METRICS = ("rank1", "rank5", "rank10")


def _rate_figure(prim: pd.DataFrame, panels, styles: dict[str, dict], ylabel: str, title: str):
    """A rate vs probe width figure: one panel per ``(rows, panel title)`` of ``panels``, one
    curve per model with its Clopper-Pearson band, rates on [0, 1]; ``title`` heads the
    figure's caption."""
    fig, axes = new_figure(len(panels))
    for ax, (sub, panel_title) in zip(axes[0], panels, strict=True):
        draw_curves(ax, sub, styles)
        ax.set_title(panel_title, fontsize=10)
        log2_size_axis(ax, sub["size_px"].dropna().astype(int).unique())
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel(ylabel)
    model_legend(fig, axes, styles)
    fig.suptitle(title + caption(prim), fontsize=10)
    return fig


def figure_rank_vs_resolution(prim: pd.DataFrame, styles: dict[str, dict]):
    """Rank-k identification rate vs probe width, one panel per k (rank-1 first), with
    Clopper-Pearson bands; None without rank rows."""
    metrics = [m for m in RANK_METRICS if (prim["metric"] == m).any()]
    if not metrics:
        return None
    panels = []
    for metric in metrics:
        sub = prim[prim["metric"] == metric]
        n = int(sub["n_genuine"].max()) if sub["n_genuine"].notna().any() else 0
        panels.append((sub, f"rank {metric[len('rank') :]}  ({n} probes)"))
    return _rate_figure(
        prim,
        panels,
        styles,
        "identification rate",
        "Closed-set identification vs probe resolution\n(clean gallery: each identity's first "
        "image; pessimistic ties; bands: 95% Clopper-Pearson)\n",
    )


def figure_cmc(cmc: pd.DataFrame, styles: dict[str, dict], cap: str = ""):
    """CMC curves from ``cmc.csv`` (averaged over seeds): one panel per probe width, one curve
    per model; None when the table is empty."""
    if cmc.empty:
        return None
    cmc = cmc.groupby(["model", "size_px", "rank"], as_index=False)["rate"].mean()
    sizes = sorted(cmc["size_px"].unique(), reverse=True)
    fig, axes, _, _ = width_panels(len(sizes))
    for i, ax in enumerate(axes.flat[: len(sizes)]):
        sub = cmc[cmc["size_px"] == sizes[i]]
        for model, g in sub.groupby("model"):
            if model in styles:
                g = g.sort_values("rank")
                model_line(ax, g["rank"].to_numpy(float), g["rate"], styles[model])
        ax.set_xscale("log")
        ax.set_title(f"{int(sizes[i])} px", fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("rank")
    for row in axes:
        row[0].set_ylabel("identification rate (rank <= k)")
    model_legend(fig, axes, styles)
    fig.suptitle("Cumulative match characteristic per probe width\n" + cap, fontsize=10)
    return fig


def figure_tpir_vs_resolution(prim: pd.DataFrame, styles: dict[str, dict]):
    """Open-set TPIR vs probe width, one panel per FPIR target, with Clopper-Pearson bands;
    None without ``tpir`` rows."""
    tpir = prim[prim["metric"] == "tpir"]
    if tpir.empty:
        return None
    fpirs = sorted(tpir["far"].unique())
    panels = []
    for fpir in fpirs:
        sub = tpir[np.isclose(tpir["far"], fpir)]
        title = f"FPIR = {fmt_far(fpir)}"
        if bool(sub["flagged"].fillna(False).any()):
            n = int(sub["n_impostor"].max())
            title += f"  (below 1/{n} non-mated: FPIR-0 point)"
        panels.append((sub, title))
    return _rate_figure(
        prim,
        panels,
        styles,
        "true-positive identification rate (TPIR)",
        "Open-set identification vs probe resolution\n(half the identities enrolled; bands: "
        "95% Clopper-Pearson)\n",
    )


def figure_template_vs_resolution(prim: pd.DataFrame, styles: dict[str, dict]):
    """Template 1:1 TAR vs probe width, one panel per FAR, with Clopper-Pearson bands (seed
    means where there are several seeds); None without ``template_tar`` rows."""
    rows = prim[prim["metric"] == "template_tar"]
    if rows.empty:
        return None
    fars = sorted(rows["far"].unique())
    panels = []
    for far in fars:
        sub = rows[np.isclose(rows["far"], far)]
        n_gen, n_imp = int(sub["n_genuine"].max()), int(sub["n_impostor"].max())
        panels.append((sub, f"FAR = {fmt_far(far)}  ({n_gen:,} / {n_imp:,} template pairs)"))
    return _rate_figure(
        prim,
        panels,
        styles,
        "template TAR",
        "Template 1:1 verification vs probe resolution\n(templates: mean of L2-normalised "
        "features; probe-side templates degraded; bands: 95% Clopper-Pearson)\n",
    )
