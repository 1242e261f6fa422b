"""Run (or resume) a study: the kind's runner from :data:`RUNNERS`, then ``provenance.json``
(study file and sha256, parsed config, versions, git revision, seeds, timings, and the earlier
runs' timings so a resumed study keeps the wall time of the run that did the work), then the
study's ``report.html`` (:mod:`lowres.report`)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from lowres.errors import ConfigError, LowresError
from lowres.files import atomic_write_json, check_writable
from lowres.provenance import RESULT_LIBRARIES, git_revision, versions
from lowres.report import report_after_run
from lowres.study import features2d, sweeps
from lowres.study.schema import KINDS, STUDY_FORMAT, Study, StudyResult, load_study

RUNNERS: dict[str, Callable[[Study, Path, int, bool], StudyResult]] = {
    "features2d": lambda study, out_dir, workers, force: features2d.run(study, out_dir, workers),
    "sweep": sweeps.run,
    "norms": sweeps.run,
}
"""Study kind -> its runner ``(study, out_dir, workers, force)``: one module per kind."""
assert tuple(RUNNERS) == KINDS, "every kind of lowres.study.schema.KINDS needs a runner"


def run_study(
    study: Study | str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    jobs: int | None = None,
    force: bool = False,
) -> StudyResult:
    """Run (or resume) a study.

    Args:
        study: a :class:`Study` or the path of its TOML file.
        out: output folder (default: the study's ``out``).
        jobs: parallel training processes (default: the study's ``jobs``).
        force: replace an output folder holding a sweep made with other settings.

    Returns:
        StudyResult.
    """
    if not isinstance(study, Study):
        study = load_study(study)
    out_dir = Path(out) if out is not None else study.out
    workers = study.jobs if jobs is None else int(jobs)
    if workers < 1:
        raise ConfigError(f"jobs must be >= 1, got {workers}")
    check_writable(out_dir, "--out")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    history = _previous_runs(out_dir)
    t0 = time.perf_counter()
    try:
        result = RUNNERS[study.kind](study, out_dir, workers, force)
    except LowresError:
        # Bad input found before anything was written (missing data, ...): leave no folder.
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    result.timings["total"] = time.perf_counter() - t0
    result.extra["history"] = history
    _write_provenance(study, out_dir, result)
    t0 = time.perf_counter()
    report_after_run(out_dir)  # after the provenance it shows; a failure is one warning
    result.timings["report"] = time.perf_counter() - t0
    return result


def _previous_runs(out_dir: Path) -> list[dict]:
    """Earlier runs of the study in ``out_dir`` (git revision, finish time, timings), so a
    resumed or re-assembled study keeps the wall time of the run that did the work."""
    path = out_dir / "provenance.json"
    try:
        old = json.loads(path.read_text(encoding="utf-8")).get("study")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return []
    if not isinstance(old, dict) or "timings_s" not in old:
        return []
    earlier = [h for h in old.get("history", []) if isinstance(h, dict)]
    entry = {
        "git_revision": old.get("git_revision"),
        "finished": old.get("finished"),
        "timings_s": old.get("timings_s"),
    }
    return [*earlier, entry]


def _write_provenance(study: Study, out_dir: Path, result: StudyResult) -> None:
    path = out_dir / "provenance.json"
    record = {
        "format": STUDY_FORMAT,
        "file": str(study.path),
        "sha256": study.sha256,
        "name": study.name,
        "kind": study.kind,
        "config": study.raw,
        "versions": versions(RESULT_LIBRARIES),
        "git_revision": git_revision(),
        "seeds": list(
            study.evaluate["seeds"] if study.kind == "features2d" else study.sweep_config().seeds
        ),
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tables": sorted(f"{name}.csv" for name in result.tables),
        "figures": sorted(str(p.relative_to(out_dir)) for p in result.figures),
        **result.extra,
    }
    record["overrides"] = list(study.overrides)
    if study.kind != "features2d" and not study.runs:
        # The sweep's own record stays the top level (a rerun checks its "settings" there);
        # the study's record goes beside it.
        sweep_record = json.loads(path.read_text(encoding="utf-8"))
        sweep_record["study"] = record
        record = sweep_record
    else:
        record = {"study": record, **{k: record[k] for k in _SHARED_PROVENANCE}}
    atomic_write_json(path, record)


# Top-level provenance keys of a features2d study, as in a sweep's provenance.json.
_SHARED_PROVENANCE = ("versions", "git_revision", "seeds", "timings_s")
