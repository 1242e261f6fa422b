"""One page per sweep or study (:func:`render_report`) and the file it goes to
(:func:`write_report`, atomic; :func:`report_after_run`, the sweep's and study's last step, which
never fails the run it reports)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lowres import __version__
from lowres.check import CheckResult, check_results, read_baseline
from lowres.errors import ResultsError
from lowres.files import atomic_write_text, check_writable
from lowres.report.folder import StudyFolder, SweepFolder, read_folder
from lowres.report.html import Slugs, esc, facts, is_number, num_cell, page, table
from lowres.report.sections import (
    comparison_html,
    figures_html,
    header_facts,
    margin_table,
    model_table,
    models_table,
    paper_tables,
    provenance_html,
    regression_marks,
    tar_matrix,
    wall_time,
)
from lowres.report.summary import level_of

log = logging.getLogger("lowres.report")

REPORT_FILE = "report.html"


@dataclass(frozen=True)
class Written:
    """What :func:`write_report` wrote: the file, its size in bytes and the seconds it took."""

    path: Path
    size: int
    seconds: float


def banner(lines: list[str]) -> str:
    """What the report lacks, at the top of the page (nothing when complete)."""
    if not lines:
        return ""
    items = "".join(f"<li>{esc(line)}</li>" for line in lines)
    return f'<div class="banner" role="note"><b>Incomplete:</b><ul>{items}</ul></div>'


def sweep_sections(
    view: SweepFolder, comparison: tuple[CheckResult, str] | None, prefix: str = "", depth: int = 2
) -> tuple[str, list[tuple[str, str]]]:
    """A sweep's sections (header, summary, figures, tables, comparison, provenance) and the
    table of contents entries that point at them."""
    level = level_of(view.table, view.provenance.get("critical"))
    slugs = Slugs()
    marks = regression_marks(comparison[0] if comparison else None, level)
    h, sub = f"h{depth}", f"h{depth + 1}"
    matrix = tar_matrix(level, slugs, prefix, marks)
    per_model = model_table(view, level, slugs, prefix, marks)
    ring, sentences = margin_table(level, slugs, prefix)
    ring_text = "".join(f"<li>{esc(s)}</li>" for s in sentences)
    parts = [
        f'<section id="{prefix}setup"><{h}>Setup</{h}>',
        header_facts(view, level),
        models_table(view, level, slugs, prefix),
        "</section>",
        f'<section id="{prefix}summary"><{h}>Summary</{h}>',
        '<p class="muted">Every number on this page is read from results.csv: folds pooled '
        "where the sweep has several, seeds averaged where it has several.</p>",
        matrix,
        per_model,
        ring + (f"<ul>{ring_text}</ul>" if ring_text else ""),
        "</section>",
        f'<section id="{prefix}figures"><{h}>Figures</{h}>',
        figures_html(view.figures, prefix),
        "</section>",
        f'<section id="{prefix}tables"><{h}>Tables in the paper\'s layout</{h}>',
        paper_tables(view, level, slugs, prefix, marks),
        "</section>",
    ]
    nav = [
        (f"{prefix}setup", "Setup"),
        (f"{prefix}summary", "Summary"),
        (f"{prefix}figures", "Figures"),
        (f"{prefix}tables", "Tables"),
    ]
    if comparison is not None:
        parts += [
            f'<section id="{prefix}comparison"><{h}>Baseline comparison</{h}>',
            comparison_html(comparison[0], comparison[1], prefix),
            "</section>",
        ]
        nav.append((f"{prefix}comparison", "Baseline"))
    parts += [
        f'<section id="{prefix}provenance"><{h}>Provenance</{h}>',
        f"<{sub}>Models, wall times, settings</{sub}>",
        provenance_html(view, slugs, prefix),
        "</section>",
    ]
    nav.append((f"{prefix}provenance", "Provenance"))
    return "\n".join(parts), nav


def study_facts(study: StudyFolder) -> str:
    """The study's own record: file and sha256, kind, description, overrides, wall time."""
    r = study.record
    items = [
        ("study", f"<b>{esc(r.get('name', study.path.name))}</b> (kind {esc(r.get('kind'))})"),
        ("file", f"<code>{esc(r.get('file'))}</code>, sha256 <code>{esc(r.get('sha256'))}</code>"),
        ("software", f"git <code>{esc(r.get('git_revision', '?'))}</code>"),
        ("finished", esc(r.get("finished", "?"))),
        ("wall time", wall_time(r.get("timings_s", {}))),
    ]
    config = r.get("config", {})
    description = config.get("study", {}).get("description") if isinstance(config, dict) else None
    if description:
        items.insert(1, ("description", esc(description)))
    if r.get("overrides"):
        items.append(("overrides", esc(", ".join(r["overrides"]))))
    if r.get("seeds") is not None:
        items.append(("seeds", esc(r["seeds"])))
    return facts(items)


def plain_table(frame: pd.DataFrame) -> str:
    """A table as it is (a features2d study's results), numbers carrying their exact value."""
    rows = []
    for _, r in frame.iterrows():
        cells = [
            num_cell(v, f"{float(v):.4g}") if is_number(v) else f'<td class="text">{esc(v)}</td>'
            for v in r.tolist()
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return table([str(c) for c in frame.columns], rows, sortable=True)


def study_page(study: StudyFolder, comparison) -> tuple[str, list[tuple[str, str]]]:
    """A study's body: its record, then its sweep (or each run's, under the run's heading, or a
    features2d study's table and figures)."""
    parts = ['<section id="study"><h2>Study</h2>', study_facts(study), "</section>"]
    nav = [("study", "Study")]
    if study.sweep is not None:
        body, more = sweep_sections(study.sweep, comparison.get("") if comparison else None)
        return "\n".join([*parts, body]), nav + more
    if study.table is not None:
        parts += ['<section id="results"><h2>Results</h2>', plain_table(study.table), "</section>"]
        nav.append(("results", "Results"))
    if study.figures:
        parts += [
            '<section id="figures"><h2>Figures</h2>',
            figures_html(study.figures, ""),
            "</section>",
        ]
        nav.append(("figures", "Figures"))
    for run in study.runs:
        prefix = f"{Slugs()(run.name)}--"
        body, _ = sweep_sections(
            run, comparison.get(run.name) if comparison else None, prefix=prefix, depth=3
        )
        parts += [
            f'<section id="{esc(prefix)}run"><h2>Run {esc(run.name)}</h2>',
            body,
            "</section>",
        ]
        nav.append((f"{prefix}run", f"Run {run.name}"))
    return "\n".join(parts), nav


def render_report(view: SweepFolder | StudyFolder, comparison=None) -> str:
    """The whole page of a sweep or study folder (``comparison``: :func:`compare` of it)."""
    if isinstance(view, StudyFolder):
        name = str(view.record.get("name") or view.path.name)
        kind = f"study ({view.record.get('kind')}"
        kind += f", {len(view.runs)} runs)" if view.runs else ")"
        body, nav = study_page(view, comparison)
    else:
        name = view.path.name
        shards = view.provenance.get("shards")
        kind = f"sweep merged from {len(shards)} shards" if shards else "sweep"
        body, nav = sweep_sections(view, comparison.get("") if comparison else None)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    head = (
        f"<header><h1>lowres report: {esc(name)}</h1>"
        f'<p class="sub">{esc(kind)} in <code>{esc(view.path)}</code>; written {stamp} by '
        f"lowres {esc(__version__)}</p></header>"
    )
    return page(f"lowres report: {name}", nav, head + banner(view.missing) + body)


def compare(view: SweepFolder | StudyFolder, baseline: str | os.PathLike, tolerance: float):
    """``lowres check`` of each sweep in ``view`` against ``baseline``: {run name or "": (result,
    baseline path)}; a study's run that shares no cell with it is left out.

    Raises:
        ResultsError: an unreadable baseline, or no sweep sharing a cell with it.
    """
    base = read_baseline(baseline)
    sweeps: dict[str, SweepFolder] = {}
    if isinstance(view, SweepFolder):
        sweeps[""] = view
    elif view.sweep is not None:
        sweeps[""] = view.sweep
    else:
        sweeps = {run.name: run for run in view.runs}
    out, last = {}, None
    for key, sweep in sweeps.items():
        try:
            out[key] = (check_results(sweep.table, base, tolerance=tolerance), str(baseline))
        except ResultsError as exc:
            last = exc
    if not out:
        raise last or ResultsError(f"{view.path} has no sweep to compare with {baseline}")
    return out


def write_report(
    folder: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    baseline: str | os.PathLike | None = None,
    tolerance: float = 0.02,
) -> Written:
    """Write the report of a sweep or study folder (default ``FOLDER/report.html``).

    Nothing is written unless every input reads: ``out`` is checked writable first, the page
    is built in memory and written atomically.

    Raises:
        ConfigError: ``out`` cannot be written (a folder, inside a file, no permission).
        ResultsError: ``folder`` is not a sweep or study (see
            :func:`lowres.report.folder.read_folder`), or the baseline is unreadable or shares
            no cell with it.
    """
    t0 = time.perf_counter()
    folder = Path(folder)
    target = Path(out) if out is not None else folder / REPORT_FILE
    if out is not None or folder.is_dir():
        check_writable(target, "--out", is_folder=False)
    view = read_folder(folder)
    comparison = compare(view, baseline, tolerance) if baseline is not None else None
    text = render_report(view, comparison)
    atomic_write_text(target, text)
    return Written(target, len(text.encode("utf-8")), time.perf_counter() - t0)


def report_after_run(folder: str | os.PathLike) -> Written | None:
    """The report a sweep or study writes as its last step: any failure is one warning (the
    results are already on disk) and None, never an error of the run."""
    try:
        written = write_report(folder)
    except Exception as exc:  # the run's results must survive a bug of the report
        log.warning(
            "report not written (%s: %s); the results are complete: `lowres report %s` retries",
            type(exc).__name__,
            exc,
            folder,
        )
        return None
    log.info("report %s (%.1f MB) in %.1f s", written.path, written.size / 1e6, written.seconds)
    return written
