"""Studies: one TOML file under ``experiments/`` per paper figure or experiment, run by
``lowres run experiments/NAME.toml`` into ``runs/NAME/``.

A study names the models it needs (paper notation plus training settings), trains them through
:func:`lowres.train.train` into the shared model cache (``<cache>/<TrainConfig.hash()>/``, the
layout the sweep uses, so a study and a sweep share trained models), evaluates them and draws
its figures. Rerunning a study retrains nothing and recomputes no sweep cell that exists, so an
interrupted study resumes where it stopped.

Schema (every key is checked; an unknown section or key is a ConfigError naming the valid ones)::

    [study]
    kind = "features2d"         # features2d | sweep | norms
    title = "..."               # figure title (default: the file stem)
    description = "..."         # free text, copied into provenance.json
    out = "runs/NAME"           # default runs/<file stem>, relative to the working directory
    model_cache = "..."         # default $LOWRES_CACHE/models or ~/.cache/lowres/models
    jobs = 1                    # models trained in parallel (one torch thread each when > 1)
    device = "auto"

    [train]                     # lowres.train.TrainConfig fields shared by every model
    model = "lenetpp"           # kinds sweep/norms: data, preset, model and epochs go to the
    data = "mnist"              # sweep; any other field becomes a training override of every
                                # model (split_seed and train_split are the sweep's)

    [[models]]                  # one table per model; at least one
    method = "SM+R(0.1)"        # paper notation (lowres.methods)
    label = "SM+R(0.1)+aug"     # optional model id, default the method
    augment_resolution = true   # any TrainConfig field overriding [train] for this model
                                # (kinds sweep/norms: not data/preset; a model with overrides
                                # is a named sweep variant, see lowres.sweep.SweepConfig)

    [evaluate]                  # kind features2d
    folds = [0]                 # test folds (mnist: 5 fixed folds of 1000 images)
    seeds = [0]                 # training seeds
    max_points = 1000           # test points drawn per scatter panel

    [sweep]                     # kinds sweep/norms: lowres.sweep.SweepConfig fields
    scales = [1, 0.5, 0.25]     # or sizes = [...]; fars, pairing, degrade, folds, seeds,
                                # batch_size, critical_tar, critical_far, n_boot, boot_seed
    data = "lfw_bin"            # the test set when it differs from [train] data: the models
                                # then train on the whole [train] data (train_split = "all")

    [[runs]]                    # kind sweep, optional: one sweep per run into OUT/<name>/
    name = "tex2"               # folder-safe
    description = "..."
    preset = "cpu:texture_cycles=2"   # and/or data = "orl": what the run trains and tests on
    folds = [0, 1, 2, 3]        # any [sweep] key

``lowres run FILE --set SECTION.KEY=VALUE`` (repeatable) changes a setting without editing the
file (VALUE in TOML syntax); the overrides are kept in provenance.json.

Kinds:

- ``features2d`` (paper Figure 1): a 2-d embedding per model; a scatter of the test features
  coloured by class, the learned R drawn as a circle for ``+R`` models; test classification
  accuracy from the head's logits (eval mode) in ``results.csv``; the features in
  ``features.csv``.
- ``sweep``: :func:`lowres.sweep.run_sweep` into ``OUT/`` (its table, figures, provenance),
  plus ``table.md``: the paper's layout, methods x FAR at each probe width with intervals, and
  the Ring margins. With ``[[runs]]``: one sweep per run in ``OUT/<run>/``, the combined
  ``OUT/results.csv`` (a ``run`` column first), ``OUT/table.md`` with a section per run and the
  figure ``runs_overview`` (TAR and Ring margin vs probe width, one column per run).
- ``norms``: the sweep (its per-image norms per scale), plus the angular spread of each
  person's features: the angle between an image's feature at each scale and the direction of
  its identity's *other* clean images (the sum of their unit features: leave-one-out, so an
  image is never compared with itself), against its norm. ``angles.csv`` (per image) and
  ``norm_angle.csv`` (per model x scale) and the figure ``norm_angle``.

Every kind writes ``OUT/provenance.json`` (study file and its sha256, parsed config, versions,
git revision, seeds, timings, model hashes and checkpoints); ``features2d`` and ``norms`` write
their own figures into ``OUT/figures/`` as PNG and PDF.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from lowres.errors import ConfigError, LowresError

__all__ = [
    "KINDS",
    "ModelItem",
    "Study",
    "StudyResult",
    "angle_to_identity",
    "cached_train",
    "list_studies",
    "load_study",
    "norm_angle_tables",
    "run_study",
]

log = logging.getLogger("lowres.study")

KINDS = ("features2d", "sweep", "norms")
STUDY_FORMAT = "lowres-study/1"
EXPERIMENTS_DIR = Path("experiments")

_STUDY_KEYS = ("kind", "title", "description", "out", "model_cache", "jobs", "device")
_EVALUATE_KEYS = ("folds", "seeds", "max_points")
# Training settings the sweep's on-demand trainer honours (lowres.sweep.train_config): a study
# of kind sweep/norms may not set others, or they would silently not apply.
_SWEEP_TRAIN_KEYS = {"model": "backbone", "data": "data", "preset": "preset", "epochs": "epochs"}
# Set by the sweep per cell (kinds sweep/norms); a study may not set them.
_SWEEP_OWNED = ("split_seed", "train_split")
_SWEEP_KEYS = (
    "scales",
    "sizes",
    "fars",
    "pairing",
    "degrade",
    "folds",
    "seeds",
    "batch_size",
    "critical_tar",
    "critical_far",
    "n_boot",
    "boot_seed",
    "data",
)
_TOP_KEYS = ("study", "train", "models", "evaluate", "sweep", "runs")
# A [[runs]] entry (kind sweep): its name, a dataset and preset for training and testing, and
# any [sweep] setting.
_RUN_KEYS = ("name", "description", "preset", *_SWEEP_KEYS)
_SET_SECTIONS = ("study", "train", "sweep", "evaluate")


@dataclass(frozen=True)
class ModelItem:
    """One model of a study.

    Attributes:
        label: legend / table name (unique in the study).
        method: canonical paper notation (``str(parse_method(...))``).
        train: TrainConfig fields of this model (the study's [train] with its overrides),
            without ``method``, ``fold`` and ``seed``.
    """

    label: str
    method: str
    train: dict


@dataclass
class Study:
    """A parsed, validated study file."""

    path: Path
    name: str
    kind: str
    title: str
    description: str
    out: Path
    model_cache: Path | None
    jobs: int
    device: str
    models: list[ModelItem]
    evaluate: dict
    sweep: dict
    raw: dict
    sha256: str
    runs: list[dict] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)

    @property
    def base_train(self) -> dict:
        """The study's [train] table."""
        return dict(self.raw.get("train", {}))

    def variant_overrides(self, item: ModelItem) -> dict:
        """TrainConfig settings of ``item`` that the sweep does not set itself (kinds
        sweep/norms): every key but data/preset, and model/epochs where they differ from the
        sweep-wide [train] values."""
        base = self.base_train
        return {
            k: v
            for k, v in item.train.items()
            if k not in ("data", "preset")
            and not (k in ("model", "epochs") and k in base and base[k] == v)
        }

    def train_config(self, item: ModelItem, fold: int, seed: int):
        """The TrainConfig of ``item`` at (fold, seed)."""
        from lowres.train import TrainConfig

        return TrainConfig.from_dict(
            {**item.train, "method": item.method, "fold": fold, "seed": seed}
        )

    def sweep_config(self, *, out: Path | None = None, run: dict | None = None):
        """The SweepConfig of a sweep/norms study, or of one of its ``[[runs]]``."""
        from lowres.sweep import SweepConfig

        values = dict(self.sweep)
        base = self.base_train
        if run is not None:
            values.update({k: v for k, v in run.items() if k in _SWEEP_KEYS and k != "data"})
            for key in ("data", "preset"):
                if key in run:
                    # A run's dataset is what its models train on and are tested on.
                    base[key] = run[key]
                    values.pop(key, None)
            if "data" in run and "preset" not in run:
                base.pop("preset", None)
        for key in ("scales", "fars", "folds", "seeds"):
            if key in values:
                values[key] = tuple(values[key])
        if "sizes" in values:
            values["sizes"] = tuple(int(v) for v in values["sizes"])
        test_data = values.get("data")
        for key, target in _SWEEP_TRAIN_KEYS.items():
            if key in base:
                values[target] = base[key]
        if test_data is not None and "data" in base and test_data != base["data"]:
            # [train] data is what the models learn from, [sweep] data what they are tested on.
            values["data"] = test_data
            values["train_data"] = base["data"]
            values.pop("preset", None)
        variants = {}
        for m in self.models:
            overrides = self.variant_overrides(m)
            if overrides or m.label != m.method:
                variants[m.label] = {"method": m.method, **overrides}
        return SweepConfig(
            models=tuple(m.label for m in self.models),
            variants=variants or None,
            out=Path(out if out is not None else self.out),
            device=self.device,
            model_cache=self.model_cache,
            **values,
        )


@dataclass
class StudyResult:
    """What :func:`run_study` returns: output folder, its tables (name -> DataFrame), the
    figure files written and timings in seconds."""

    out: Path
    tables: dict
    figures: list[Path]
    timings: dict[str, float]
    summary: str = ""
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------


def _check_keys(section: str, values: Any, allowed: Sequence[str]) -> dict:
    if not isinstance(values, dict):
        raise ConfigError(f"[{section}] must be a table of settings, got {type(values).__name__}")
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r} in [{section}]; valid keys: {', '.join(allowed)}"
        )
    return dict(values)


def _int_list(section: str, key: str, value: Any) -> list[int]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"[{section}] {key} must be a non-empty list of integers, e.g. [0]")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"[{section}] {key} must hold integers >= 0, got {v!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"[{section}] {key} lists a value twice: {value}")
    return list(value)


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """``SECTION.KEY=VALUE`` settings (``lowres run --set``) applied to a parsed study file.

    VALUE is read as a TOML value (``4``, ``true``, ``[0, 1]``, ``"orl"``); a bare word is a
    string. SECTION is one of study, train, sweep, evaluate.

    Raises:
        ConfigError: malformed setting or unknown section.
    """
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for text in overrides:
        target, eq, value = (p.strip() for p in str(text).partition("="))
        section, dot, key = target.partition(".")
        if not eq or not dot or not key or section not in _SET_SECTIONS:
            raise ConfigError(
                f"--set {text!r} is not SECTION.KEY=VALUE with SECTION one of "
                f"{', '.join(_SET_SECTIONS)}, e.g. --set train.epochs=2"
            )
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        out.setdefault(section, {})
        if not isinstance(out[section], dict):
            raise ConfigError(f"--set {text!r}: [{section}] is not a table in this study")
        out[section][key] = parsed
    return out


def load_study(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Study:
    """Read and validate a study TOML file (nothing is trained or written).

    Args:
        path: the TOML file.
        overrides: ``SECTION.KEY=VALUE`` settings applied on top (:func:`apply_overrides`).

    Raises:
        ConfigError: missing or unreadable file, unknown section/key, unknown kind, method or
            training setting, or values out of range, each as one line naming the fix.
    """
    from lowres.methods import parse_method
    from lowres.train import TrainConfig

    path = Path(path)
    if not path.is_file():
        hint = " (did you mean experiments/" + path.name + "?)" if path.parent == Path() else ""
        raise ConfigError(
            f"study file {path} not found{hint}; `lowres run --list` shows the studies"
        )
    data = path.read_bytes()
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix the syntax") from None
    overrides = [str(o) for o in overrides]
    raw = apply_overrides(raw, overrides)

    top = _check_keys("top level", raw, _TOP_KEYS)
    study = _check_keys("study", top.get("study", {}), _STUDY_KEYS)
    kind = study.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{path}: [study] kind {kind!r} is not one of {', '.join(KINDS)}")
    jobs = study.get("jobs", 1)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"[study] jobs must be an integer >= 1, got {jobs!r}")
    for key in ("title", "description", "out", "model_cache", "device"):
        if key in study and not isinstance(study[key], str):
            raise ConfigError(f"[study] {key} must be a string, got {study[key]!r}")

    train_fields = [f.name for f in dataclasses.fields(TrainConfig)]
    per_model_fields = [n for n in train_fields if n not in ("method", "fold", "seed")]
    base_train = _check_keys("train", top.get("train", {}), per_model_fields)

    models_raw = top.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise ConfigError(f"{path} has no [[models]]; add one table per model with method = ...")
    models: list[ModelItem] = []
    for i, entry in enumerate(models_raw):
        section = f"models #{i + 1}"
        allowed = ["method", "label"] + (
            per_model_fields
            if kind == "features2d"
            else [n for n in per_model_fields if n not in (*_SWEEP_OWNED, "data", "preset")]
        )
        entry = _check_keys(section, entry, allowed)
        if "method" not in entry:
            raise ConfigError(f'[{section}] has no method; add e.g. method = "SM+R(0.01)"')
        method = str(parse_method(str(entry.pop("method"))))
        label = str(entry.pop("label", method))
        train = {**base_train, **entry}
        # Build it once now: bad values fail at load time, not after other models trained.
        TrainConfig.from_dict({**train, "method": method})
        models.append(ModelItem(label=label, method=method, train=train))
    labels = [m.label for m in models]
    if len(set(labels)) != len(labels):
        dup = next(x for x in labels if labels.count(x) > 1)
        raise ConfigError(f"model {dup!r} is listed twice in {path}; give each a unique label")

    evaluate: dict = {}
    sweep: dict = {}
    if kind == "features2d":
        if "sweep" in top:
            raise ConfigError(f"{path}: kind features2d takes [evaluate], not [sweep]")
        evaluate = _check_keys("evaluate", top.get("evaluate", {}), _EVALUATE_KEYS)
        evaluate["folds"] = _int_list("evaluate", "folds", evaluate.get("folds", [0]))
        evaluate["seeds"] = _int_list("evaluate", "seeds", evaluate.get("seeds", [0]))
        points = evaluate.get("max_points", 1000)
        if isinstance(points, bool) or not isinstance(points, int) or points < 1:
            raise ConfigError(f"[evaluate] max_points must be an integer >= 1, got {points!r}")
        evaluate["max_points"] = points
    else:
        if "evaluate" in top:
            raise ConfigError(f"{path}: kind {kind} takes [sweep], not [evaluate]")
        owned = sorted(set(base_train) & set(_SWEEP_OWNED))
        if owned:
            raise ConfigError(
                f"{path}: [train] {owned[0]!r} is set by the sweep for every model (kind "
                f"{kind}); drop it"
            )
        sweep = _check_keys("sweep", top.get("sweep", {}), _SWEEP_KEYS)
        for key in ("folds", "seeds"):
            if key in sweep:
                sweep[key] = _int_list("sweep", key, sweep[key])
        for key in ("scales", "sizes", "fars"):
            if key in sweep and (not isinstance(sweep[key], list) or not sweep[key]):
                raise ConfigError(f"[sweep] {key} must be a non-empty list of numbers")

    runs: list[dict] = []
    if "runs" in top:
        if kind != "sweep" or not isinstance(top["runs"], list) or not top["runs"]:
            raise ConfigError(f"{path}: [[runs]] needs kind sweep and at least one table")
        for i, entry in enumerate(top["runs"]):
            entry = _check_keys(f"runs #{i + 1}", entry, _RUN_KEYS)
            run_name = entry.get("name")
            if not isinstance(run_name, str) or not run_name or _slug(run_name) != run_name:
                raise ConfigError(
                    f"[runs #{i + 1}] needs name = a folder-safe word (letters, digits, . - _), "
                    f"got {run_name!r}"
                )
            for key in ("folds", "seeds"):
                if key in entry:
                    entry[key] = _int_list(f"runs {run_name}", key, entry[key])
            runs.append(entry)
        names = [r["name"] for r in runs]
        if len(set(names)) != len(names):
            raise ConfigError(f"{path}: two [[runs]] share a name; give each a unique name")

    name = path.stem
    out = Path(study.get("out", f"runs/{name}"))
    cache = study.get("model_cache")
    result = Study(
        path=path,
        name=name,
        kind=kind,
        title=study.get("title", name),
        description=study.get("description", ""),
        out=out,
        model_cache=Path(cache).expanduser() if cache else None,
        jobs=jobs,
        device=study.get("device", "auto"),
        models=models,
        evaluate=evaluate,
        sweep=sweep,
        raw=raw,
        sha256=hashlib.sha256(data).hexdigest(),
        runs=runs,
        overrides=overrides,
    )
    if kind != "features2d":
        # SweepConfig and its own checks (scales, FARs, pairing) are run by run_sweep; build it
        # now so a misspelt value type fails before any training.
        from lowres.sweep import resolve_models

        for run in runs or [None]:
            try:
                config = result.sweep_config(run=run)
            except TypeError as exc:
                raise ConfigError(f"{path}: bad [sweep] value ({exc})") from None
            resolve_models(config.models, config.variants)
            for data, preset in ((config.data, config.preset), (config.train_data, None)):
                if data is not None and Path(str(data)).stem == "synth":
                    from lowres.data.synthetic import parse_preset

                    parse_preset(preset)
    return result


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)


def list_studies(folder: str | os.PathLike = EXPERIMENTS_DIR) -> list[dict]:
    """Every ``*.toml`` in ``folder`` with its kind, title and whether it parses.

    Returns:
        dicts with ``path``, ``name``, ``kind``, ``title``, ``models`` and ``error`` (None when
        the file is valid).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder; run from the lowres checkout or pass a path")
    out = []
    for path in sorted(folder.glob("*.toml")):
        try:
            s = load_study(path)
            out.append(
                {
                    "path": str(path),
                    "name": s.name,
                    "kind": s.kind,
                    "title": s.title,
                    "models": [m.label for m in s.models],
                    "error": None,
                }
            )
        except LowresError as exc:
            out.append(
                {
                    "path": str(path),
                    "name": path.stem,
                    "kind": "?",
                    "title": "",
                    "models": [],
                    "error": str(exc),
                }
            )
    return out


# --------------------------------------------------------------------------------------------
# Training (cached by TrainConfig hash, the sweep's cache layout)
# --------------------------------------------------------------------------------------------


def _cache_root(study: Study) -> Path:
    from lowres.sweep import default_model_cache

    return study.model_cache if study.model_cache is not None else default_model_cache()


def cached_train(config_dict: dict, cache: str | os.PathLike) -> str:
    """:func:`lowres.train.train_cached` from plain values, so it can run in a worker process."""
    from lowres.train import TrainConfig, train_cached

    return str(train_cached(TrainConfig.from_dict(config_dict), cache))


def _train_all(jobs: list[tuple[str, dict]], cache: Path, workers: int) -> dict[str, Path]:
    """Train (or find) every (key, TrainConfig dict); ``workers`` > 1 trains in parallel
    processes with one torch thread each (two 1-thread jobs beat one 2-thread job on CPU)."""
    if workers <= 1 or len(jobs) <= 1:
        return {key: Path(cached_train(cfg, cache)) for key, cfg in jobs}
    from lowres.processes import run_parallel

    paths = run_parallel(cached_train, [(cfg, str(cache)) for _, cfg in jobs], workers)
    return {key: Path(path) for (key, _), path in zip(jobs, paths, strict=True)}


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


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
    from lowres.atomic import check_writable

    check_writable(out_dir, "--out")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    history = _previous_runs(out_dir)
    t0 = time.perf_counter()
    try:
        if study.kind == "features2d":
            result = _run_features2d(study, out_dir, workers)
        else:
            result = _run_sweep_study(study, out_dir, workers, force)
    except LowresError:
        # Bad input found before anything was written (missing data, ...): leave no folder.
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    result.timings["total"] = time.perf_counter() - t0
    result.extra["history"] = history
    _write_provenance(study, out_dir, result)
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
    from lowres.results import atomic_write_json, git_revision, software_versions

    path = out_dir / "provenance.json"
    record = {
        "format": STUDY_FORMAT,
        "file": str(study.path),
        "sha256": study.sha256,
        "name": study.name,
        "kind": study.kind,
        "config": study.raw,
        "versions": software_versions(),
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


def _write_csv(frame, path: Path) -> None:
    from lowres.atomic import atomic_write_text

    atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n", float_format="%.6g"))


def _run_features2d(study: Study, out_dir: Path, workers: int) -> StudyResult:
    import numpy as np
    import pandas as pd
    import torch

    from lowres.checkpoint import load_checkpoint
    from lowres.data import get_split
    from lowres.train import clean_features

    folds, seeds = study.evaluate["folds"], study.evaluate["seeds"]
    timings: dict[str, float] = {}
    jobs = []
    for item in study.models:
        for fold in folds:
            for seed in seeds:
                tc = study.train_config(item, fold, seed)
                jobs.append(((item.label, fold, seed), tc.to_dict()))
    t0 = time.perf_counter()
    ckpts = _train_all(jobs, _cache_root(study), workers)
    timings["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows, feature_rows = [], []
    hashes = {}
    splits: dict[tuple, Any] = {}
    for item in study.models:
        for fold in folds:
            for seed in seeds:
                tc = study.train_config(item, fold, seed)
                split_key = (tc.data, tc.preset, tc.split_seed, fold)
                if split_key not in splits:
                    splits[split_key] = get_split(
                        tc.data, fold=fold, seed=tc.split_seed, preset=tc.preset
                    )
                train_set, test_set = splits[split_key]
                path = ckpts[(item.label, fold, seed)]
                loaded = load_checkpoint(path)
                dim = int(loaded.sidecar["embed_dim"])
                if dim != 2:
                    raise ConfigError(
                        f"{item.label}: kind features2d needs a 2-d embedding, the model has "
                        f'{dim}; set embed_dim = 2 (or model = "lenetpp") in [train]'
                    )
                feats = clean_features(
                    loaded.model, test_set.images, loaded.adapter, torch.device("cpu")
                )
                labels = test_set.labels
                train_labels = _labels_in_train_space(train_set, test_set)
                if train_labels is None:
                    # Identity-disjoint test classes: the head has no logit for them.
                    accuracy, errors = math.nan, None
                else:
                    with torch.no_grad():
                        logits = loaded.loss(feats, train_labels).logits
                    correct = (logits.argmax(1) == train_labels).double()
                    accuracy, errors = float(correct.mean()), int((1 - correct).sum())
                norms = torch.linalg.vector_norm(feats.double(), dim=1)
                stats = {k: float(v) for k, v in loaded.loss.stats().items()}
                metrics = loaded.sidecar.get("metrics", {})
                hashes[f"{item.label}|fold{fold}|seed{seed}"] = {
                    "config_hash": tc.hash(),
                    "checkpoint": str(path),
                }
                rows.append(
                    {
                        "model": item.label,
                        "method": item.method,
                        "dataset": test_set.name,
                        "fold": fold,
                        "seed": seed,
                        "n_train": int(train_set.images.shape[0]),
                        "n_test": int(labels.numel()),
                        "epochs": int(loaded.sidecar.get("epochs", 0)),
                        "test_accuracy": accuracy,
                        "test_errors": errors,
                        "train_accuracy": metrics.get("train_clean_acc"),
                        "R": stats.get("R", math.nan),
                        "norm_mean": float(norms.mean()),
                        "norm_std": float(norms.std(unbiased=False)),
                        "norm_cv": float(norms.std(unbiased=False) / norms.mean()),
                        "train_seconds": metrics.get("wall_seconds"),
                        "config_hash": tc.hash(),
                    }
                )
                f = feats.double().numpy()
                for i in range(f.shape[0]):
                    feature_rows.append(
                        (item.label, fold, seed, i, int(labels[i]), f[i, 0], f[i, 1])
                    )
    results = pd.DataFrame(rows)
    features = pd.DataFrame(
        feature_rows, columns=["model", "fold", "seed", "image", "label", "f0", "f1"]
    )
    timings["evaluate"] = time.perf_counter() - t0
    _write_csv(results, out_dir / "results.csv")
    _write_csv(features, out_dir / "features.csv")

    from lowres.plots_study import figure_features2d

    t0 = time.perf_counter()
    figures = figure_features2d(
        features,
        results,
        out_dir / "figures",
        title=study.title,
        max_points=study.evaluate["max_points"],
        seed=int(np.int64(seeds[0])),
    )
    timings["plot"] = time.perf_counter() - t0
    return StudyResult(
        out=out_dir,
        tables={"results": results, "features": features},
        figures=figures,
        timings=timings,
        summary=_features_summary(results),
        extra={"models": hashes, "split": _split_note(splits)},
    )


def _labels_in_train_space(train_set, test_set):
    """Test labels as indices of the training classes (the head's logits), or None when a test
    class was never trained (identity-disjoint splits: classification accuracy is undefined)."""
    import torch

    index = {name: i for i, name in enumerate(train_set.identities)}
    if any(name not in index for name in test_set.identities):
        return None
    mapping = torch.tensor([index[name] for name in test_set.identities], dtype=torch.int64)
    return mapping[test_set.labels]


def _split_note(splits: dict) -> list[dict]:
    notes = []
    for (data, preset, split_seed, fold), (train, test) in splits.items():
        proto = (train.meta or {}).get("protocol", {}) or {}
        notes.append(
            {
                "data": data,
                "preset": preset,
                "split_seed": split_seed,
                "fold": fold,
                "protocol": proto.get("type", ""),
                "train_images": int(train.images.shape[0]),
                "test_images": int(test.images.shape[0]),
                "classes": int(test.num_identities),
            }
        )
    return notes


def _features_summary(results) -> str:
    grouped = results.groupby("model", sort=False).agg(
        test_accuracy=("test_accuracy", "mean"),
        R=("R", "mean"),
        norm_mean=("norm_mean", "mean"),
        norm_cv=("norm_cv", "mean"),
        n_test=("n_test", "sum"),
    )
    return "test accuracy (head logits), feature norms on test images\n" + grouped.to_string(
        float_format=lambda v: f"{v:.4f}", na_rep="-"
    )


def _paper_tables(study: Study, table, heading: str = "") -> str:
    from lowres.results import paper_table_markdown

    text = paper_table_markdown(table, models=[m.label for m in study.models])
    return (f"### {heading}\n\n" if heading else "") + text


def _run_runs(study: Study, out_dir: Path, workers: int, force: bool) -> StudyResult:
    """Kind sweep with [[runs]]: one sweep per run into OUT/<run>/, then a combined table
    (``run`` column first), ``table.md`` and the ``runs_overview`` figure."""
    import pandas as pd

    from lowres.plots_study import figure_runs
    from lowres.sweep import format_summary, run_sweep

    timings: dict[str, float] = {}
    frames, texts, figures, summaries, records = [], [], [], [], {}
    for run in study.runs:
        name = run["name"]
        config = dataclasses.replace(
            study.sweep_config(out=out_dir / name, run=run), force=force, jobs=workers
        )
        t0 = time.perf_counter()
        sweep = run_sweep(config)
        timings[f"sweep_{name}"] = time.perf_counter() - t0
        for key, value in sweep.timings.items():
            timings[f"sweep_{name}_{key}"] = value
        frame = sweep.table.copy()
        frame.insert(0, "run", name)
        frames.append(frame)
        heading = name + (f": {run['description']}" if run.get("description") else "")
        texts.append(_paper_tables(study, sweep.table, heading))
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
    _write_csv(combined, out_dir / "results.csv")
    from lowres.atomic import atomic_write_text

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


def _run_sweep_study(study: Study, out_dir: Path, workers: int, force: bool) -> StudyResult:
    from lowres.sweep import format_summary, run_sweep

    if study.runs:
        return _run_runs(study, out_dir, workers, force)
    # run_sweep pre-trains the missing models, `workers` processes at a time.
    config = dataclasses.replace(study.sweep_config(out=out_dir), force=force, jobs=workers)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    sweep = run_sweep(config)
    timings["sweep"] = time.perf_counter() - t0
    for key, value in sweep.timings.items():
        timings[f"sweep_{key}"] = value
    tables = {"results": sweep.table}
    figures = list(sweep.figures)
    summary = format_summary(
        sweep.table, config.critical_far, {"tar": config.critical_tar, "far": config.critical_far}
    )
    from lowres.atomic import atomic_write_text

    atomic_write_text(out_dir / "table.md", _paper_tables(study, sweep.table))
    from lowres.plots_study import budget_table, figure_budget, plateau_table

    far = 1e-2 if any(math.isclose(f, 1e-2) for f in config.fars) else config.fars[0]
    budget = budget_table(sweep.table, far)
    if not budget.empty:  # a training-length study: labels METHOD+eN
        _write_csv(budget, out_dir / "budget.csv")
        tables["budget"] = budget
        plateau = plateau_table(budget)
        _write_csv(plateau, out_dir / "plateau.csv")
        tables["plateau"] = plateau
        summary += (
            f"\n\nclean TAR at FAR {far:g} per budget, as a share of the best budget"
            " (plateau.csv):\n" + plateau.round(3).to_string(index=False)
        )
        figures += figure_budget(sweep.table, out_dir / "figures", far=far, title=study.title)
    if study.kind == "norms":
        t0 = time.perf_counter()
        angles, per_scale = norm_angle_tables(config)
        _write_csv(angles, out_dir / "angles.csv")
        _write_csv(per_scale, out_dir / "norm_angle.csv")
        tables.update(angles=angles, norm_angle=per_scale)
        timings["angles"] = time.perf_counter() - t0
        from lowres.plots_study import figure_norm_angle

        t0 = time.perf_counter()
        figures += figure_norm_angle(
            out_dir / "norms.csv", angles, per_scale, out_dir / "figures", title=study.title
        )
        timings["plot_study"] = time.perf_counter() - t0
        summary += "\n\n" + _norm_angle_summary(per_scale)
    # plot_run lists every figure already in the folder, which can include the study's own.
    figures = sorted(set(figures))
    return StudyResult(
        out=out_dir, tables=tables, figures=figures, timings=timings, summary=summary
    )


# --------------------------------------------------------------------------------------------
# Norms vs angular spread
# --------------------------------------------------------------------------------------------


def angle_to_identity(clean, probe, labels):
    """Angle (degrees) between each probe feature and its identity's other clean images.

    The identity direction of image i is the sum of the unit clean features of the *other*
    images of its identity (leave-one-out), so an image is never compared with its own clean
    version. Images whose identity has no other image get NaN.

    Args:
        clean: float (N, D) clean-image features.
        probe: float (N, D) features of the same images, degraded.
        labels: int (N,) identity labels.

    Returns:
        float64 numpy (N,) angles in degrees.
    """
    import numpy as np

    clean = np.asarray(clean, dtype=np.float64)
    probe = np.asarray(probe, dtype=np.float64)
    labels = np.asarray(labels)
    unit = clean / np.maximum(np.linalg.norm(clean, axis=1, keepdims=True), 1e-12)
    _, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((inverse.max() + 1, clean.shape[1]))
    np.add.at(sums, inverse, unit)
    counts = np.bincount(inverse)
    direction = sums[inverse] - unit
    pnorm = np.linalg.norm(probe, axis=1)
    dnorm = np.linalg.norm(direction, axis=1)
    cos = (probe * direction).sum(1) / np.maximum(pnorm * dnorm, 1e-12)
    angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    angle[(counts[inverse] < 2) | (dnorm < 1e-9)] = np.nan
    return angle


def norm_angle_tables(config):
    """Per-image (norm, angle to identity) for every trained model, fold, seed and scale of a
    sweep config, from the cached models (the sweep trained them).

    Returns:
        (angles, per_scale): tidy DataFrames. ``angles``: model, method, fold, seed, scale,
        size_px, image, label, norm, norm_rel (norm / the model's mean clean norm on that fold),
        angle_deg. ``per_scale``: per model x scale: mean and quartiles of norm_rel and of the
        angle, and the Spearman correlation of norm and angle within the scale.
    """
    import numpy as np
    import pandas as pd
    import torch

    from lowres.checkpoint import load_checkpoint
    from lowres.degrade import DEFAULT, parse_degrade
    from lowres.embed import embed_many, pick_device
    from lowres.sweep import (
        probe_grid,
        resolve_models,
        sweep_test_split,
        trained_checkpoint,
    )

    spec = DEFAULT if config.degrade is None else parse_degrade(config.degrade)
    device = pick_device(None if config.device == "auto" else config.device)
    entries = resolve_models(config.models, config.variants)
    rows = []
    for fold in config.folds:
        test = sweep_test_split(config, fold)
        grid = probe_grid(config, test.image_size[1])
        labels = test.labels.numpy()
        for seed in config.seeds:
            models = {}
            for entry in entries:
                loaded = load_checkpoint(trained_checkpoint(entry, config, fold, seed))
                models[entry.name] = (loaded.model, loaded.adapter)
            clean = None
            for scale, size in grid:
                emb = embed_many(
                    test.images,
                    models,
                    scale=scale,
                    size_px=None if scale == 1.0 else size,
                    spec=spec,
                    batch_size=int(config.batch_size),
                    device=device,
                    seed=seed,
                )
                if clean is None:
                    clean = {k: v.features.float().cpu().numpy() for k, v in emb.items()}
                for name, e in emb.items():
                    feats = e.features.float().cpu().numpy()
                    norms = torch.as_tensor(e.norms).double().cpu().numpy()
                    clean_mean = float(np.linalg.norm(clean[name], axis=1).mean())
                    angle = angle_to_identity(clean[name], feats, labels)
                    method = next(x.method for x in entries if x.name == name)
                    for i in range(len(labels)):
                        rows.append(
                            (
                                name,
                                method,
                                fold,
                                seed,
                                scale,
                                size,
                                i,
                                int(labels[i]),
                                norms[i],
                                norms[i] / clean_mean if clean_mean > 0 else math.nan,
                                angle[i],
                            )
                        )
    angles = pd.DataFrame(
        rows,
        columns=[
            "model",
            "method",
            "fold",
            "seed",
            "scale",
            "size_px",
            "image",
            "label",
            "norm",
            "norm_rel",
            "angle_deg",
        ],
    )
    per_scale = []
    for (model, scale, size), g in angles.groupby(["model", "scale", "size_px"], sort=True):
        ok = g.dropna(subset=["angle_deg"])
        rho = (
            float(ok["norm"].rank().corr(ok["angle_deg"].rank()))
            if len(ok) > 2 and ok["norm"].nunique() > 1
            else math.nan
        )
        per_scale.append(
            {
                "model": model,
                "method": g["method"].iloc[0],
                "scale": scale,
                "size_px": size,
                "n_images": len(g),
                "norm_rel_mean": g["norm_rel"].mean(),
                "norm_rel_q25": g["norm_rel"].quantile(0.25),
                "norm_rel_q75": g["norm_rel"].quantile(0.75),
                "angle_mean": ok["angle_deg"].mean(),
                "angle_q25": ok["angle_deg"].quantile(0.25),
                "angle_q75": ok["angle_deg"].quantile(0.75),
                "spearman_norm_angle": rho,
            }
        )
    per_scale = pd.DataFrame(per_scale).sort_values(["model", "scale"], ascending=[True, False])
    return angles, per_scale.reset_index(drop=True)


def _norm_angle_summary(per_scale) -> str:
    wide = per_scale.pivot_table(index="model", columns="size_px", values="norm_rel_mean")
    wide = wide[sorted(wide.columns, reverse=True)]
    wide.columns = [f"{int(c)}px" for c in wide.columns]
    ang = per_scale.pivot_table(index="model", columns="size_px", values="angle_mean")
    ang = ang[sorted(ang.columns, reverse=True)]
    ang.columns = [f"{int(c)}px" for c in ang.columns]
    fmt = {"float_format": lambda v: f"{v:.2f}", "na_rep": "-"}
    return (
        "mean feature norm / clean mean norm, by probe face width\n"
        + wide.to_string(**fmt)
        + "\n\nmean angle to the identity's other clean images (degrees)\n"
        + ang.to_string(float_format=lambda v: f"{v:.1f}", na_rep="-")
    )
