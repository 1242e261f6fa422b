"""A study file read and checked: the schema of ``experiments/NAME.toml`` (derived from the
dataclasses it fills: :class:`lowres.train.TrainConfig` and :class:`lowres.sweep.SweepConfig`),
``--set`` overrides, and the :class:`Study` every kind runs from."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from lowres import external
from lowres.data.synthetic import parse_preset
from lowres.errors import ConfigError, LowresError
from lowres.methods import parse_method
from lowres.sweep import SweepConfig, resolve_models
from lowres.train import TrainConfig

KINDS = ("features2d", "sweep", "norms")
"""The study kinds; :data:`lowres.study.run.RUNNERS` maps each to the module that runs it."""
STUDY_FORMAT = "lowres-study/1"
EXPERIMENTS_DIR = Path("experiments")

_PER_MODEL_FIELDS = tuple(
    f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("method", "fold", "seed")
)
"""TrainConfig fields [train] and [[models]] may set (method, fold and seed are per model)."""
_STUDY_KEYS = ("kind", "title", "description", "out", "model_cache", "jobs", "device")
_EVALUATE_KEYS = ("folds", "seeds", "max_points")
# Training settings the sweep's on-demand trainer honours (lowres.sweep.train_config): a study
# of kind sweep/norms may not set others, or they would silently not apply.
_SWEEP_TRAIN_KEYS = {"model": "backbone", "data": "data", "preset": "preset", "epochs": "epochs"}
# Set by the sweep per cell (kinds sweep/norms); a study may not set them.
_SWEEP_OWNED = ("split_seed", "train_split")
_SWEEP_SET_ELSEWHERE = {
    "models": "[[models]]",
    "variants": "[[models]] with training overrides",
    "preset": "[train] preset",
    "epochs": "[train] epochs",
    "backbone": "[train] model",
    "train_data": "[train] data differing from [sweep] data",
    "out": "[study] out",
    "model_cache": "[study] model_cache",
    "device": "[study] device",
    "jobs": "[study] jobs",
    "force": "lowres run --force",
    "plot": "always on",
    "save_baseline": "lowres sweep --save-baseline",
    "shard": "lowres sweep --shard",
}
"""SweepConfig fields a study's [sweep] table may not set, and where each comes from instead."""
_SWEEP_KEYS = tuple(
    f.name for f in dataclasses.fields(SweepConfig) if f.name not in _SWEEP_SET_ELSEWHERE
)
"""The [sweep] keys: every other SweepConfig field (derived, so a new sweep setting is a study
setting at once)."""
_TOP_KEYS = ("study", "train", "models", "evaluate", "sweep", "runs")
# A [[runs]] entry (kind sweep): its name, a dataset and preset for training and testing, any
# [sweep] setting, and external models for this run only (a pretrained recognizer of real faces
# belongs beside the CNNs on a real set, not on synth).
_RUN_KEYS = ("name", "description", "preset", "external", *_SWEEP_KEYS)
_SET_SECTIONS = ("study", "train", "sweep", "evaluate")


@dataclass(frozen=True)
class ModelItem:
    """One model of a study.

    Attributes:
        label: legend / table name (unique in the study).
        method: canonical paper notation (``str(parse_method(...))``).
        train: TrainConfig fields of this model (the study's [train] with its overrides),
            without ``method``, ``fold`` and ``seed``.
        external: an external model's ``--models`` entry (``dlib(size=112x92)``, ``py:...``,
            a TorchScript or ONNX path), then ``method`` is its format and ``train`` empty.
    """

    label: str
    method: str
    train: dict
    external: str = ""


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
        return TrainConfig.from_dict(
            {**item.train, "method": item.method, "fold": fold, "seed": seed}
        )

    def run_models(self, run: dict | None = None) -> list[ModelItem]:
        """The study's models, then the run's own external models (``[[runs]] external``)."""
        return list(self.models) + list((run or {}).get("external", ()))

    def sweep_config(self, *, out: Path | None = None, run: dict | None = None):
        """The SweepConfig of a sweep/norms study, or of one of its ``[[runs]]``."""
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
            if m.external:
                continue
            overrides = self.variant_overrides(m)
            if overrides or m.label != m.method:
                variants[m.label] = {"method": m.method, **overrides}
        return SweepConfig(
            models=tuple(m.external or m.label for m in self.run_models(run)),
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
    path = Path(path)
    data = _read_bytes(path)
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix the syntax") from None
    overrides = [str(o) for o in overrides]
    raw = apply_overrides(raw, overrides)
    top = _check_keys("top level", raw, _TOP_KEYS)
    study = _study_section(path, top)
    kind = study["kind"]
    base_train = _check_keys("train", top.get("train", {}), _PER_MODEL_FIELDS)
    models = _models_section(path, top, kind, base_train)
    evaluate, sweep = _evaluate_or_sweep(path, top, kind, base_train)
    runs = _runs_section(path, top, kind, models)
    name = path.stem
    cache = study.get("model_cache")
    result = Study(
        path=path,
        name=name,
        kind=kind,
        title=study.get("title", name),
        description=study.get("description", ""),
        out=Path(study.get("out", f"runs/{name}")),
        model_cache=Path(cache).expanduser() if cache else None,
        jobs=study.get("jobs", 1),
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
        _check_sweeps(result)
    return result


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        hint = " (did you mean experiments/" + path.name + "?)" if path.parent == Path() else ""
        raise ConfigError(
            f"study file {path} not found{hint}; `lowres run --list` shows the studies"
        )
    return path.read_bytes()


def _study_section(path: Path, top: dict) -> dict:
    """[study], checked: a known kind, jobs >= 1, strings where strings belong."""
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
    return study


def _models_section(path: Path, top: dict, kind: str, base_train: dict) -> list[ModelItem]:
    """[[models]]: each a known method with valid training settings, labels unique."""
    models_raw = top.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise ConfigError(f"{path} has no [[models]]; add one table per model with method = ...")
    allowed = ["method", "label"] + (
        list(_PER_MODEL_FIELDS)
        if kind == "features2d"
        else [n for n in _PER_MODEL_FIELDS if n not in (*_SWEEP_OWNED, "data", "preset")]
    )
    models: list[ModelItem] = []
    for i, entry in enumerate(models_raw):
        section = f"models #{i + 1}"
        if isinstance(entry, dict) and "external" in entry:
            models.append(_external_item(section, entry, kind))
            continue
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
    return models


def _external_item(section: str, entry: dict, kind: str) -> ModelItem:
    """A ``[[models]]`` table with ``external = "..."``: a pretrained model the sweep loads
    (kinds sweep and norms); its label is the model id the sweep gives it."""
    entry = _check_keys(section, entry, ("external",))
    if kind == "features2d":
        raise ConfigError(f"[{section}] external models need kind sweep or norms")
    text = entry["external"]
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f'[{section}] external must be a --models entry, e.g. "dlib"')
    spec = external.parse_external(text) if external.is_external(text) else None
    if spec is None:
        raise ConfigError(
            f"[{section}] external {text!r} is not an external model (a py:, ts: or onnx: "
            "entry, a model file or a reference name such as dlib)"
        )
    return ModelItem(label=spec.name, method=spec.format, train={}, external=text)


def _evaluate_or_sweep(path: Path, top: dict, kind: str, base_train: dict) -> tuple[dict, dict]:
    """([evaluate], [sweep]): the one the kind takes, checked; the other empty."""
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
        return evaluate, {}
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
    return {}, sweep


def _run_externals(run_name: str, value: Any, models: list[ModelItem]) -> list[ModelItem]:
    """A run's ``external = ["dlib(size=112x92)", ...]``: external models for that run only,
    each valid, their labels clashing with no study model."""
    if not isinstance(value, list) or not value:
        raise ConfigError(
            f"[runs {run_name}] external must be a non-empty list of --models entries, e.g. "
            '["dlib(size=112x92)"]'
        )
    items = [_external_item(f"runs {run_name}", {"external": v}, "sweep") for v in value]
    labels = [m.label for m in models] + [m.label for m in items]
    dup = next((x for x in labels if labels.count(x) > 1), None)
    if dup is not None:
        raise ConfigError(f"[runs {run_name}] external model {dup!r} is listed twice; list it once")
    return items


def _runs_section(path: Path, top: dict, kind: str, models: list[ModelItem]) -> list[dict]:
    """[[runs]] (kind sweep only): folder-safe unique names, valid [sweep] keys, and valid
    external models of the run's own."""
    if "runs" not in top:
        return []
    if kind != "sweep" or not isinstance(top["runs"], list) or not top["runs"]:
        raise ConfigError(f"{path}: [[runs]] needs kind sweep and at least one table")
    runs = []
    for i, entry in enumerate(top["runs"]):
        entry = _check_keys(f"runs #{i + 1}", entry, _RUN_KEYS)
        run_name = entry.get("name")
        if not isinstance(run_name, str) or not run_name or not _RUN_NAME.fullmatch(run_name):
            raise ConfigError(
                f"[runs #{i + 1}] needs name = a folder-safe word (letters, digits, . - _), "
                f"got {run_name!r}"
            )
        for key in ("folds", "seeds"):
            if key in entry:
                entry[key] = _int_list(f"runs {run_name}", key, entry[key])
        if "external" in entry:
            entry["external"] = _run_externals(run_name, entry["external"], models)
        runs.append(entry)
    names = [r["name"] for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: two [[runs]] share a name; give each a unique name")
    return runs


def _check_sweeps(study: Study) -> None:
    """Build each run's SweepConfig and resolve its models now, so a misspelt value type or
    an unknown preset fails before any training (run_sweep does the remaining checks)."""
    for run in study.runs or [None]:
        try:
            config = study.sweep_config(run=run)
        except TypeError as exc:
            raise ConfigError(f"{study.path}: bad [sweep] value ({exc})") from None
        resolve_models(config.models, config.variants)
        for data, preset in ((config.data, config.preset), (config.train_data, None)):
            if data is not None and Path(str(data)).stem == "synth":
                parse_preset(preset)


_RUN_NAME = re.compile(r"[A-Za-z0-9._-]+")
"""What a run's name may hold: it names a folder under the study's."""


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
