"""The sweep's summary for the terminal: TAR at one FAR per model and probe width, with the
resolution AUC, the critical width and the norm's quality signal; with ``--protocol``, rank-1
or TPIR per model and width below it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from lowres.errors import ResultsError
from lowres.results import primary_rows


def summary_table(table: pd.DataFrame, far: float = 1e-2) -> pd.DataFrame:
    """TAR@``far`` per model x size_px (columns), plus resolution AUC and critical size."""
    prim = primary_rows(table)
    fars = sorted(prim.loc[prim["metric"] == "tar", "far"].unique())
    if not fars:
        raise ResultsError("the table has no TAR rows; was the sweep empty?")
    if not any(math.isclose(far, f) for f in fars):
        far = fars[len(fars) // 2]
    tar = prim[(prim["metric"] == "tar") & np.isclose(prim["far"], far)]
    wide = tar.pivot_table(index="model", columns="size_px", values="value", aggfunc="mean")
    wide = wide[sorted(wide.columns, reverse=True)]
    wide.columns = [f"{int(c)}px" for c in wide.columns]
    rauc = prim[(prim["metric"] == "resolution_auc") & np.isclose(prim["far"], far)]
    wide["res_AUC"] = rauc.groupby("model")["value"].mean()
    crit = prim[prim["metric"] == "critical_size_px"]
    wide["critical_px"] = crit.groupby("model")["value"].mean()
    wide.attrs["far"] = far
    edc = prim[prim["metric"] == "edc_pauc20"]
    if not edc.empty:
        # The norm as a quality score, at the middle degraded width: EDC partial area with the
        # norm, and with the true width (the oracle); Spearman of norm and width.
        sizes = sorted(edc["size_px"].dropna().unique(), reverse=True)
        size = int(sizes[len(sizes) // 2])
        oracle = prim[prim["metric"] == "edc_pauc20_oracle"]
        wide[f"EDC20@{size}px"] = edc[edc["size_px"] == size].groupby("model")["value"].mean()
        wide["oracle"] = oracle[oracle["size_px"] == size].groupby("model")["value"].mean()
        rho = prim[prim["metric"] == "norm_width_spearman"]
        wide["norm_rho"] = rho.groupby("model")["value"].mean()
        wide.attrs["edc_size"] = size
    return wide


def format_summary(table: pd.DataFrame, far: float = 1e-2, critical: dict | None = None) -> str:
    """:func:`summary_table` as text, with a one-line legend."""
    wide = summary_table(table, far)
    text = wide.to_string(float_format=lambda v: f"{v:.3f}", na_rep="-")
    crit = ""
    if critical:
        crit = (
            f"; critical_px: smallest width from which TAR >= {critical['tar']:g} at FAR "
            f"{critical['far']:g}"
        )
    quality = ""
    if "edc_size" in wide.attrs:
        quality = (
            f"; EDC20@{wide.attrs['edc_size']}px: mean FNMR over 0-20% of clean + "
            f"{wide.attrs['edc_size']} px probes discarded by lowest norm (oracle: by true "
            "width; lower is better); norm_rho: Spearman of norm and width"
        )
    return (
        f"TAR at FAR {wide.attrs['far']:g} by probe face width; res_AUC: mean TAR over log2 width"
        f"{crit}{quality}\n{text}"
    ) + _protocol_summary(table, far)


_AT_FAR_TITLES = {
    "tpir": "TPIR at FPIR {far:g} (open set, half the identities enrolled)",
    "template_tar": "template TAR at FAR {far:g} (template 1:1, features pooled per template)",
}
"""The per-FAR protocol rows the summary shows, at the FAR nearest the summary's, and titles."""


def _protocol_summary(table: pd.DataFrame, far: float) -> str:
    """Rank-1 (identification), TPIR at the FPIR nearest ``far`` (open set) or template TAR at
    the FAR nearest ``far`` (template) per model and width, as text after the TAR table; empty
    for a verification sweep."""
    prim = primary_rows(table)
    rows = prim[prim["metric"] == "rank1"]
    title = "rank-1 identification rate (closed set, pessimistic ties)"
    for metric, heading in _AT_FAR_TITLES.items():
        if not rows.empty:
            break
        rows = prim[prim["metric"] == metric]
        if rows.empty:
            continue
        fars = sorted(rows["far"].unique())
        near = min(fars, key=lambda f: abs(math.log10(f) - math.log10(far)))
        rows = rows[np.isclose(rows["far"], near)]
        title = heading.format(far=near)
    if rows.empty:
        return ""
    wide = rows.pivot_table(index="model", columns="size_px", values="value", aggfunc="mean")
    wide = wide[sorted(wide.columns, reverse=True)]
    wide.columns = [f"{int(c)}px" for c in wide.columns]
    text = wide.to_string(float_format=lambda v: f"{v:.3f}", na_rep="-")
    return f"\n\n{title} by probe face width\n{text}"
