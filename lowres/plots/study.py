"""Study figures beyond the sweep's (:mod:`lowres.plots.sweep`), drawn from the study's tidy
tables and written atomically as PNG and PDF.

1. ``features2d``: the paper's Figure 1: one panel per model, 2-d test features coloured by
   class, the learned Ring radius R drawn as a dashed circle on ``+R`` models, test accuracy in
   the panel title. Axes are equal (a circle looks like a circle), each panel its own limits.
2. ``norm_angle``: (a) feature norm (relative to the model's mean clean norm) vs probe face
   width, median and quartile band; (b) mean angle to the identity's other clean images vs face
   width; (c) angle vs relative norm of every probe (all widths), with a binned median per model:
   the paper's argument is that low-norm features swing through wider angles.
3. ``runs_overview``: a study with [[runs]]: one column per run; top, TAR at one FAR vs probe
   face width (seed mean with its bootstrap band where there are several seeds, else
   Clopper-Pearson); bottom, the Ring-loss margin (+R minus its base) with its paired bootstrap
   band and the zero line. Colours follow :func:`lowres.plots.model_styles` over all runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from lowres.errors import ResultsError
from lowres.plots.style import (
    X_LABEL,
    draw_curves,
    fmt_far,
    log2_size_axis,
    model_legend,
    model_line,
    model_styles,
    save_figure,
)
from lowres.results import PIXELS, primary_rows

__all__ = ["figure_features2d", "figure_norm_angle", "figure_runs"]


def figure_features2d(
    features: pd.DataFrame,
    results: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    title: str = "",
    max_points: int = 1000,
    seed: int = 0,
) -> list[Path]:
    """Scatter of 2-d features, one panel per model (first fold and seed of each).

    Args:
        features: columns model, fold, seed, image, label, f0, f1.
        results: columns model, method, fold, seed, test_accuracy, R, norm_cv, n_test.
        out_dir: figure folder.
        title: figure title.
        max_points: points drawn per panel (a fixed random subset when there are more).
        seed: seed of that subset.

    Returns:
        The PNG and PDF paths.
    """
    import seaborn as sns
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle

    if features.empty or results.empty:
        raise ResultsError("no features to plot; the study evaluated no model")
    models = list(dict.fromkeys(results["model"]))
    ncols = min(4, len(models))
    nrows = -(-len(models) // ncols)
    fig = Figure(figsize=(3.6 * ncols + 1.2, 3.7 * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    classes = sorted(features["label"].unique())
    palette = sns.color_palette("tab10", max(10, len(classes)))
    rng = np.random.default_rng(seed)
    for k, model in enumerate(models):
        ax = axes[k // ncols][k % ncols]
        res = results[results["model"] == model].iloc[0]
        sub = features[
            (features["model"] == model)
            & (features["fold"] == res["fold"])
            & (features["seed"] == res["seed"])
        ]
        if len(sub) > max_points:
            sub = sub.iloc[np.sort(rng.choice(len(sub), max_points, replace=False))]
        colours = [palette[classes.index(c)] for c in sub["label"]]
        ax.scatter(sub["f0"], sub["f1"], s=4, c=colours, alpha=0.6, linewidths=0, rasterized=True)
        radius = res.get("R", np.nan)
        if pd.notna(radius):
            ax.add_patch(Circle((0, 0), float(radius), fill=False, color="black", lw=1.2, ls="--"))
        ax.axhline(0, color="0.8", lw=0.6, zorder=0)
        ax.axvline(0, color="0.8", lw=0.6, zorder=0)
        extent = float(np.nanmax(np.abs(sub[["f0", "f1"]].to_numpy()))) * 1.08
        if pd.notna(radius):
            extent = max(extent, float(radius) * 1.15)
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
        ax.set_aspect("equal")
        r_text = f", R = {float(radius):.2f}" if pd.notna(radius) else ""
        acc = res["test_accuracy"]
        acc_text = f"test acc {100 * acc:.2f}%" if pd.notna(acc) else "unseen test classes"
        ax.set_title(f"{model}\n{acc_text}{r_text}, norm CV {res['norm_cv']:.2f}", fontsize=9)
        ax.set_xlabel("feature 1")
        ax.set_ylabel("feature 2")
        ax.tick_params(labelsize=7)
    for k in range(len(models), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    handles = [
        Line2D([], [], marker="o", ls="", color=palette[i], markersize=5)
        for i in range(len(classes))
    ]
    labels = [str(c) for c in classes]
    handles.append(Line2D([], [], color="black", ls="--"))
    labels.append("learned R")
    fig.legend(handles, labels, title="class", loc="outside right upper", frameon=False)
    n_test = int(results["n_test"].iloc[0])
    fig.suptitle(
        f"{title}: 2-d test features ({n_test} test images, "
        f"{min(max_points, n_test)} drawn per panel)",
        fontsize=10,
    )
    return save_figure(fig, Path(out_dir), "features2d")


def _norm_panels(m: str, st: dict, norms, per_scale, angles, axes) -> None:
    """Model ``m``'s curves in the norm_angle figure's three panels: (a) its relative norm's
    median and quartiles per width, (b) its mean angle and quartiles per width, (c) its probes'
    angle against norm with the median per norm decile."""
    ax_norm, ax_angle, ax_scatter = axes
    g = norms[norms["model"] == m].groupby("size_px")["norm_rel"]
    med, q1, q3 = g.median(), g.quantile(0.25), g.quantile(0.75)
    ax_norm.plot(
        med.index,
        med.values,
        color=st["color"],
        ls=st["linestyle"],
        marker=st["marker"],
        lw=2,
        zorder=st["zorder"],
    )
    ax_norm.fill_between(med.index, q1.values, q3.values, color=st["color"], alpha=0.15)
    p = per_scale[per_scale["model"] == m].sort_values("size_px")
    ax_angle.plot(
        p["size_px"],
        p["angle_mean"],
        color=st["color"],
        ls=st["linestyle"],
        marker=st["marker"],
        lw=2,
        zorder=st["zorder"],
    )
    ax_angle.fill_between(
        p["size_px"], p["angle_q25"], p["angle_q75"], color=st["color"], alpha=0.15
    )
    a = angles[(angles["model"] == m)].dropna(subset=["angle_deg"])
    ax_scatter.scatter(
        a["norm_rel"],
        a["angle_deg"],
        s=3,
        alpha=0.25,
        color=st["color"],
        linewidths=0,
        rasterized=True,
    )
    if len(a) >= 20:
        edges = np.quantile(a["norm_rel"], np.linspace(0, 1, 11))
        bins = np.clip(np.searchsorted(edges, a["norm_rel"], side="right") - 1, 0, 9)
        centre = a.groupby(bins)["norm_rel"].median()
        angle = a.groupby(bins)["angle_deg"].median()
        ax_scatter.plot(
            centre.values,
            angle.values,
            color=st["color"],
            ls=st["linestyle"],
            lw=2.2,
            zorder=st["zorder"],
        )


def figure_norm_angle(
    norms_csv: str | os.PathLike,
    angles: pd.DataFrame,
    per_scale: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    title: str = "",
) -> list[Path]:
    """Norm and angular spread vs resolution, and angle vs norm (see module docstring).

    Args:
        norms_csv: the sweep's ``norms.csv`` (per-image norms per scale; panel a).
        angles: per-image table of :func:`lowres.study.norm_angle_tables`.
        per_scale: its per model x scale summary.
        out_dir: figure folder.
        title: figure title.
    """
    import seaborn as sns
    from matplotlib.figure import Figure

    norms = pd.read_csv(norms_csv)
    norms = norms[norms["model"] != PIXELS]
    if norms.empty or angles.empty:
        raise ResultsError("no feature norms to plot; the sweep has no trained model")
    styles = model_styles(angles[["model", "method"]])
    models = sorted(styles, key=lambda m: styles[m]["order"])
    sizes = sorted(angles["size_px"].unique())
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        fig = Figure(figsize=(15.5, 4.2), layout="constrained")
        ax_norm, ax_angle, ax_scatter = fig.subplots(1, 3)
        for m in models:
            _norm_panels(m, styles[m], norms, per_scale, angles, (ax_norm, ax_angle, ax_scatter))
        ax_norm.axhline(1.0, color="0.3", lw=0.8, ls=":")
        for ax in (ax_norm, ax_angle):
            log2_size_axis(ax, sizes)
        ax_norm.set_xlabel(X_LABEL)
        ax_norm.set_ylabel("feature norm / mean clean norm")
        ax_norm.set_title("(a) feature norm vs resolution\n(median, quartile band)", fontsize=10)
        ax_angle.set_ylabel("angle to identity direction (degrees)")
        ax_angle.set_title(
            "(b) angle to the identity's other clean images\n(mean, quartile band)", fontsize=10
        )
        ax_scatter.set_xlabel("feature norm / mean clean norm (all probe widths)")
        ax_scatter.set_ylabel("angle to identity direction (degrees)")
        ax_scatter.set_title(
            "(c) angle vs norm, every probe\n(line: median per norm decile)", fontsize=10
        )
        model_legend(fig, (ax_norm, ax_angle, ax_scatter), styles)
        dataset = ", ".join(sorted(set(norms["dataset"].astype(str))))
        fig.suptitle(
            f"{title}: feature norm and angular spread vs probe resolution "
            f"(dataset {dataset}, clean gallery)",
            fontsize=11,
        )
        return save_figure(fig, Path(out_dir), "norm_angle")


def figure_runs(
    table: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    far: float,
    runs: list[str],
    labels: dict[str, str] | None = None,
    title: str = "",
) -> list[Path]:
    """The ``runs_overview`` figure of a study with [[runs]] (see the module docstring).

    Args:
        table: the combined results (a ``run`` column, then a sweep's columns).
        out_dir: figure folder.
        far: the FAR to show.
        runs: run names, column order.
        labels: column titles per run (default the names).
        title: figure title.

    Returns:
        The PNG and PDF paths.
    """
    import seaborn as sns
    from matplotlib.figure import Figure

    parts = []
    for run in runs:
        prim = primary_rows(table[table["run"] == run].drop(columns="run"))
        prim.insert(0, "run", run)
        parts.append(prim)
    prim = pd.concat(parts, ignore_index=True)
    prim = prim[np.isclose(prim["far"].astype(float), far)]
    if prim.empty:
        raise ResultsError(f"no rows at FAR {far:g} to plot")
    styles = model_styles(prim[["model", "method"]])
    has_margin = bool((prim["metric"] == "ring_margin").any())
    nrows = 2 if has_margin else 1
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        fig = Figure(figsize=(4.0 * len(runs) + 2.4, 3.3 * nrows + 0.9), layout="constrained")
        axes = fig.subplots(nrows, len(runs), squeeze=False, sharey="row")
        bands = set()
        for j, run in enumerate(runs):
            mine = prim[prim["run"] == run]
            metric = "tar_mean" if (mine["metric"] == "tar_mean").any() else "tar"
            bands.add(
                "bootstrap over identities and seeds (several seeds)"
                if metric == "tar_mean"
                else "Clopper-Pearson (one seed)"
            )
            rows = [(axes[0][j], mine[mine["metric"] == metric])]
            if has_margin:
                rows.append((axes[1][j], mine[mine["metric"] == "ring_margin"]))
            for ax, sub in rows:
                draw_curves(ax, sub, styles)
                sizes = sub["size_px"].dropna().astype(int).unique()
                if len(sizes):
                    log2_size_axis(ax, sizes)
            axes[0][j].set_title((labels or {}).get(run, run), fontsize=9)
            axes[0][j].set_ylim(-0.02, 1.02)
            if has_margin:
                axes[1][j].axhline(0.0, color="black", linewidth=0.8)
                axes[1][j].set_xlabel(X_LABEL)
            else:
                axes[0][j].set_xlabel(X_LABEL)
        axes[0][0].set_ylabel(f"TAR at FAR {fmt_far(far)}")
        if has_margin:
            axes[1][0].set_ylabel("Ring margin (+R minus base)")
        model_legend(fig, axes, styles)
        fig.suptitle(
            (title + "\n" if title else "")
            + f"TAR at FAR {fmt_far(far)} vs probe width, one column per run\n"
            + "".join(f"TAR bands: 95% {b}\n" for b in sorted(bands))
            + (
                "margin bands: 95% paired bootstrap over identities (and seeds)"
                if has_margin
                else ""
            ),
            fontsize=10,
        )
        return save_figure(fig, Path(out_dir), "runs_overview")


BUDGET_LABEL = r"^(?P<method>.+)\+e(?P<epochs>\d+)$"
"""Model labels of a training-length study: ``METHOD+eN`` (N epochs)."""


def budget_table(table: pd.DataFrame, far: float) -> pd.DataFrame:
    """TAR (seed mean where there are several seeds) and Ring margin per method, training
    budget and probe width at ``far``, from the labels ``METHOD+eN`` of a sweep table.

    Columns: method, epochs, size_px, metric (``tar`` or ``ring_margin``), value, ci_low,
    ci_high. Empty when no label names a budget."""

    prim = primary_rows(table)
    prim = prim[np.isclose(prim["far"].astype(float), far)]
    found = prim["model"].str.extract(BUDGET_LABEL)
    prim = prim.assign(base=found["method"], epochs=pd.to_numeric(found["epochs"]))
    prim = prim[prim["epochs"].notna()]
    tar = "tar_mean" if (prim["metric"] == "tar_mean").any() else "tar"
    rows = prim[prim["metric"].isin([tar, "ring_margin"])]
    out = rows.assign(metric=rows["metric"].replace({tar: "tar"}))[
        ["base", "epochs", "size_px", "metric", "value", "ci_low", "ci_high"]
    ].rename(columns={"base": "method"})
    out["epochs"] = out["epochs"].astype(int)
    out["size_px"] = out["size_px"].astype(int)
    return out.sort_values(["metric", "method", "size_px", "epochs"]).reset_index(drop=True)


PLATEAU_SHARES = (0.95, 0.99)
"""Shares of the best TAR that ``plateau_table`` reports the first budget to reach."""


def plateau_table(budget: pd.DataFrame, size_px: int | None = None) -> pd.DataFrame:
    """Where each method plateaus, from a :func:`budget_table` frame.

    For each method, at ``size_px`` (default: the largest width, the clean probes): the best
    TAR over the budgets measured and the budget that gave it, the first budget that reaches
    95% and 99% of it (``epochs_95``, ``epochs_99``), ``last_gain`` (TAR at the largest budget
    minus at the one before it: a gain well above the interval widths says the plateau lies
    beyond the budgets measured), and the share of the best TAR at every budget
    (``share_eN``). One row per method."""
    tar = budget[budget["metric"] == "tar"]
    if tar.empty:
        return pd.DataFrame()
    size = int(tar["size_px"].max()) if size_px is None else int(size_px)
    tar = tar[tar["size_px"] == size]
    rows = []
    for method, g in tar.groupby("method", sort=True):
        g = g.sort_values("epochs")
        epochs = g["epochs"].to_numpy(int)
        values = g["value"].to_numpy(float)
        best = int(np.argmax(values))
        row = {
            "method": method,
            "size_px": size,
            "best_tar": float(values[best]),
            "best_epochs": int(epochs[best]),
        }
        for share in PLATEAU_SHARES:
            reached = epochs[values >= share * values[best]]
            row[f"epochs_{round(share * 100)}"] = int(reached[0])
        row["last_gain"] = float(values[-1] - values[-2]) if len(values) > 1 else float("nan")
        for e, v in zip(epochs, values, strict=True):
            row[f"share_e{e}"] = float(v / values[best]) if values[best] > 0 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def figure_budget(
    table: pd.DataFrame, out_dir: str | os.PathLike, *, far: float, title: str = ""
) -> list[Path]:
    """The ``budget`` figure of a training-length study: TAR at ``far`` (top row) and the Ring
    margin with its 95% interval (bottom row) against the training budget in epochs, one
    column per probe width, one line per method. Returns [] when no label names a budget."""
    import seaborn as sns
    from matplotlib.figure import Figure

    frame = budget_table(table, far)
    if frame.empty:
        return []
    sizes = sorted(frame["size_px"].unique(), reverse=True)
    methods = sorted(frame["method"].unique())
    styles = model_styles(pd.DataFrame({"model": methods, "method": methods}))
    has_margin = bool((frame["metric"] == "ring_margin").any())
    nrows = 2 if has_margin else 1
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        fig = Figure(figsize=(4.0 * len(sizes) + 2.4, 3.3 * nrows + 0.9), layout="constrained")
        axes = fig.subplots(nrows, len(sizes), squeeze=False, sharey="row")
        for j, size in enumerate(sizes):
            for i, metric in enumerate(["tar", "ring_margin"][:nrows]):
                ax = axes[i][j]
                sub = frame[(frame["size_px"] == size) & (frame["metric"] == metric)]
                for method, g in sub.groupby("method", sort=True):
                    st = styles[method]
                    x = g["epochs"].to_numpy(float)
                    ax.fill_between(
                        x, g["ci_low"], g["ci_high"], color=st["color"], alpha=0.12, linewidth=0
                    )
                    model_line(ax, x, g["value"].to_numpy(float), st)
                ax.set_xscale("log", base=2)
                ticks = sorted(frame["epochs"].unique())
                ax.set_xticks(ticks, [str(t) for t in ticks])
                ax.set_xlabel("training budget (epochs)")
                if metric == "ring_margin":
                    ax.axhline(0.0, color="black", linewidth=0.8)
            axes[0][j].set_title(f"probe {size} px wide", fontsize=9)
            axes[0][j].set_ylim(-0.02, 1.02)
        axes[0][0].set_ylabel(f"TAR at FAR {fmt_far(far)}")
        if has_margin:
            axes[1][0].set_ylabel("Ring margin (+R minus base)")
        model_legend(fig, axes, styles, title="method")
        fig.suptitle(
            (title + "\n" if title else "")
            + f"TAR at FAR {fmt_far(far)} and the Ring margin vs training budget\n"
            + "bands: 95% intervals (TAR: Clopper-Pearson or seed bootstrap; margin: paired "
            "bootstrap over identities and seeds)",
            fontsize=10,
        )
        return save_figure(fig, Path(out_dir), "budget")
