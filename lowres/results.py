"""Tidy results tables: schema, atomic I/O and checks, and summaries drawn from the table.

A sweep writes one long table, ``results.csv``, with one row per
dataset x model x scale x pairing x fold x seed x metric (x FAR where the metric has one).
Columns (:data:`COLUMNS`, always in this order):

=============  ===========================================================================
dataset        dataset name the test images came from
model          model id: paper notation for trained methods ("SF+R(0.01)"), the checkpoint
               name for loaded checkpoints, "pixels" for the raw-pixel reference
method         loss in paper notation ("pixels" for the reference)
scale          fraction of the image side kept before upsampling back (1 = clean)
size_px        face width in pixels after degradation, round(W * scale)
pairing        "probe": clean gallery vs degraded probe; "both": both images degraded
fold           identity-disjoint test fold; :data:`POOLED` (-1) = scores pooled over folds
seed           training / degradation seed
metric         see :data:`METRICS`
far            target false-accept rate for metrics that have one, else empty
value          the number
ci_low/high    95% interval where one exists (Clopper-Pearson for TAR, bootstrap for margins)
n_genuine      genuine pairs behind the number
n_impostor     impostor pairs behind the number
threshold      accept iff cosine >= threshold (TAR); the clean threshold (transfer_*)
far_achieved   false-accept rate actually achieved at that threshold (<= far for TAR)
flagged        True when far < 1 / n_impostor: the rate is not resolvable with these pairs
reference      the model a row is relative to (ring_margin: the base loss), else empty
degrade        degradation chain (``str(DegradeSpec)``)
degrade_hash   its stable hash
=============  ===========================================================================

Row kinds, by metric (direction for ``lowres check`` in brackets: + higher is better,
- lower is better, blank = diagnostic, not checked):

* per cell: ``tar`` [+] (per FAR), ``auc`` [+], ``eer`` [-], ``dprime`` [+], ``accuracy`` [+] and
  ``accuracy_std`` (10-fold, fixed pair lists only), ``genuine_cos_mean`` [+],
  ``impostor_cos_mean``, ``norm_mean``, ``norm_std``, ``norm_ratio`` (mean norm at this scale over
  the model's clean mean norm), ``transfer_far`` and ``transfer_frr`` (the threshold chosen at
  each FAR on clean pairs applied at this scale: calibration drift), and for a model that
  flags its inputs ``<flag>_share`` (e.g. ``no_face_share``: the share of probes in which the
  dlib reference model's detector found no face; see :mod:`lowres.reference.dlib`);
* per model and scale: ``tar_drop`` (clean TAR minus TAR at this scale, per FAR);
* per model: ``resolution_auc`` [+] (per FAR; mean TAR over log2(size_px), i.e. the area under
  TAR vs log2 face width divided by the width of that axis; scale and size_px empty),
  ``critical_size_px`` [-] (smallest face width from which every larger tested width reaches
  the target TAR at the target FAR; empty when none does);
* ``ring_margin`` (per +R model, scale and FAR): TAR(model) - TAR(reference) with a paired
  bootstrap interval over test identities (and seeds);
* ``tar_mean`` [+] (per model, scale and FAR, sweeps with several seeds only; seed empty): the seed
  mean of ``tar`` with a bootstrap interval over test identities and seeds;
* the feature norm as a quality score (:mod:`lowres.sweep.quality`; folds and seeds pooled, seed
  empty with several): ``edc_pauc20`` [-] (per model and degraded scale, ``far`` = the clean
  threshold's FAR): the mean FNMR over 0-20% discard of the lowest-norm probes of this width
  pooled with the clean probes, with a bootstrap interval over identities;
  ``edc_pauc20_oracle``: the same discarding by true width; ``norm_auc``: P(a clean probe's
  norm > a probe's of this width); per model ``norm_width_spearman``: Spearman's rho of
  relative norm and probe width over every probe (scale empty);
* identification protocols (``lowres sweep --protocol``, :mod:`lowres.sweep.protocols`), per
  cell and, with several folds, pooled: ``rank1`` [+], ``rank5`` [+], ``rank10`` [+]
  (closed set; Clopper-Pearson interval, ``n_genuine`` = probes, ``n_impostor`` empty),
  ``tpir`` [+] (open set, per FPIR target in ``far``; ``far_achieved`` = achieved FPIR,
  ``n_genuine`` / ``n_impostor`` = mated / non-mated searches); ``ring_margin_rank1`` (per +R
  model and scale): rank-1 minus the reference's with a paired bootstrap over identities;
  ``template_tar`` [+] (template 1:1, per FAR: exact TAR at FAR over template pairs, features
  pooled per template; Clopper-Pearson interval, ``n_genuine`` / ``n_impostor`` = template
  pairs) and ``ring_margin_template`` (per +R model, scale and FAR): template TAR minus the
  reference's with the paired bootstrap of ``ring_margin``.

Everything a reader needs to reproduce a number sits in ``provenance.json`` beside the table.
Writes go to a temporary file in the same folder and are moved into place with ``os.replace``,
so a reader (or a killed sweep) never sees half a file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lowres.cells import SHARD_MANIFEST, read_manifest
from lowres.errors import ResultsError
from lowres.files import atomic_write_text, frame_to_csv

POOLED = -1
"""``fold`` value of rows computed from scores pooled over every fold of a sweep."""
PIXELS = "pixels"
"""``model`` (and ``method``) of the raw-pixel reference that every sweep scores."""

COLUMNS: tuple[str, ...] = (
    "dataset",
    "model",
    "method",
    "scale",
    "size_px",
    "pairing",
    "fold",
    "seed",
    "metric",
    "far",
    "value",
    "ci_low",
    "ci_high",
    "n_genuine",
    "n_impostor",
    "threshold",
    "far_achieved",
    "flagged",
    "reference",
    "degrade",
    "degrade_hash",
)

KEY_COLUMNS: tuple[str, ...] = (
    "dataset",
    "model",
    "pairing",
    "scale",
    "fold",
    "seed",
    "metric",
    "far",
    "reference",
)
"""Columns that identify a row; ``lowres check`` joins a table and a baseline on these."""

HIGHER_IS_BETTER = frozenset(
    {
        "tar",
        "tar_mean",
        "auc",
        "dprime",
        "accuracy",
        "genuine_cos_mean",
        "resolution_auc",
        "rank1",
        "rank5",
        "rank10",
        "tpir",
        "template_tar",
    }
)
LOWER_IS_BETTER = frozenset({"eer", "critical_size_px", "edc_pauc20"})
METRICS = (
    "tar",
    "auc",
    "eer",
    "dprime",
    "accuracy",
    "accuracy_std",
    "genuine_cos_mean",
    "impostor_cos_mean",
    "norm_mean",
    "norm_std",
    "norm_ratio",
    "transfer_far",
    "transfer_frr",
    "tar_drop",
    "resolution_auc",
    "critical_size_px",
    "ring_margin",
    "tar_mean",
    "no_face_share",
    "edc_pauc20",
    "edc_pauc20_oracle",
    "norm_auc",
    "norm_width_spearman",
    "rank1",
    "rank5",
    "rank10",
    "tpir",
    "ring_margin_rank1",
    "template_tar",
    "ring_margin_template",
)

_INT_COLUMNS = ("size_px", "fold", "seed", "n_genuine", "n_impostor")
_FLOAT_COLUMNS = (
    "scale",
    "far",
    "value",
    "ci_low",
    "ci_high",
    "threshold",
    "far_achieved",
)
_STR_COLUMNS = (
    "dataset",
    "model",
    "method",
    "pairing",
    "metric",
    "reference",
    "degrade",
    "degrade_hash",
)


_FILLED_COLUMNS = (
    "dataset",
    "model",
    "method",
    "pairing",
    "fold",
    "metric",
    "degrade",
    "degrade_hash",
)
"""Columns a sweep fills in every row (fold is :data:`POOLED` where scores were pooled); an
empty one, or a ``degrade_hash`` (the last column) shorter than its 12 hex digits, marks a row
cut short: a truncated or damaged table."""
_HASH = r"[0-9a-f]{12}"


def make_row(**fields: Any) -> dict[str, Any]:
    """One table row with every column present (missing ones empty).

    Raises:
        ResultsError: a field name that is not a column (a programming slip shows up at once).
    """
    unknown = set(fields) - set(COLUMNS)
    if unknown:
        raise ResultsError(f"unknown result columns {sorted(unknown)}; valid: {list(COLUMNS)}")
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(fields)
    return row


def stamp_rows(rows: Iterable[dict[str, Any]], **fields: Any) -> list[dict[str, Any]]:
    """Metric rows (``metric``, ``value``, ...) as table rows with ``fields`` (dataset, model,
    method, scale, size_px, fold, seed, ...) added to each: :func:`make_row` of each."""
    return [make_row(**fields, **r) for r in rows]


def to_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows -> a DataFrame with the schema's columns and dtypes.

    Integer columns use pandas' nullable ``Int64`` (empty where a row has no value), floats
    ``float64`` (NaN where empty), ``flagged`` nullable boolean, text ``object`` ("" where empty).
    """
    frame = pd.DataFrame(list(rows), columns=list(COLUMNS))
    return normalise(frame)


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Coerce a table (built in memory or read from CSV) to the schema's dtypes and order."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ResultsError(
            f"results table lacks columns {missing}; it was not written by this lowres version"
        )
    out = frame.loc[:, list(COLUMNS)].copy()
    for col in _INT_COLUMNS:
        out[col] = pd.to_numeric(out[col], errors="raise").astype("Int64")
    for col in _FLOAT_COLUMNS:
        out[col] = pd.to_numeric(out[col], errors="raise").astype("float64")
    for col in _STR_COLUMNS:
        out[col] = out[col].astype(object).where(out[col].notna(), "").astype(str)
    flagged = out["flagged"].map(_parse_bool)
    out["flagged"] = pd.array(flagged.tolist(), dtype="boolean")
    return out


def _parse_bool(value: Any) -> bool | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    if text in ("", "nan", "<na>", "none"):
        return None
    raise ResultsError(f"flagged column holds {value!r}; expected True/False or empty")


def sort_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Deterministic row order: dataset, model, pairing, fold, seed, metric, far, scale."""
    order = ["dataset", "model", "pairing", "fold", "seed", "metric", "reference", "far", "scale"]
    return frame.sort_values(order, kind="mergesort", na_position="first").reset_index(drop=True)


def table_to_csv(frame: pd.DataFrame) -> str:
    """The exact CSV text lowres writes: schema order, ``repr``-exact floats, ``\\n`` ends."""
    return frame_to_csv(normalise(frame))


def write_table(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a results table atomically (see :func:`table_to_csv` for the format)."""
    return atomic_write_text(path, table_to_csv(frame))


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a results table written by :func:`write_table`.

    Raises:
        ResultsError: the file is missing (or its folder is one shard of a sweep), not CSV,
            lacks the schema's columns, holds text in a number column, or has a row cut short.
    """
    path = Path(path)
    if not path.is_file():
        _refuse_shard(path.parent)
        raise ResultsError(f"results table {path} not found; run `lowres sweep --out DIR` first")
    try:
        frame = pd.read_csv(path, keep_default_na=True, dtype={c: str for c in _STR_COLUMNS})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path} is not a readable CSV ({exc}); regenerate it") from None
    _check_cells(frame, path)
    return normalise(frame)


def _refuse_shard(folder: Path) -> None:
    """A ``lowres sweep --shard i/n`` folder has cells but no table until the shards are merged:
    say so instead of asking for a sweep that already ran."""
    if (folder / SHARD_MANIFEST).is_file():
        shard = read_manifest(folder)["shard"]
        raise ResultsError(
            f"{folder} is shard {shard['index']}/{shard['count']} of a sweep and holds no "
            "results.csv; join the shards with `lowres merge OUT SHARD_DIR...` first, then use OUT"
        )


def check_numbers(
    frame: pd.DataFrame,
    columns: Sequence[str],
    *,
    where: str,
    fix: str,
    integer_columns: Sequence[str] = (),
) -> None:
    """ResultsError naming the first cell of ``columns`` that holds text (or, in
    ``integer_columns``, a fraction), with its row; empty cells pass. Shared by results tables
    and ``lowres check`` baselines.

    Args:
        where: how the message names the file, e.g. ``"baseline b.csv"``.
        fix: what the message tells the user to do.
    """
    for col in columns:
        if col not in frame:
            continue
        number = pd.to_numeric(frame[col], errors="coerce")
        bad = frame[col].notna() & number.isna()
        kind = "non-numeric"
        if col in integer_columns:
            bad |= number.notna() & (number % 1 != 0)
            kind = "non-integer"
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise ResultsError(
                f"{where} has a {kind} value {frame[col].iloc[row]!r} in column {col} "
                f"(row {row + 1}); {fix}"
            )


def _check_cells(frame: pd.DataFrame, path: Path) -> None:
    """ResultsError for the first cell :func:`normalise` cannot type (text in a number column)
    and for the first row cut short (see :data:`_FILLED_COLUMNS`), naming row and column;
    :func:`normalise` reports missing columns."""
    check_numbers(
        frame,
        (*_INT_COLUMNS, *_FLOAT_COLUMNS),
        where=str(path),
        fix="regenerate it with `lowres sweep`",
        integer_columns=_INT_COLUMNS,
    )
    filled = [c for c in _FILLED_COLUMNS if c in frame]
    cut = frame[filled].isna()
    if "degrade_hash" in cut:
        cut["degrade_hash"] |= ~frame["degrade_hash"].fillna("").str.fullmatch(_HASH)
    short = cut.any(axis=1).to_numpy()
    if short.any():
        row = int(short.argmax())
        cols = ", ".join(c for c in filled if cut[c].iloc[row])
        raise ResultsError(
            f"{path} is truncated or damaged: row {row + 1} has an empty or cut {cols}, which "
            "lowres sweep always fills; regenerate it with `lowres sweep`"
        )


# --------------------------------------------------------------------------------------------
# Summaries computed from the tidy table
# --------------------------------------------------------------------------------------------


def primary_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows summaries and figures use: pooled-over-folds rows where a sweep has several
    folds, else the single fold's rows; averaged over seeds where there are several.

    Averaging over seeds averages ``value`` and both interval ends, so a band is the mean of
    the per-seed intervals (a descriptive band, not an interval for the seed mean).
    """
    if frame.empty:
        return frame.copy()
    parts = []
    for _, group in frame.groupby(["dataset", "model", "pairing"], sort=True, dropna=False):
        if (group["fold"] == POOLED).any():
            group = group[group["fold"] == POOLED]
        parts.append(group)
    chosen = pd.concat(parts, ignore_index=True)
    keys = ["dataset", "model", "method", "pairing", "metric", "reference", "far", "scale"]
    keys += ["size_px", "degrade", "degrade_hash"]
    if chosen.groupby(keys, dropna=False)["seed"].nunique().max() <= 1:
        return chosen.reset_index(drop=True)
    numeric = ["value", "ci_low", "ci_high", "threshold", "far_achieved"]
    counts = ["n_genuine", "n_impostor"]
    agg = {c: "mean" for c in numeric} | {c: "sum" for c in counts}
    agg |= {"fold": "first", "flagged": "max"}
    out = chosen.groupby(keys, dropna=False, sort=True).agg(agg).reset_index()
    out["seed"] = pd.array([pd.NA] * len(out), dtype="Int64")
    return normalise(out)


def robustness_rows(
    frame: pd.DataFrame, *, target_tar: float = 0.5, target_far: float = 1e-2
) -> list[dict[str, Any]]:
    """Per-model robustness summaries from per-scale ``tar`` rows.

    Args:
        frame: tidy rows holding ``tar`` rows for several scales (one fold/seed level:
            per fold, or pooled; pass one level at a time).
        target_tar: TAR a resolution must reach to count as usable.
        target_far: FAR at which ``target_tar`` is read (must be one of the sweep's FARs).

    Returns:
        ``tar_drop`` rows (per scale and FAR), ``resolution_auc`` rows (per FAR) and one
        ``critical_size_px`` row per model (its ``far`` column holds ``target_far`` and its
        ``threshold`` column is empty; the target TAR is in provenance).
    """
    rows: list[dict[str, Any]] = []
    tar = frame[frame["metric"] == "tar"]
    group_keys = ["dataset", "model", "method", "pairing", "fold", "seed", "degrade"]
    for keys, group in tar.groupby(group_keys, dropna=False, sort=True):
        base = dict(zip(group_keys, keys, strict=True))
        base["degrade_hash"] = group["degrade_hash"].iloc[0]
        for far, by_far in group.groupby("far", sort=True):
            by_far = by_far.sort_values("size_px")
            sizes = by_far["size_px"].to_numpy(dtype=float)
            values = by_far["value"].to_numpy(dtype=float)
            clean = by_far.loc[by_far["scale"] == by_far["scale"].max(), "value"]
            clean_value = float(clean.iloc[0])
            for _, r in by_far.iterrows():
                rows.append(
                    make_row(
                        **base,
                        scale=r["scale"],
                        size_px=r["size_px"],
                        metric="tar_drop",
                        far=far,
                        value=clean_value - float(r["value"]),
                        n_genuine=r["n_genuine"],
                        n_impostor=r["n_impostor"],
                    )
                )
            rows.append(
                make_row(
                    **base, metric="resolution_auc", far=far, value=resolution_auc(sizes, values)
                )
            )
            if math.isclose(float(far), target_far, rel_tol=1e-9):
                rows.append(
                    make_row(
                        **base,
                        metric="critical_size_px",
                        far=far,
                        value=critical_size(sizes, values, target_tar),
                    )
                )
    return rows


def resolution_auc(sizes_px: Sequence[float], values: Sequence[float]) -> float:
    """Area under ``values`` vs log2(size) divided by the axis width (= mean over log-size).

    One size only: that size's value. Sizes need not be sorted; duplicates are not allowed.

    >>> resolution_auc([8, 16, 32], [0.0, 0.5, 1.0])
    0.5
    """
    x = np.log2(np.asarray(sizes_px, dtype=np.float64))
    y = np.asarray(values, dtype=np.float64)
    order = np.argsort(x)
    x, y = x[order], y[order]
    if x.size == 1:
        return float(y[0])
    width = x[-1] - x[0]
    if width <= 0:
        raise ResultsError("resolution_auc needs distinct sizes; got duplicates")
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0 / width)


def critical_size(sizes_px: Sequence[float], values: Sequence[float], target: float) -> float:
    """Smallest size from which every larger tested size reaches ``target`` (NaN if none).

    Requiring every larger size too keeps one lucky small size on a non-monotone curve from
    being reported as the critical resolution.

    >>> critical_size([6, 12, 24, 48], [0.6, 0.2, 0.7, 0.9], 0.5)
    24.0
    """
    x = np.asarray(sizes_px, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    order = np.argsort(x)
    x, y = x[order], y[order]
    best = math.nan
    for i in range(x.size - 1, -1, -1):
        if not y[i] >= target:
            break
        best = float(x[i])
    return best


def _pct(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


@dataclass(frozen=True)
class PaperBlock:
    """One probe width of :class:`PaperTable`: its TAR rows and Ring margins.

    Attributes:
        size_px, scale: the probe width and its scale.
        n_genuine, n_impostor: the pairs behind each TAR (the largest count of the width).
        tar: model -> one row (a Series of the table) or None per FAR of the table.
        margins: (model, its base model, one row or None per FAR) per ``+R`` model.
    """

    size_px: int
    scale: float
    n_genuine: int
    n_impostor: int
    tar: dict[str, list[Any]]
    margins: list[tuple[str, str, list[Any]]]


@dataclass(frozen=True)
class PaperTable:
    """The results in the paper's layout (:func:`paper_table`): one block per probe width,
    widest first, methods x FAR."""

    dataset: str
    metric: str
    fars: list[float]
    models: list[str]
    width: int
    blocks: list[PaperBlock]

    @property
    def note(self) -> str:
        """What the numbers are (one sentence for under the tables)."""
        what = (
            "seed mean, 95% bootstrap over test identities and seeds"
            if self.metric == "tar_mean"
            else "95% Clopper-Pearson interval"
        )
        return (
            f"TAR in percent, [{what}]. Margins: +R model minus its base loss, paired bootstrap "
            "95% interval over test identities (and seeds); bold where the interval excludes 0."
        )


def excludes_zero(row: Any) -> bool:
    """True when a row's interval (``ci_low``, ``ci_high``) lies wholly above or below 0."""
    return bool(row["ci_low"] > 0 or row["ci_high"] < 0)


def paper_table(frame: pd.DataFrame, *, models: Sequence[str] | None = None) -> PaperTable:
    """The numbers of :func:`paper_table_markdown` (and of ``lowres report``'s HTML tables).

    Uses ``tar_mean`` rows (seed mean, identity + seed bootstrap interval) where the table has
    them, else the primary ``tar`` rows (Clopper-Pearson; several seeds averaged).

    Args:
        frame: a sweep's results table.
        models: row order (default: the table's models, ``pixels`` last).

    Raises:
        ResultsError: the table has no TAR rows.
    """
    prim = primary_rows(frame)
    metric = "tar_mean" if (prim["metric"] == "tar_mean").any() else "tar"
    tar = prim[prim["metric"] == metric]
    margin = prim[prim["metric"] == "ring_margin"]
    if tar.empty:
        raise ResultsError("no TAR rows in the table; nothing to tabulate")
    order = list(models) if models is not None else sorted(tar["model"].unique())
    order = [m for m in order if m in set(tar["model"])]
    order += sorted(set(tar["model"]) - set(order) - {PIXELS})
    if PIXELS in set(tar["model"]) and PIXELS not in order:
        order.append(PIXELS)
    fars = sorted(tar["far"].dropna().unique())
    sizes = sorted(tar["size_px"].dropna().astype(int).unique(), reverse=True)

    def per_far(rows: pd.DataFrame) -> list[Any]:
        found = [rows[np.isclose(rows["far"], f)] for f in fars]
        return [None if r.empty else r.iloc[0] for r in found]

    blocks = []
    for size in sizes:
        at = tar[tar["size_px"] == size]
        mar = margin[margin["size_px"] == size]
        blocks.append(
            PaperBlock(
                size_px=int(size),
                scale=float(at["scale"].iloc[0]),
                n_genuine=int(at["n_genuine"].max()),
                n_impostor=int(at["n_impostor"].max()),
                tar={m: per_far(at[at["model"] == m]) for m in order},
                margins=[
                    (
                        m,
                        str(mar.loc[mar["model"] == m, "reference"].iloc[0]),
                        per_far(mar[mar["model"] == m]),
                    )
                    for m in order
                    if m in set(mar["model"])
                ],
            )
        )
    dataset = ", ".join(sorted(tar["dataset"].astype(str).unique()))
    return PaperTable(dataset, metric, [float(f) for f in fars], order, max(sizes), blocks)


def paper_table_markdown(
    frame: pd.DataFrame,
    *,
    models: Sequence[str] | None = None,
    digits_note: bool = True,
) -> str:
    """The results in the paper's layout: one markdown table per probe width, methods x FAR,
    each cell ``TAR [95% interval]`` in percent, then the Ring-loss margins the same way
    (numbers from :func:`paper_table`).

    Args:
        frame: a sweep's results table.
        models: row order (default: the table's models, ``pixels`` last).
        digits_note: end with a line saying what the numbers are.

    Returns:
        Markdown text.
    """
    table = paper_table(frame, models=models)
    fars = table.fars
    lines = []

    def cell(r: Any) -> str:
        if r is None:
            return "-"
        return f"{_pct(r['value'])} [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]"

    def margin_cell(r: Any) -> str:
        if r is None:
            return "-"
        sign = "+" if r["value"] > 0 else ""
        text = f"{sign}{cell(r)}"
        return f"**{text}**" if excludes_zero(r) else text

    header = "| method | " + " | ".join(f"TAR@FAR {f:g}" for f in fars) + " |"
    rule = "|---|" + "---|" * len(fars)
    for block in table.blocks:
        lines.append(
            f"#### {table.dataset}: probes {block.size_px} px wide (scale {block.scale:g} of "
            f"{table.width} px); {block.n_genuine:,} genuine / {block.n_impostor:,} impostor pairs"
        )
        lines += ["", header, rule]
        for model, rows in block.tar.items():
            lines.append(f"| {model} | " + " | ".join(cell(r) for r in rows) + " |")
        lines.append("")
        if block.margins:
            lines += [
                "| Ring margin (TAR points) | " + " | ".join(f"FAR {f:g}" for f in fars) + " |",
                rule,
            ]
            for model, ref, rows in block.margins:
                lines.append(
                    f"| {model} - {ref} | " + " | ".join(margin_cell(r) for r in rows) + " |"
                )
            lines.append("")
    if digits_note:
        lines.append(table.note)
    return "\n".join(lines) + "\n"
