"""What ``lowres report`` reads: a sweep folder (a merged sharded sweep is one), a study folder
(one sweep, one sweep per ``[[runs]]`` entry, or a ``features2d`` study), and what is missing
from it.

A half-finished sweep is reported from what exists, with what is missing said at the top of the
page: a sweep interrupted after an earlier complete assembly still has its ``results.csv``.
A sweep with no ``results.csv`` yet (the first run still going, or killed) has nothing to report
and is refused in one line, as is a shard folder (merge first) and a folder lowres did not make.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lowres.cells import SHARD_MANIFEST
from lowres.errors import ResultsError
from lowres.plots import FIGURE_STEMS, FIGURES_DIR, PROTOCOL_FIGURE_STEMS, figures_current
from lowres.report.captions import STUDY_FIGURES
from lowres.results import read_table
from lowres.training_logs import TRAINING_FILE, read_training

SIDE_TABLES = ("roc.csv", "norms.csv", "scores.csv", "quality.csv", TRAINING_FILE)
"""The side tables a sweep writes beside ``results.csv`` (figures are drawn from them)."""


@dataclass
class SweepFolder:
    """A sweep's folder as the report reads it.

    Attributes:
        path: the folder.
        name: its name in the report (the folder's, or the study run's).
        provenance: ``provenance.json``.
        table: ``results.csv``.
        training: ``training.csv`` (None when absent).
        figures: figure stem -> its PNG, in drawing order.
        missing: one sentence per thing the report lacks (an unfinished run, a side table,
            the figures), empty for a complete sweep.
    """

    path: Path
    name: str
    provenance: dict[str, Any]
    table: pd.DataFrame
    training: pd.DataFrame | None
    figures: dict[str, Path]
    missing: list[str] = field(default_factory=list)


@dataclass
class StudyFolder:
    """A study's folder (``lowres run``): its record (``provenance.json``'s ``study``), then
    its sweep (kinds sweep and norms), its runs' sweeps (``[[runs]]``) or, for ``features2d``,
    its own table; figures drawn by the study itself."""

    path: Path
    provenance: dict[str, Any]
    record: dict[str, Any]
    sweep: SweepFolder | None = None
    runs: list[SweepFolder] = field(default_factory=list)
    figures: dict[str, Path] = field(default_factory=dict)
    table: pd.DataFrame | None = None
    missing: list[str] = field(default_factory=list)


def read_folder(path: str | os.PathLike) -> SweepFolder | StudyFolder:
    """The sweep or study in ``path``.

    Raises:
        ResultsError: not a folder, a shard (merge it first), no ``provenance.json`` (not made
            by lowres), a sweep with no ``results.csv`` yet, or a damaged table.
    """
    path = Path(path)
    if not path.is_dir():
        raise ResultsError(
            f"{path} is not a folder; give a sweep or study folder made by lowres sweep or "
            "lowres run (e.g. runs/default)"
        )
    provenance = _provenance(path)
    if isinstance(provenance.get("study"), dict):
        return _read_study(path, provenance)
    return read_sweep(path, provenance)


def _provenance(path: Path) -> dict[str, Any]:
    prov_path = path / "provenance.json"
    if not prov_path.is_file():
        if (path / SHARD_MANIFEST).is_file():
            read_table(path / "results.csv")  # a shard: says to merge the shards first
        raise ResultsError(
            f"{path} has no provenance.json: not a folder made by lowres sweep or lowres run; "
            "give one (e.g. runs/default)"
        )
    try:
        provenance = json.loads(prov_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{prov_path} is not readable JSON ({exc}); rerun the sweep") from None
    if not isinstance(provenance, dict):
        raise ResultsError(f"{prov_path} is not a lowres provenance record; rerun the sweep")
    return provenance


def read_sweep(
    path: Path, provenance: dict[str, Any] | None = None, name: str | None = None
) -> SweepFolder:
    """A sweep folder (see :func:`read_folder`), what is missing from it listed."""
    provenance = _provenance(path) if provenance is None else provenance
    status = str(provenance.get("status", "unknown"))
    if not (path / "results.csv").is_file():
        if (path / SHARD_MANIFEST).is_file() or status == "complete":
            read_table(path / "results.csv")  # a shard's message (merge first), or not found
        raise ResultsError(
            f"{path} holds a sweep that has not finished (status {status!r}) and has no "
            "results.csv yet: nothing to report; rerun the same lowres sweep command (it "
            f"resumes), then lowres report {path}"
        )
    table = read_table(path / "results.csv")
    missing = []
    if status != "complete":
        missing.append(
            f"The sweep's last run did not finish (provenance status '{status}'): the numbers "
            "below are results.csv as an earlier run left it, without that run's new cells. "
            "Rerun the same lowres sweep command (it resumes), then lowres report."
        )
    absent = [name for name in SIDE_TABLES if not (path / name).is_file()]
    if absent:
        missing.append(
            f"No {', '.join(absent)} in the folder (a sweep made by an older lowres, or the "
            "files were removed): the figures drawn from them are missing too."
        )
    figures = _figures(path / FIGURES_DIR)
    if not figures:
        missing.append(
            "No figures: the sweep ran with --no-plot (or they were removed); "
            f"lowres plot {path} draws them, then rerun lowres report."
        )
    elif not figures_current(path):
        missing.append(
            "The figures are older than the tables (the sweep changed since they were drawn); "
            f"lowres plot {path} redraws them, then rerun lowres report."
        )
    training_path = path / TRAINING_FILE
    training = read_training(training_path) if training_path.is_file() else None
    return SweepFolder(path, name or path.name, provenance, table, training, figures, missing)


def _figures(folder: Path) -> dict[str, Path]:
    """The PNG figures in ``folder``: a sweep's in drawing order, then the studies', then any
    other, by name."""
    if not folder.is_dir():
        return {}
    found = {p.stem: p for p in sorted(folder.glob("*.png")) if p.is_file()}
    order = [s for s in (*FIGURE_STEMS, *PROTOCOL_FIGURE_STEMS, *STUDY_FIGURES) if s in found]
    order += sorted(set(found) - set(order))
    return {stem: found[stem] for stem in order}


def _read_study(path: Path, provenance: dict[str, Any]) -> StudyFolder:
    record = provenance["study"]
    study = StudyFolder(path, provenance, record)
    if record.get("kind") == "features2d":
        study.figures = _figures(path / FIGURES_DIR)
        if (path / "results.csv").is_file():
            try:
                study.table = pd.read_csv(path / "results.csv")
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
                raise ResultsError(f"{path / 'results.csv'} is not readable ({exc})") from None
        else:
            study.missing.append("No results.csv in the folder: the study's table is missing.")
        return study
    runs = record.get("runs")
    if not isinstance(runs, dict) or not runs:
        study.sweep = read_sweep(path, provenance)
        study.missing = list(study.sweep.missing)
        return study
    study.figures = _figures(path / FIGURES_DIR)
    for name, info in runs.items():
        folder = path / str(info.get("out", name) if isinstance(info, dict) else name)
        try:
            study.runs.append(read_sweep(folder, name=name))
        except ResultsError as exc:
            study.missing.append(f"Run {name}: {exc}")
            continue
        study.missing += [f"Run {name}: {line}" for line in study.runs[-1].missing]
    if not study.runs:
        raise ResultsError(
            f"{path} is a study none of whose runs can be reported ({study.missing[0]})"
        )
    return study
