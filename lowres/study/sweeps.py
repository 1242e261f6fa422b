"""Study kinds ``sweep`` and ``norms``: :func:`lowres.sweep.run_sweep` into ``OUT/`` plus the
paper-layout ``table.md``; with ``[[runs]]`` one sweep per run and their overview; for a
training-length study (labels ``METHOD+eN``) the budget and plateau tables and figure; for
kind ``norms`` the norm-angle analysis (:mod:`lowres.study.norms`)."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import pandas as pd

from lowres.files import atomic_write_csv, atomic_write_text
from lowres.plots import (
    budget_table,
    figure_budget,
    figure_norm_angle,
    figure_runs,
    plateau_table,
)
from lowres.progress import say
from lowres.results import paper_table_markdown
from lowres.study.norms import norm_angle_summary, norm_angle_tables
from lowres.study.schema import Study, StudyResult
from lowres.sweep import format_summary, run_sweep

log = logging.getLogger("lowres.study")


def paper_tables(study: Study, table, heading: str = "", run: dict | None = None) -> str:
    """The paper-layout markdown of a sweep table, the study's (and run's) models in order."""
    text = paper_table_markdown(table, models=[m.label for m in study.run_models(run)])
    return (f"### {heading}\n\n" if heading else "") + text


def run(study: Study, out_dir: Path, workers: int, force: bool) -> StudyResult:
    """Run the study's sweep (or its runs), then the tables and figures its kind adds."""
    if study.runs:
        return run_runs(study, out_dir, workers, force)
    # run_sweep pre-trains the missing models, `workers` processes at a time.
    config = dataclasses.replace(study.sweep_config(out=out_dir), force=force, jobs=workers)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    sweep = run_sweep(config, report=False)  # lowres.study.run reports the study's folder
    timings["sweep"] = time.perf_counter() - t0
    for key, value in sweep.timings.items():
        timings[f"sweep_{key}"] = value
    result = StudyResult(
        out=out_dir,
        tables={"results": sweep.table},
        figures=list(sweep.figures),
        timings=timings,
        summary=format_summary(
            sweep.table,
            config.critical_far,
            {"tar": config.critical_tar, "far": config.critical_far},
        ),
    )
    atomic_write_text(out_dir / "table.md", paper_tables(study, sweep.table))
    _add_budget(study, config, sweep.table, result)
    if study.kind == "norms":
        _add_norm_angle(study, config, result)
    # plot_run lists every figure already in the folder, which can include the study's own.
    result.figures = sorted(set(result.figures))
    return result


def _add_budget(study: Study, config, table, result: StudyResult) -> None:
    """A training-length study (labels ``METHOD+eN``): ``budget.csv``, ``plateau.csv``, their
    summary and the ``budget`` figure; nothing for any other sweep."""
    out_dir = result.out
    far = 1e-2 if any(math.isclose(f, 1e-2) for f in config.fars) else config.fars[0]
    budget = budget_table(table, far)
    if budget.empty:
        return
    atomic_write_csv(out_dir / "budget.csv", budget, "%.6g")
    plateau = plateau_table(budget)
    atomic_write_csv(out_dir / "plateau.csv", plateau, "%.6g")
    result.tables.update(budget=budget, plateau=plateau)
    result.summary += (
        f"\n\nclean TAR at FAR {far:g} per budget, as a share of the best budget"
        " (plateau.csv):\n" + plateau.round(3).to_string(index=False)
    )
    result.figures += figure_budget(table, out_dir / "figures", far=far, title=study.title)


def _add_norm_angle(study: Study, config, result: StudyResult) -> None:
    """Kind ``norms``: ``angles.csv``, ``norm_angle.csv``, their summary and figure."""
    out_dir = result.out
    t0 = time.perf_counter()
    angles, per_scale = norm_angle_tables(config)
    atomic_write_csv(out_dir / "angles.csv", angles, "%.6g")
    atomic_write_csv(out_dir / "norm_angle.csv", per_scale, "%.6g")
    result.tables.update(angles=angles, norm_angle=per_scale)
    result.timings["angles"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result.figures += figure_norm_angle(
        out_dir / "norms.csv", angles, per_scale, out_dir / "figures", title=study.title
    )
    result.timings["plot_study"] = time.perf_counter() - t0
    result.summary += "\n\n" + norm_angle_summary(per_scale)


def run_runs(study: Study, out_dir: Path, workers: int, force: bool) -> StudyResult:
    """Kind sweep with [[runs]]: one sweep per run into OUT/<run>/, then a combined table
    (``run`` column first), ``table.md`` and the ``runs_overview`` figure."""
    timings: dict[str, float] = {}
    frames, texts, figures, summaries, records = [], [], [], [], {}
    for i, run in enumerate(study.runs, 1):
        name = run["name"]
        config = dataclasses.replace(
            study.sweep_config(out=out_dir / name, run=run), force=force, jobs=workers
        )
        say(f"run {i}/{len(study.runs)} {name}: sweep into {config.out}", log)
        t0 = time.perf_counter()
        sweep = run_sweep(config)
        timings[f"sweep_{name}"] = time.perf_counter() - t0
        say(f"run {i}/{len(study.runs)} {name}: done in {timings[f'sweep_{name}']:.1f} s", log)
        for key, value in sweep.timings.items():
            timings[f"sweep_{name}_{key}"] = value
        frame = sweep.table.copy()
        frame.insert(0, "run", name)
        frames.append(frame)
        heading = name + (f": {run['description']}" if run.get("description") else "")
        texts.append(paper_tables(study, sweep.table, heading, run))
        figures += list(sweep.figures)
        summaries.append(
            f"== run {name}\n"
            + format_summary(
                sweep.table,
                config.critical_far,
                {"tar": config.critical_tar, "far": config.critical_far},
            )
        )
        records[name] = {
            "out": name,
            "provenance": f"{name}/provenance.json",
            "data": config.data,
            "preset": config.preset,
            "train_data": config.train_data,
        }
    combined = pd.concat(frames, ignore_index=True)
    atomic_write_csv(out_dir / "results.csv", combined, "%.6g")
    atomic_write_text(out_dir / "table.md", "\n".join(texts))
    t0 = time.perf_counter()
    first = study.sweep_config()
    figures += figure_runs(
        combined,
        out_dir / "figures",
        far=first.critical_far,
        runs=[r["name"] for r in study.runs],
        labels={
            r["name"]: r["name"] + (f"\n{r['description']}" if r.get("description") else "")
            for r in study.runs
        },
        title=study.title,
    )
    timings["plot_study"] = time.perf_counter() - t0
    return StudyResult(
        out=out_dir,
        tables={"results": combined},
        figures=sorted(set(figures)),
        timings=timings,
        summary="\n\n".join(summaries),
        extra={"runs": records},
    )
