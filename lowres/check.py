"""Regression check of a results table against a stored baseline.

A baseline is a small CSV: the key columns of :data:`lowres.results.KEY_COLUMNS` plus ``value``
(and, for a reader's benefit, ``size_px``), holding only metrics with a direction
(:data:`~lowres.results.HIGHER_IS_BETTER`, :data:`~lowres.results.LOWER_IS_BETTER`).
``lowres sweep --save-baseline FILE`` writes one; :func:`save_baseline` does the same from Python.

A cell regresses when its value is worse than the baseline by more than ``tolerance``
(absolute, in the metric's own unit): ``value < baseline - tol`` for higher-is-better metrics,
``value > baseline + tol`` for lower-is-better ones. A value that became undefined (NaN) where
the baseline had one also regresses (e.g. a critical resolution no longer reached).
Cells present in only one of the two tables are counted and reported, never failed on; a check
with no overlapping cell at all is bad input (:class:`~lowres.errors.ResultsError`).

This module only computes; ``lowres.cli`` turns :attr:`CheckResult.ok` into the exit code.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lowres.errors import ResultsError
from lowres.files import atomic_write_csv
from lowres.results import (
    HIGHER_IS_BETTER,
    KEY_COLUMNS,
    LOWER_IS_BETTER,
    check_numbers,
    read_table,
)

BASELINE_COLUMNS: tuple[str, ...] = (*KEY_COLUMNS, "size_px", "value")
_TEXT_KEYS = ("dataset", "model", "pairing", "metric", "reference")
_NUMBER_KEYS = ("scale", "far", "fold", "seed")
_REWRITE = "rewrite it with `lowres sweep ... --save-baseline FILE`"


@dataclass(frozen=True)
class CheckResult:
    """Outcome of :func:`check_results`.

    Attributes:
        regressions: one row per regressed cell: key columns, size_px, baseline, value, delta.
        n_compared: cells present in both the table and the baseline.
        n_missing: baseline cells absent from the table.
        n_new: directional cells of the table absent from the baseline.
        tolerance: absolute tolerance used.
    """

    regressions: pd.DataFrame
    n_compared: int
    n_missing: int
    n_new: int
    tolerance: float

    @property
    def ok(self) -> bool:
        """True when no compared cell regressed beyond tolerance."""
        return self.regressions.empty

    def report(self) -> str:
        """Human-readable summary: a table of regressed cells, then one line of counts."""
        lines = []
        if not self.ok:
            shown = self.regressions.copy()
            shown["far"] = shown["far"].map(lambda v: "" if pd.isna(v) else f"{v:g}")
            cols = ["model", "pairing", "size_px", "fold", "seed", "metric", "far"]
            cols += ["reference", "baseline", "value", "delta"]
            if (shown["reference"] == "").all():
                cols.remove("reference")
            lines.append(shown[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        verdict = "OK" if self.ok else f"{len(self.regressions)} cell(s) REGRESSED"
        lines.append(
            f"{verdict}: compared {self.n_compared} cells at tolerance {self.tolerance:g}"
            f" ({self.n_missing} baseline cells missing from the table, {self.n_new} new)"
        )
        return "\n".join(lines)


def _key_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Key columns as exact strings, so float scales / FARs and empty cells join reliably."""
    out = pd.DataFrame(index=frame.index)
    for col in KEY_COLUMNS:
        values = frame[col]
        if col in ("scale", "far"):
            out[col] = [
                "" if pd.isna(v) else repr(float(v)) for v in pd.to_numeric(values, errors="raise")
            ]
        elif col in ("fold", "seed"):
            out[col] = ["" if pd.isna(v) else str(int(v)) for v in values]
        else:
            out[col] = ["" if pd.isna(v) else str(v) for v in values]
    return out


def baseline_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The baseline rows of a results table: directional metrics, key columns + value."""
    directional = table["metric"].isin(HIGHER_IS_BETTER | LOWER_IS_BETTER)
    return table.loc[directional, list(BASELINE_COLUMNS)].reset_index(drop=True)


def save_baseline(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write :func:`baseline_frame` of ``table`` to ``path`` atomically (CSV)."""
    frame = baseline_frame(table)
    return atomic_write_csv(path, frame)


def read_baseline(path: str | os.PathLike) -> pd.DataFrame:
    """Read a baseline CSV.

    A value is a finite number, except where :func:`save_baseline` writes otherwise: an empty
    ``critical_size_px`` (no tested width reached the target) and an infinite ``dprime``
    (constant, separated scores). Anything else (empty, text, -inf) would compare as a silent
    pass or a false regression, so it is bad input.

    Raises:
        ResultsError: missing file, unreadable CSV, missing columns, or a missing, non-numeric
            or impossible value (names the row).
    """
    path = Path(path)
    if not path.is_file():
        raise ResultsError(
            f"baseline {path} not found; write one with `lowres sweep ... --save-baseline FILE`"
        )
    try:
        frame = pd.read_csv(path, dtype=dict.fromkeys((*_TEXT_KEYS, "value"), str))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ResultsError(f"baseline {path} is not a readable CSV ({exc}); rewrite it") from None
    missing = [c for c in (*KEY_COLUMNS, "value") if c not in frame.columns]
    if missing:
        raise ResultsError(
            f"baseline {path} lacks columns {missing}; write it with `lowres sweep --save-baseline`"
        )
    check_numbers(frame, _NUMBER_KEYS, where=f"baseline {path}", fix=_REWRITE)
    raw = frame["value"]
    value = pd.to_numeric(raw, errors="coerce")
    valid = np.isfinite(value)
    valid |= raw.isna() & (frame["metric"] == "critical_size_px")
    valid |= (value == np.inf) & (frame["metric"] == "dprime")
    if not valid.all():
        row = int((~valid).to_numpy().argmax())
        shown = "empty" if pd.isna(raw.iloc[row]) else repr(raw.iloc[row])
        raise ResultsError(
            f"baseline {path} has a missing, non-numeric or infinite value at row {row + 1} "
            f"({shown} for {frame['metric'].iloc[row]}); {_REWRITE}"
        )
    frame["value"] = value
    for col in _TEXT_KEYS:
        frame[col] = frame[col].fillna("")
    return frame


def check_results(
    table: pd.DataFrame, baseline: pd.DataFrame, *, tolerance: float = 0.02
) -> CheckResult:
    """Compare a results table with a baseline.

    Args:
        table: a results table (:func:`lowres.results.read_table`).
        baseline: a baseline (:func:`read_baseline`).
        tolerance: absolute slack in each metric's unit, >= 0.

    Raises:
        ResultsError: negative/NaN tolerance, or no cell in common.
    """
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ResultsError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    base = baseline[baseline["metric"].isin(HIGHER_IS_BETTER | LOWER_IS_BETTER)]
    mine = table[table["metric"].isin(HIGHER_IS_BETTER | LOWER_IS_BETTER)]
    left = _key_frame(mine).assign(value=mine["value"].to_numpy(), size_px=mine["size_px"].array)
    right = _key_frame(base).assign(baseline=pd.to_numeric(base["value"]).to_numpy())
    if left.duplicated(list(KEY_COLUMNS)).any() or right.duplicated(list(KEY_COLUMNS)).any():
        raise ResultsError("results table or baseline holds duplicate cells; regenerate it")
    merged = left.merge(right, on=list(KEY_COLUMNS), how="outer", indicator=True)
    both = merged[merged["_merge"] == "both"].copy()
    if both.empty:
        raise ResultsError(
            "no cell of the results table matches the baseline (different dataset, models or "
            "scales?); compare against a baseline saved from a comparable sweep"
        )
    value = both["value"].to_numpy(dtype=np.float64)
    ref = both["baseline"].to_numpy(dtype=np.float64)
    higher = both["metric"].isin(HIGHER_IS_BETTER).to_numpy()
    with np.errstate(invalid="ignore"):  # NaN cells, and inf - inf for a d' of inf in both
        worse = np.where(higher, value < ref - tolerance, value > ref + tolerance)
        both["delta"] = value - ref
    lost = np.isnan(value) & ~np.isnan(ref)
    regressed = both[worse | lost].copy()
    regressed["far"] = pd.to_numeric(regressed["far"].replace("", np.nan))
    regressed = regressed.drop(columns=["_merge"]).reset_index(drop=True)
    return CheckResult(
        regressions=regressed,
        n_compared=len(both),
        n_missing=int((merged["_merge"] == "right_only").sum()),
        n_new=int((merged["_merge"] == "left_only").sum()),
        tolerance=float(tolerance),
    )


def check_run(
    run_dir: str | os.PathLike, baseline_path: str | os.PathLike, *, tolerance: float = 0.02
) -> CheckResult:
    """:func:`check_results` on ``run_dir/results.csv`` (or a CSV path) and a baseline file."""
    run_dir = Path(run_dir)
    table_path = run_dir if run_dir.suffix == ".csv" else run_dir / "results.csv"
    if not run_dir.exists():
        raise ResultsError(f"{run_dir} not found; give a sweep folder (or its results.csv)")
    return check_results(read_table(table_path), read_baseline(baseline_path), tolerance=tolerance)
