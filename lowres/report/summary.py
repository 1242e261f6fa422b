"""The numbers a report's summary shows, each read from a sweep's ``results.csv`` (never typed
by hand): per model the area under TAR vs log width (``resolution_auc``) and the critical width
(``critical_size_px``), the widths where it falls below raw pixels, and the Ring-loss margins
with their intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lowres.results import PIXELS, POOLED, excludes_zero, primary_rows


@dataclass(frozen=True)
class Level:
    """Which rows a report shows: the primary rows (:func:`lowres.results.primary_rows`), their
    TAR metric (``tar_mean`` with several seeds, else ``tar``), the fold level (pooled or the
    single fold) and the FAR of the headline numbers (the sweep's critical FAR)."""

    prim: pd.DataFrame
    metric: str
    fold: int
    seeds: list[int]
    far: float
    target_tar: float
    fars: list[float]
    sizes: list[int]
    models: list[str]


def level_of(table: pd.DataFrame, critical: dict[str, Any] | None = None) -> Level:
    """The :class:`Level` of a results table; ``critical`` is provenance's ``critical`` entry
    (default TAR 0.5 at FAR 1e-2, or the nearest FAR the table has)."""
    prim = primary_rows(table)
    metric = "tar_mean" if (prim["metric"] == "tar_mean").any() else "tar"
    tar = prim[prim["metric"] == metric]
    fars = sorted(float(f) for f in tar["far"].dropna().unique())
    critical = critical or {}
    want = float(critical.get("far", 1e-2))
    far = min(fars, key=lambda f: abs(math.log10(f) - math.log10(want))) if fars else want
    fold = POOLED if (table["fold"] == POOLED).any() else int(table["fold"].dropna().min())
    seeds = sorted(int(s) for s in table["seed"].dropna().unique())
    models = sorted(set(tar["model"]) - {PIXELS}) + (
        [PIXELS] if PIXELS in set(tar["model"]) else []
    )
    sizes = sorted((int(s) for s in tar["size_px"].dropna().unique()), reverse=True)
    return Level(
        prim, metric, fold, seeds, far, float(critical.get("tar", 0.5)), fars, sizes, models
    )


def at_far(rows: pd.DataFrame, far: float) -> pd.DataFrame:
    """The rows of ``rows`` at FAR ``far`` (compared with a relative tolerance)."""
    return rows[np.isclose(rows["far"].astype(float), far, rtol=1e-9, atol=0.0)]


def tar_grid(level: Level, far: float) -> dict[tuple[str, int], Any]:
    """(model, width) -> the TAR row shown for it at ``far`` (seed mean with several seeds)."""
    rows = at_far(level.prim[level.prim["metric"] == level.metric], far)
    return {(str(r["model"]), int(r["size_px"])): r for _, r in rows.iterrows()}


@dataclass
class ModelSummary:
    """One model's line of the summary.

    Attributes:
        auc: FAR -> ``resolution_auc`` (the seed mean with several seeds).
        critical: ``critical_size_px`` per seed (one value with one seed; NaN: never reached).
        below_pixels: (width, the model's TAR, the raw pixels' TAR) at the headline FAR where
            the model's TAR is below the pixels'.
    """

    model: str
    method: str
    auc: dict[float, float] = field(default_factory=dict)
    critical: list[tuple[int | None, float]] = field(default_factory=list)
    below_pixels: list[tuple[int, float, float]] = field(default_factory=list)


def model_summaries(table: pd.DataFrame, level: Level) -> list[ModelSummary]:
    """Every model's :class:`ModelSummary`, in the level's model order."""
    prim = level.prim
    grid = tar_grid(level, level.far)
    crit = table[(table["metric"] == "critical_size_px") & (table["fold"] == level.fold)]
    out = []
    for model in level.models:
        mine = prim[prim["model"] == model]
        method = str(mine["method"].iloc[0]) if not mine.empty else model
        summary = ModelSummary(model, method)
        auc = mine[mine["metric"] == "resolution_auc"]
        summary.auc = {float(r["far"]): float(r["value"]) for _, r in auc.iterrows()}
        rows = crit[crit["model"] == model].sort_values("seed")
        summary.critical = [
            (None if pd.isna(r["seed"]) else int(r["seed"]), float(r["value"]))
            for _, r in rows.iterrows()
        ]
        if model != PIXELS:
            for size in level.sizes:
                own, ref = grid.get((model, size)), grid.get((PIXELS, size))
                if own is not None and ref is not None and own["value"] < ref["value"]:
                    summary.below_pixels.append((size, float(own["value"]), float(ref["value"])))
        out.append(summary)
    return out


@dataclass(frozen=True)
class Margin:
    """One Ring-loss margin row: ``model`` minus ``reference`` at ``size_px`` and ``far``."""

    model: str
    reference: str
    size_px: int
    far: float
    value: float
    ci_low: float
    ci_high: float

    @property
    def excludes_zero(self) -> bool:
        """True when the 95% interval lies wholly above or below zero."""
        return excludes_zero({"ci_low": self.ci_low, "ci_high": self.ci_high})


def margins(level: Level, far: float) -> list[Margin]:
    """The ``ring_margin`` rows at ``far``, by model then width (widest first)."""
    rows = at_far(level.prim[level.prim["metric"] == "ring_margin"], far)
    out = [
        Margin(
            str(r["model"]),
            str(r["reference"]),
            int(r["size_px"]),
            float(r["far"]),
            float(r["value"]),
            float(r["ci_low"]),
            float(r["ci_high"]),
        )
        for _, r in rows.iterrows()
    ]
    return sorted(out, key=lambda m: (m.model, -m.size_px))


def margin_sentence(pair: list[Margin]) -> str:
    """One plain sentence on one ``+R`` model's margins: where the interval excludes zero, and
    in which direction."""
    first = pair[0]
    above = [m for m in pair if m.excludes_zero and m.value > 0]
    below = [m for m in pair if m.excludes_zero and m.value < 0]
    head = f"{first.model} - {first.reference}"
    if not above and not below:
        return f"{head}: every interval contains zero (no margin shown at any width)."
    parts = []
    if above:
        parts.append(
            "above zero at " + ", ".join(f"{m.size_px} px ({m.value:+.3f})" for m in above)
        )
    if below:
        parts.append(
            "below zero at " + ", ".join(f"{m.size_px} px ({m.value:+.3f})" for m in below)
        )
    rest = len(pair) - len(above) - len(below)
    tail = f"; contains zero at the other {rest} width(s)." if rest else "."
    return f"{head}: the interval is " + " and ".join(parts) + tail
