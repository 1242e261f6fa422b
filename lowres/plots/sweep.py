"""The sweep's figures, drawn only from its tidy tables, and :func:`plot_run`, which redraws
them when the tables changed."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lowres.errors import ResultsError
from lowres.files import atomic_write_text
from lowres.plots.protocols import (
    figure_cmc,
    figure_rank_vs_resolution,
    figure_template_vs_resolution,
    figure_tpir_vs_resolution,
)
from lowres.plots.style import (
    FIGURES_DIR,
    X_LABEL,
    caption,
    draw_curves,
    fmt_far,
    log2_size_axis,
    model_legend,
    model_line,
    model_styles,
    new_figure,
    save_figure,
    width_panels,
)
from lowres.results import primary_rows, read_table
from lowres.training_logs import TRAINING_FILE, read_training


def figure_tar_vs_resolution(prim: pd.DataFrame, styles: dict[str, dict]):
    """Figure 1 from primary rows: ``tar_mean`` (several seeds: seed mean with an identity +
    seed bootstrap band) where the table has it, else ``tar`` (Clopper-Pearson bands)."""
    has_mean = bool((prim["metric"] == "tar_mean").any())
    tar = prim[prim["metric"] == ("tar_mean" if has_mean else "tar")]
    fars = sorted(tar["far"].unique())
    if not fars:
        raise ResultsError("no TAR rows to plot; the results table is empty")
    fig, axes = new_figure(len(fars))
    sizes = tar["size_px"].dropna().astype(int).unique()
    for ax, far in zip(axes[0], fars, strict=True):
        sub = tar[np.isclose(tar["far"], far)]
        draw_curves(ax, sub, styles)
        n_imp = int(sub["n_impostor"].max()) if sub["n_impostor"].notna().any() else 0
        flagged = bool(sub["flagged"].fillna(False).any())
        title = f"FAR = {fmt_far(far)}"
        if flagged:
            title += f"  (below 1/{n_imp} impostors: FAR-0 point)"
        ax.set_title(title, fontsize=10)
        log2_size_axis(ax, sizes)
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("verification rate (TAR)")
    model_legend(fig, axes, styles)
    fig.suptitle(
        "Verification rate vs probe resolution\n(bands: "
        + (
            "seed mean, 95% bootstrap over identities and seeds"
            if has_mean
            else "95% Clopper-Pearson"
        )
        + ")\n"
        + caption(prim),
        fontsize=10,
    )
    return fig


def figure_roc(roc: pd.DataFrame, styles: dict[str, dict], caption: str = ""):
    """Figure 2 from ``roc.csv`` rows (averaged over seeds)."""
    roc = roc.groupby(["model", "size_px", "far"], as_index=False)["tar"].mean()
    sizes = sorted(roc["size_px"].unique(), reverse=True)
    fig, axes, ncols, nrows = width_panels(len(sizes))
    for i, ax in enumerate(axes.flat[: len(sizes)]):
        size = sizes[i]
        sub = roc[roc["size_px"] == size]
        for model, g in sub.groupby("model"):
            st = styles[model]
            g = g[g["far"] > 0].sort_values("far")
            ax.plot(
                g["far"],
                g["tar"],
                color=st["color"],
                linestyle=st["linestyle"],
                linewidth=1.6,
                zorder=st["zorder"],
            )
        ax.set_xscale("log")
        ax.set_title(f"probe width {int(size)} px", fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, which="major", alpha=0.3)
        if i // ncols == nrows - 1 or i + ncols >= len(sizes):
            ax.set_xlabel("false accept rate (FAR, log)")
        if i % ncols == 0:
            ax.set_ylabel("true accept rate (TAR)")
    model_legend(fig, axes, styles)
    fig.suptitle("ROC per probe resolution\n" + caption, fontsize=10)
    return fig


def figure_norms(norms: pd.DataFrame, styles: dict[str, dict], caption: str = ""):
    """Figure 3 from ``norms.csv`` rows: boxes of norm / clean mean, per width per model."""
    models = sorted(norms["model"].unique(), key=lambda m: styles[m]["order"])
    sizes = sorted(norms["size_px"].unique(), reverse=True)
    from matplotlib.figure import Figure

    width = max(8.5, 0.22 * len(models) * len(sizes) + 3.5)
    fig = Figure(figsize=(width, 4.2), layout="constrained")
    ax = fig.subplots()
    n = len(models)
    box_w = 0.8 / n
    for j, model in enumerate(models):
        st = styles[model]
        data = [
            norms.loc[(norms["model"] == model) & (norms["size_px"] == s), "norm_rel"].dropna()
            for s in sizes
        ]
        pos = np.arange(len(sizes)) - 0.4 + box_w * (j + 0.5)
        bp = ax.boxplot(
            [d.to_numpy() for d in data],
            positions=pos,
            widths=box_w * 0.85,
            patch_artist=True,
            showfliers=False,
            manage_ticks=False,
        )
        for patch in bp["boxes"]:
            patch.set_facecolor(st["color"])
            patch.set_alpha(0.85 if st["linestyle"] == "-" else 0.45)
            patch.set_edgecolor(st["color"])
            patch.set_linestyle(st["linestyle"] if st["linestyle"] != ":" else "-")
        for part in ("whiskers", "caps"):
            for line in bp[part]:
                line.set_color(st["color"])
        for line in bp["medians"]:
            line.set_color("black")
            line.set_linewidth(1.0)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--", zorder=0)
    ax.set_xticks(np.arange(len(sizes)))
    ax.set_xticklabels([str(int(s)) for s in sizes])
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel("feature norm / model's mean clean norm")
    ax.grid(True, axis="y", alpha=0.3)
    from matplotlib.patches import Patch

    handles = [
        Patch(
            facecolor=styles[m]["color"],
            edgecolor=styles[m]["color"],
            alpha=0.85 if styles[m]["linestyle"] == "-" else 0.45,
        )
        for m in models
    ]
    fig.legend(handles, models, title="model", loc="outside right upper", frameon=False)
    fig.suptitle(
        "Feature-norm distribution per probe resolution\n"
        "(boxes: quartiles, whiskers: 1.5 IQR, 1 = the model's clean mean)\n" + caption,
        fontsize=10,
    )
    return fig


def figure_genuine_cosine(prim: pd.DataFrame, styles: dict[str, dict]):
    """Figure 4 from primary rows (``genuine_cos_mean``; ``impostor_cos_mean`` in the inset)."""
    gen = prim[prim["metric"] == "genuine_cos_mean"]
    fig, axes = new_figure(1, panel=(5.5, 3.8))
    ax = axes[0][0]
    for model, g in gen.groupby("model"):
        g = g.sort_values("size_px")
        model_line(ax, g["size_px"].to_numpy(float), g["value"], styles[model])
    log2_size_axis(ax, gen["size_px"].dropna().astype(int).unique())
    ax.set_ylabel("mean cosine of genuine pairs")
    ax.grid(True, alpha=0.3)
    model_legend(fig, axes, styles)
    fig.suptitle("Genuine-pair similarity vs probe resolution\n" + caption(prim), fontsize=10)
    return fig


MARGIN_METRICS = {
    "ring_margin": ("TAR", "TAR difference (+R minus base)"),
    "ring_margin_rank1": ("rank-1", "rank-1 difference (+R minus base)"),
    "ring_margin_template": ("template TAR", "template TAR difference (+R minus base)"),
}
"""Ring-margin rows a figure is drawn for: what the margin is of, and its axis label."""


def figure_ring_margin(prim: pd.DataFrame, styles: dict[str, dict], metric: str = "ring_margin"):
    """Figure 5 from primary rows (``ring_margin``; or the same for rank-1 or template TAR with
    ``metric`` ``ring_margin_rank1`` / ``ring_margin_template``): one panel per FAR (a single
    panel for rank-1, which has none); None when the sweep has no +R/base pair."""
    several_seeds = bool((prim["metric"] == "tar_mean").any())
    margin = prim[prim["metric"] == metric]
    if margin.empty:
        return None
    what, ylabel = MARGIN_METRICS[metric]
    fars = sorted(margin["far"].dropna().unique()) or [None]
    # one panel (rank-1) gets the width of two, so the title and legend have room
    fig, axes = new_figure(len(fars), panel=(8.4 if fars == [None] else 4.2, 3.4))
    labels = {}
    for ax, far in zip(axes[0], fars, strict=True):
        sub = margin if far is None else margin[np.isclose(margin["far"], far)]
        for model, g in sub.groupby("model"):
            g = g.sort_values("size_px")
            st = styles[model]
            x = g["size_px"].to_numpy(float)
            ax.fill_between(
                x, g["ci_low"], g["ci_high"], color=st["color"], alpha=0.18, linewidth=0
            )
            ax.plot(
                x, g["value"], color=st["color"], marker=st["marker"], markersize=4, linewidth=1.8
            )
            labels[model] = f"{model} - {g['reference'].iloc[0]}"
        ax.axhline(0.0, color="black", linewidth=0.9)
        ax.set_title(what if far is None else f"FAR = {fmt_far(far)}", fontsize=10)
        log2_size_axis(ax, margin["size_px"].dropna().astype(int).unique())
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    from matplotlib.lines import Line2D

    names = sorted(labels, key=lambda m: styles[m]["order"])
    handles = [
        Line2D([], [], color=styles[m]["color"], marker=styles[m]["marker"], linewidth=2)
        for m in names
    ]
    fig.legend(
        handles,
        [labels[m] for m in names],
        title="Ring-loss margin",
        loc="outside right upper",
        frameon=False,
    )
    fig.suptitle(
        ("Ring-loss margin" if metric == "ring_margin" else f"Ring-loss margin on {what}")
        + " vs probe resolution\n(bands: 95% paired bootstrap over identities"
        + (" and seeds" if several_seeds else "")
        + ")\n"
        + caption(prim),
        fontsize=10,
    )
    return fig


def figure_scores(scores: pd.DataFrame, prim: pd.DataFrame, styles: dict[str, dict]):
    """Figure 6 from ``scores.csv`` rows (counts summed over seeds) and primary rows."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    counts = scores.groupby(["model", "size_px", "bin_low", "bin_high"], as_index=False)[
        ["n_genuine", "n_impostor"]
    ].sum()
    models = sorted(counts["model"].unique(), key=lambda m: styles[m]["order"])
    sizes = sorted(counts["size_px"].unique(), reverse=True)
    fars = sorted(prim.loc[prim["metric"] == "transfer_frr", "far"].dropna().unique())
    far = min(fars, key=lambda f: abs(math.log10(f) + 2.0)) if fars else None

    def value(metric, model, size=None, column="value"):
        sel = (prim["metric"] == metric) & (prim["model"] == model)
        if size is not None:
            sel &= prim["size_px"] == size
        if metric.startswith("transfer"):
            sel &= np.isclose(prim["far"].astype(float), far)
        got = prim.loc[sel, column]
        return float(got.iloc[0]) if len(got) else math.nan

    occupied = counts[(counts["n_genuine"] + counts["n_impostor"]) > 0]
    lo = max(-1.0, math.floor(occupied["bin_low"].min() * 10) / 10) if len(occupied) else -1.0
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.2 * len(sizes) + 2.4, 1.45 * len(models) + 1.3), layout="constrained")
    axes = fig.subplots(len(models), len(sizes), squeeze=False, sharex=True)
    impostor_colour = (0.72, 0.72, 0.72)
    for r, model in enumerate(models):
        st = styles[model]
        threshold = value("transfer_far", model, column="threshold") if far else math.nan
        for c, size in enumerate(sizes):
            ax = axes[r][c]
            g = counts[(counts["model"] == model) & (counts["size_px"] == size)]
            g = g.sort_values("bin_low")
            if g.empty:  # this model has no cell at this width
                ax.set_axis_off()
                continue
            edges = np.append(g["bin_low"].to_numpy(float), g["bin_high"].to_numpy(float)[-1:])
            width = np.diff(edges)
            for column, colour, alpha in (
                ("n_impostor", impostor_colour, 0.9),
                ("n_genuine", st["color"], 0.55),
            ):
                n = g[column].to_numpy(float)
                density = n / max(n.sum(), 1.0) / width
                # One filled StepPatch with its own outline: half the patches of fill + line,
                # and patch-limit updates are most of this figure's drawing time.
                ax.stairs(
                    density,
                    edges,
                    fill=True,
                    facecolor=(*colour[:3], alpha),
                    edgecolor=colour,
                    linewidth=0.9,
                )
            if math.isfinite(threshold):
                ax.axvline(threshold, color="black", linestyle="--", linewidth=0.9)
            dprime = value("dprime", model, size)
            frr = value("transfer_frr", model, size) if far else math.nan
            notes = [f"d' {dprime:.2f}"] if math.isfinite(dprime) else []
            notes += [f"FRR {frr:.2f}"] if math.isfinite(frr) else []
            text = "\n".join(notes)
            ax.text(0.03, 0.95, text, transform=ax.transAxes, va="top", ha="left", fontsize=7)
            ax.set_yticks([])
            ax.set_xlim(lo, 1.0)
            ax.grid(True, axis="x", alpha=0.3)
            if r == 0:
                ax.set_title(f"probe width {int(size)} px", fontsize=9)
            if c == 0:
                ax.set_ylabel(model, fontsize=8, rotation=0, ha="right", va="center")
            if r == len(models) - 1:
                ax.set_xlabel("cosine score")
    handles = [
        Patch(facecolor=(0.3, 0.3, 0.3), alpha=0.55, label="genuine pairs (model colour)"),
        Patch(facecolor=impostor_colour, label="impostor pairs"),
    ]
    if far is not None:
        handles.append(
            Line2D(
                [],
                [],
                color="black",
                linestyle="--",
                label=f"threshold set on clean\npairs at FAR {fmt_far(far)}",
            )
        )
    fig.legend(handles=handles, loc="outside right upper", frameon=False, fontsize=8)
    fig.suptitle(
        "Genuine and impostor score distributions per probe resolution (density, each area 1)\n"
        "d': decidability; FRR: share of genuine pairs the clean threshold rejects\n"
        + caption(prim),
        fontsize=10,
    )
    return fig


_TRAINING_PANELS = (
    ("val_tar", "held-out TAR at FAR 1e-2 (clean pairs)"),
    ("train_acc", "training accuracy"),
    ("loss", "training loss"),
)


def figure_training(training: pd.DataFrame, styles: dict[str, dict]):
    """Per-epoch curves of every trained model (mean over folds and seeds): the held-out
    verification figure where the models logged one, training accuracy and loss. None when
    no model has a log."""
    panels = [
        (col, label)
        for col, label in _TRAINING_PANELS
        if col in training.columns and training[col].notna().any()
    ]
    training = training[training["model"].isin(list(styles))]
    if training.empty or not panels:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(panels) + 2.2, 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]  # own y axes: loss is not a rate
    for ax, (col, label) in zip(axes, panels, strict=True):
        mean = training.groupby(["model", "epoch"], sort=True)[col].mean().reset_index()
        for model, g in mean.groupby("model", sort=True):
            model_line(ax, g["epoch"].to_numpy(float), g[col].to_numpy(float), styles[model])
        ax.set_xlabel("epoch")
        ax.set_title(label, fontsize=10)
        if col != "loss":
            ax.set_ylim(0, 1.02)
    model_legend(fig, axes, {m: styles[m] for m in sorted(training["model"].unique())})
    n_runs = training.groupby(["model"])[["fold", "seed"]].apply(lambda g: len(g.drop_duplicates()))
    fig.suptitle(
        "Training curves from each model's log (mean over "
        f"{int(n_runs.max())} fold x seed run(s) per model)\n"
        "a model whose held-out curve still rises at its last epoch was measured before its "
        "plateau",
        fontsize=10,
    )
    return fig


def figure_quality_edc(edc: pd.DataFrame, styles: dict[str, dict], caption: str = ""):
    """The EDC from ``quality.csv``: one panel per degraded probe width, FNMR after discarding
    the lowest-norm probes (thick, the model's style) and by true width (thin: the oracle)."""
    sizes = sorted(edc["size_px"].unique(), reverse=True)
    fig, axes, ncols, nrows = width_panels(len(sizes))
    for i, ax in enumerate(axes.flat[: len(sizes)]):
        sub = edc[edc["size_px"] == sizes[i]]
        for (model, kind), g in sub.groupby(["model", "quality"]):
            st = styles.get(model)
            if st is None:
                continue
            g = g.sort_values("discard")
            oracle = kind == "oracle"
            ax.plot(
                100 * g["discard"],
                g["fnmr"],
                color=st["color"],
                linestyle="--" if oracle else st["linestyle"],
                linewidth=0.9 if oracle else 1.8,
                alpha=0.55 if oracle else 1.0,
                zorder=st["zorder"],
            )
        ax.axvline(20, color="black", linewidth=0.6, linestyle=":")
        ax.set_title(f"clean + {int(sizes[i])} px probes", fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        if i // ncols == nrows - 1 or i + ncols >= len(sizes):
            ax.set_xlabel("probes discarded, lowest quality first (%)")
        if i % ncols == 0:
            ax.set_ylabel("FNMR at the clean FAR-1e-2 threshold")
    model_legend(fig, axes, {m: st for m, st in styles.items() if m in set(edc["model"])})
    fig.suptitle(
        "Error vs discard: the feature norm as a quality score\n"
        "(thick: discard by the model's norm; thin dashed: by true probe width, the oracle; "
        "dotted line: 20%, the end of the partial area)\n" + caption,
        fontsize=10,
    )
    return fig


def plot_tables(
    table: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    roc: pd.DataFrame | None = None,
    norms: pd.DataFrame | None = None,
    scores: pd.DataFrame | None = None,
    training: pd.DataFrame | None = None,
    quality: pd.DataFrame | None = None,
    cmc: pd.DataFrame | None = None,
) -> list[Path]:
    """Draw every figure the given tables allow into ``out_dir``; returns the written files
    (the identification figures only where the table holds their rows)."""
    import seaborn as sns

    out_dir = Path(out_dir)
    prim = primary_rows(table)
    styles = model_styles(prim[["model", "method"]])
    cap = caption(prim)
    written: list[Path] = []
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        figures = [
            ("tar_vs_resolution", figure_tar_vs_resolution(prim, styles)),
            ("genuine_cosine", figure_genuine_cosine(prim, styles)),
            ("ring_margin", figure_ring_margin(prim, styles)),
        ]
        if roc is not None and not roc.empty:
            figures.append(("roc", figure_roc(roc, styles, cap)))
        if norms is not None and not norms.empty:
            figures.append(("norms", figure_norms(norms, styles, cap)))
        if scores is not None and not scores.empty:
            figures.append(("scores", figure_scores(scores, prim, styles)))
        if training is not None and not training.empty:
            figures.append(("training", figure_training(training, styles)))
        if quality is not None and not quality.empty:
            figures.append(("quality_edc", figure_quality_edc(quality, styles, cap)))
        figures.append(("rank1_vs_resolution", figure_rank_vs_resolution(prim, styles)))
        if cmc is not None and not cmc.empty:
            figures.append(("cmc", figure_cmc(cmc, styles, cap)))
        figures.append(("tpir_vs_resolution", figure_tpir_vs_resolution(prim, styles)))
        figures.append(("ring_margin_rank1", figure_ring_margin(prim, styles, "ring_margin_rank1")))
        figures.append(("template_vs_resolution", figure_template_vs_resolution(prim, styles)))
        figures.append(
            ("ring_margin_template", figure_ring_margin(prim, styles, "ring_margin_template"))
        )
        for stem, fig in figures:
            if fig is not None:
                written += save_figure(fig, out_dir, stem)
    return written


FIGURE_STEMS = (
    "tar_vs_resolution",
    "genuine_cosine",
    "ring_margin",
    "roc",
    "norms",
    "scores",
    "training",
    "quality_edc",
)
# 2: seed-mean bands, variant families, margin band caption; 3: scores; 4: training;
# 5: quality_edc
_STYLE_VERSION = "5"
_DIGEST_FILE = ".source-digest"


def plot_run(run_dir: str | os.PathLike, *, force: bool = False) -> list[Path]:
    """Figures of a sweep folder into ``RUN/figures/`` (PNG + PDF).

    The figures are redrawn only when the tables they come from changed (a digest of
    ``results.csv``, ``roc.csv``, ``norms.csv``, ``scores.csv`` and, for identification,
    ``cmc.csv`` is kept beside them) or
    ``force`` is set,
    so rerunning a finished sweep costs no drawing time.

    Raises:
        ResultsError: the folder or its ``results.csv`` is missing (a shard folder says to
            merge first) or the table is damaged (see :func:`lowres.results.read_table`).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ResultsError(f"{run_dir} is not a folder; give a sweep folder made by lowres sweep")
    table_path = run_dir / "results.csv"
    table = read_table(table_path)
    out_dir = run_dir / FIGURES_DIR
    digest = tables_digest(run_dir)
    digest_path = out_dir / _DIGEST_FILE
    if not force and digest_path.is_file() and digest_path.read_text() == digest:
        existing = sorted(p for p in out_dir.iterdir() if p.suffix in (".png", ".pdf"))
        if existing:
            return existing
    roc = _read_optional(run_dir / "roc.csv", ("model", "size_px", "far", "tar"))
    norms = _read_optional(run_dir / "norms.csv", ("model", "size_px", "norm_rel"))
    scores = _read_optional(
        run_dir / "scores.csv",
        ("model", "size_px", "bin_low", "bin_high", "n_genuine", "n_impostor"),
    )
    training = read_training(run_dir / TRAINING_FILE)
    quality = _read_optional(run_dir / "quality.csv", ("model", "size_px", "quality", "fnmr"))
    cmc = _read_optional(run_dir / "cmc.csv", ("model", "size_px", "rank", "rate"))
    written = plot_tables(
        table,
        out_dir,
        roc=roc,
        norms=norms,
        scores=scores,
        training=training,
        quality=quality,
        cmc=cmc,
    )

    atomic_write_text(digest_path, digest)
    return written


def tables_digest(run_dir: str | os.PathLike) -> str:
    """Digest of the tables a sweep's figures are drawn from (and of the figures' style): the
    figures in ``RUN/figures/`` are current when their ``.source-digest`` holds it."""
    digest = hashlib.sha256(_STYLE_VERSION.encode())
    for name in ("results.csv", "roc.csv", "norms.csv", "scores.csv", "quality.csv", TRAINING_FILE):
        path = Path(run_dir) / name
        digest.update(path.read_bytes() if path.is_file() else b"-")
    cmc = Path(run_dir) / "cmc.csv"
    if cmc.is_file():  # identification sweeps only: a verification digest stays as it was
        digest.update(cmc.read_bytes())
    return digest.hexdigest()


def figures_current(run_dir: str | os.PathLike) -> bool:
    """True when ``RUN/figures/`` was drawn from the tables now in ``RUN`` (see
    :func:`tables_digest`)."""
    path = Path(run_dir) / FIGURES_DIR / _DIGEST_FILE
    return path.is_file() and path.read_text() == tables_digest(run_dir)


def _read_optional(path: Path, columns: Sequence[str]) -> pd.DataFrame | None:
    """A side table of the sweep, None when absent; unreadable or missing a column ->
    ResultsError (one line), never a traceback from deep inside a figure."""
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path} is not a readable CSV ({exc}); rerun the sweep") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ResultsError(
            f"{path} lacks column(s) {', '.join(missing)}; it was not written by lowres sweep "
            "(rerun the sweep, or delete the file to draw without it)"
        )
    return frame
