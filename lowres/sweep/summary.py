"""The sweep's summary for the terminal: TAR at one FAR per model and probe width, with the
resolution AUC and the critical width."""

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
    return (
        f"TAR at FAR {wide.attrs['far']:g} by probe face width; res_AUC: mean TAR over log2 width"
        f"{crit}\n{text}"
    )
