"""Models x scales sweep -> one tidy results table, resumable cell by cell.

The experiment (PAPER.md, "The low-resolution experiment"): models are trained at full
resolution; only the *test* images are degraded (downsample by ``scale`` with the declared
chain, then back up to each model's input size); every model sees the identical degraded
pixels (:func:`lowres.embed.embed_many` degrades each batch once and feeds every model).

**Cells.** A sweep is models x scales x folds x seeds for one dataset, pairing and degradation
chain. A *cell* is one (model, scale, pairing, fold, seed, degradation) combination; its key
also holds everything else its numbers depend on (dataset and preset, the model's content hash
- ``TrainConfig.hash()`` for trained methods, the weights' sha256 for checkpoints -, the FAR
list, the cell format). Each cell is written to ``OUT/cells/`` as ``NAME.npz`` (pair scores,
identities of both images of each pair, per-image feature norms) and then ``NAME.json`` (its
table rows and clean-reference facts), each atomically; a cell exists iff its JSON does. A rerun
with the same arguments skips every existing cell, so an interrupted sweep (SIGINT, SIGKILL)
only computes what is missing, and adding a scale or a model computes only the new cells.
``results.csv``, ``roc.csv``, ``norms.csv``, ``scores.csv`` (genuine and impostor score
histograms) and ``provenance.json`` are assembled from the cells at the end, atomically, in a
fixed order, so the same arguments and seed give the same bytes. Every pair score is kept
(float32: pooling, the bootstrap, the ROC and score figures read them back), so
a cell costs 4 bytes per pair: 4.5 MB for synth's cpu preset (1.12M pairs), 20 KB for an ORL
fold; all-vs-all protocols above :data:`MAX_PAIRS` pairs are refused.

**Protocol.** Default: all-vs-all over the test images, pairs (i, j) with i < j. With
``pairing="probe"`` image i is the clean gallery and image j the degraded probe (surveillance
setting: a clean enrolment photo against a small face); with ``"both"`` both are degraded.
Datasets with a fixed pair list (``FaceDataset.pairs``) use that list instead (its first image
is the gallery) and also report 10-fold accuracy over the list's folds. Score = cosine.

**Scale 1 always runs**: it is the clean reference for threshold transfer (the threshold picked
at each FAR on clean pairs, applied at every scale: achieved FAR and FRR) and for norm ratios.

**Models.** Method names (paper notation) are trained on demand by :func:`lowres.train.train`
with the embedded defaults (one model per fold and seed, on that fold's training identities) and
cached under ``model_cache/<TrainConfig.hash()>/``, so a second sweep loads them; checkpoint
paths are loaded as they are. ``pixels`` (always added) is the raw-pixel reference: the
degraded image, grey, at the first model's input size, mean-centred per image; its cosine is the
Pearson correlation of pixels. On small data it can beat a CNN on tiny probes, and a reader must
see that when it happens.

**Ring-loss margin.** For every ``X+R(l)`` model whose base ``X`` is in the sweep: TAR(X+R) -
TAR(X) at each FAR and scale, with a paired bootstrap interval: test identities are resampled
with replacement (and seeds, when there are several), both models' TAR@FAR recomputed on the
same resampled pairs (a pair is kept with multiplicity k_a * k_b when its identities were drawn
k_a and k_b times; a genuine pair with multiplicity k). 1000 replicates, seed 1000, percentile
95% interval. The replicates are exact, not binned: see :func:`bootstrap_tar`.

**Shards.** ``SweepConfig.shard = (i, n)`` (``lowres sweep --shard i/n``) computes only shard
i's cells (:func:`shard_plan`: whole models per fold and seed, round robin, so each shard trains
only its own models) into its own ``--out`` folder, and writes ``shard.json`` instead of the
table. :func:`merge_shards` (``lowres merge OUT SHARD_DIR...``) checks that the shard folders
share settings and together hold every cell exactly once, copies the cells into ``OUT/cells``
and assembles them with the same function as an unsharded sweep: the same ``results.csv``.

**Pooling.** With several folds, cells are also pooled (scores concatenated over folds, one
threshold; ``fold = -1``); summaries and figures use the pooled rows, averaged over seeds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lowres.errors import CheckpointError, ConfigError, ResultsError
from lowres.results import (
    POOLED,
    atomic_save_npz,
    atomic_write_json,
    git_revision,
    make_row,
    normalise,
    robustness_rows,
    software_versions,
    sort_table,
    to_frame,
    write_table,
)

log = logging.getLogger("lowres.sweep")

DEFAULT_DATA = "synth"
"""Dataset of ``lowres sweep`` with no ``--data``, chosen by measurement (README, "Why synth is
the default"): 2,000 training identities let the losses differ, and 300 held-out identities
give 3,000 genuine and 1,121,250 impostor pairs, so the intervals are narrow enough to read."""
DEFAULT_FOLDS: tuple[int, ...] = (0,)
"""Folds of the default dataset's sweep (synth's fold 0: one held-out block of identities)."""
DEFAULT_MODELS: tuple[str, ...] = ("SM", "SF", "l2-SM(30)", "SM+CL", "SM+R(0.01)", "SF+R(0.01)")
DEFAULT_SCALES: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125, 0.0625)
DEFAULT_FARS: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
PIXELS = "pixels"
PAIRINGS = ("probe", "both")
CELL_FORMAT = "lowres-cell/1"
SWEEP_FORMAT = "lowres-sweep/1"
CELLS_DIR = "cells"
MAX_PAIRS = 20_000_000
"""Largest all-vs-all protocol a sweep accepts (scores are stored: 4 bytes per pair per cell)."""
ROC_POINTS = 80
"""Number of log-spaced FAR points per ROC curve in ``roc.csv``."""
SCORE_BINS = 128
"""Equal-width cosine bins over [-1, 1] of the genuine/impostor histograms in ``scores.csv``
(width 1/64: every edge is exact in binary, so the table prints them exactly)."""


def default_model_cache() -> Path:
    """``$LOWRES_CACHE/models`` if set, else ``~/.cache/lowres/models``."""
    root = os.environ.get("LOWRES_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "lowres"
    return base / "models"


@dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep depends on.

    Attributes:
        models: method names in paper notation and/or checkpoint paths (not ``pixels``:
            the raw-pixel reference is always added).
        scales: fractions of the image side in (0, 1]; exclusive with ``sizes``.
        sizes: face widths in pixels (1..image width); converted to ``size / width``.
        data: dataset name or path understood by :func:`lowres.data.get_split`.
        preset: dataset preset (e.g. synth size), None for the dataset's default.
        degrade: degradation chain in :func:`lowres.degrade.parse_degrade` form; None = default.
        pairing: ``"probe"`` (clean gallery vs degraded probe) or ``"both"``.
        fars: target FARs in (0, 1).
        folds, seeds: identity-disjoint test folds and seeds (training + degradation noise).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        batch_size: inference batch size.
        out: output folder.
        force: replace a folder holding a sweep made with other settings.
        epochs: training epochs for on-demand models (None: the training defaults).
        backbone: network for on-demand models (None: the training default, e.g. cpunet).
        model_cache: where trained models are cached (None: :func:`default_model_cache`).
        critical_tar, critical_far: target of the critical-resolution summary.
        n_boot, boot_seed: Ring-margin bootstrap replicates and seed.
        plot: draw the figures at the end.
        save_baseline: also write a ``lowres check`` baseline to this file.
        jobs: models trained in parallel processes with one torch thread each (None: 2 on a
            CPU with at least 2 cores, else 1). Two 1-thread jobs finish about twice as fast
            as one 2-thread job on the 2-core machines (FINDINGS.md); on a GPU one process
            owns the device. Does not change any number, only the wall time.
        shard: ``(i, n)``: compute only shard i of n (see :func:`shard_plan`) and write a
            shard manifest instead of the table; :func:`merge_shards` joins the shards.
        variants: named training variants, model id -> ``{"method": paper notation, **TrainConfig
            overrides}``; a model id in ``models`` found here is trained with its overrides
            (e.g. ``{"SM+aug": {"method": "SM", "augment_resolution": True}}``). A ``+R``
            variant's Ring margin is taken against the base loss with the same overrides.
        train_data: dataset the on-demand models train on, whole (``train_split="all"``, one
            model per seed for every test fold), e.g. CASIA-WebFace for an LFW test; None:
            each test fold's model trains on the other identities of ``data``.
    """

    models: tuple[str, ...] = DEFAULT_MODELS
    scales: tuple[float, ...] | None = None
    sizes: tuple[int, ...] | None = None
    data: str = DEFAULT_DATA
    preset: str | None = None
    degrade: str | None = None
    pairing: str = "probe"
    fars: tuple[float, ...] = DEFAULT_FARS
    folds: tuple[int, ...] = (0,)
    seeds: tuple[int, ...] = (0,)
    device: str = "auto"
    batch_size: int = 256
    out: Path = Path("runs/default")
    force: bool = False
    epochs: int | None = None
    backbone: str | None = None
    model_cache: Path | None = None
    critical_tar: float = 0.5
    critical_far: float = 1e-2
    n_boot: int = 1000
    boot_seed: int = 1000
    plot: bool = True
    save_baseline: Path | None = None
    jobs: int | None = None
    shard: tuple[int, int] | None = None
    variants: dict[str, dict] | None = None
    train_data: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form for provenance."""
        out = dataclasses.asdict(self)
        for key in ("out", "model_cache", "save_baseline"):
            out[key] = None if out[key] is None else str(out[key])
        return out


@dataclass
class ModelEntry:
    """One model column of the sweep.

    Attributes:
        name: model id in the table.
        kind: ``"method"``, ``"checkpoint"``, ``"external"`` or ``"pixels"``.
        method: paper notation of the loss (``"pixels"`` for the reference; the format,
            ``"torchscript"`` or ``"onnx"``, for an external model).
        source: the method name, checkpoint folder or external-model entry given by the user.
        spec: parsed MethodSpec (None for pixels).
        train: TrainConfig overrides of a named variant (``SweepConfig.variants``), else empty.
    """

    name: str
    kind: str
    method: str
    source: str
    spec: Any = None
    train: dict = field(default_factory=dict)


@dataclass
class Prepared:
    """A model ready for inference at one (fold, seed)."""

    entry: ModelEntry
    module: Any
    adapter: Any
    model_hash: str


@dataclass
class SweepResult:
    """What :func:`run_sweep` returns.

    Attributes:
        out: output folder.
        table: the assembled results table.
        computed: cells computed by this call.
        reused: cells found on disk and reused.
        timings: seconds per stage (train, embed, score, assemble, bootstrap, plot, total).
        figures: written figure files.
    """

    out: Path
    table: pd.DataFrame
    computed: int
    reused: int
    timings: dict[str, float]
    figures: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def parse_float_list(text: str, what: str) -> tuple[float, ...]:
    """``"1,0.5,1/4"`` -> floats (fractions allowed). ConfigError on empty or non-numbers."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ConfigError(f"{what} is empty; give a comma list such as 1,0.5,0.25")
    out = []
    for item in items:
        try:
            if "/" in item:
                num, den = item.split("/", 1)
                value = float(num) / float(den)
            else:
                value = float(item)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"{what}: {item!r} is not a number; use e.g. 0.5 or 1/4") from None
        out.append(value)
    return tuple(out)


def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> ints >= 0. ConfigError on empty, negative or non-integers."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ConfigError(f"{what} is empty; give a comma list such as 0,1")
    out = []
    for item in items:
        if not re.fullmatch(r"\d+", item):
            raise ConfigError(f"{what}: {item!r} is not an integer >= 0")
        out.append(int(item))
    if len(set(out)) != len(out):
        raise ConfigError(f"{what} lists a value twice: {text}")
    return tuple(out)


def validate_scales(scales: Iterable[float]) -> tuple[float, ...]:
    """Scales in (0, 1], de-duplicated, sorted descending, with 1 added (clean reference)."""
    values = []
    for s in scales:
        if not (isinstance(s, (int, float)) and math.isfinite(s) and 0 < s <= 1):
            raise ConfigError(
                f"scale {s!r} is outside (0, 1]; a scale is the fraction of the image side kept"
            )
        values.append(float(s))
    if not values:
        raise ConfigError("no scales given; use e.g. --scales 1,0.5,0.25")
    return tuple(sorted(set(values) | {1.0}, reverse=True))


def validate_fars(fars: Iterable[float]) -> tuple[float, ...]:
    """FARs in (0, 1), de-duplicated, sorted ascending."""
    values = []
    for f in fars:
        if not (isinstance(f, (int, float)) and math.isfinite(f) and 0 < f < 1):
            raise ConfigError(f"FAR {f!r} is outside (0, 1); use e.g. --far 1e-3,1e-2")
        values.append(float(f))
    if not values:
        raise ConfigError("no FAR given; use e.g. --far 1e-3,1e-2,1e-1")
    return tuple(sorted(set(values)))


def _looks_like_path(text: str) -> bool:
    from lowres.external import is_external

    return (
        "/" in text
        or os.sep in text
        or text.startswith(".")
        or Path(text).exists()
        or is_external(text)
    )


# Training settings a variant may not override: the sweep owns them (or they only choose how
# to run, not what is trained).
_VARIANT_RESERVED = ("method", "data", "fold", "seed", "preset", "split_seed", "train_split")


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME=METHOD[;key=value...]`` (the CLI's ``--variant``) -> (NAME, {"method": ..., ...}).

    Values are JSON where they parse (``true``, ``4``, ``[0.0625, 1]``), else strings:
    ``"SM+aug=SM;augment_resolution=true"``.

    Raises:
        ConfigError: no ``=``, an empty name or method, or a setting without ``=``.
    """
    name, eq, rest = (p.strip() for p in str(text).partition("="))
    parts = [p.strip() for p in rest.split(";")]
    if not eq or not name or not parts[0]:
        raise ConfigError(
            f"variant {text!r} is not NAME=METHOD[;key=value...], e.g. "
            "'SM+aug=SM;augment_resolution=true'"
        )
    values: dict[str, Any] = {"method": parts[0]}
    for part in filter(None, parts[1:]):
        key, eq, value = (p.strip() for p in part.partition("="))
        if not eq or not key:
            raise ConfigError(f"variant {name!r}: {part!r} is not key=value")
        try:
            values[key] = json.loads(value)
        except json.JSONDecodeError:
            values[key] = value
    return name, values


def _variant_entry(name: str, values: Any) -> ModelEntry:
    from lowres.methods import parse_method
    from lowres.train import TrainConfig

    if not isinstance(values, dict) or "method" not in values:
        raise ConfigError(f"variant {name!r} needs a method, e.g. {{method = 'SM'}}")
    train = {k: v for k, v in values.items() if k != "method"}
    reserved = sorted(set(train) & set(_VARIANT_RESERVED))
    if reserved:
        raise ConfigError(
            f"variant {name!r} sets {reserved[0]!r}, which the sweep sets for every model; "
            "drop it from the variant"
        )
    spec = parse_method(str(values["method"]))
    # Unknown keys and bad values fail here, before anything is trained.
    TrainConfig.from_dict({**train, "method": str(spec)})
    if name.lower() == PIXELS or _looks_like_path(name):
        raise ConfigError(f"variant name {name!r} is reserved or looks like a path; rename it")
    return ModelEntry(
        name=name, kind="method", method=str(spec), source=name, spec=spec, train=train
    )


def resolve_models(
    models: Sequence[str], variants: dict[str, dict] | None = None
) -> list[ModelEntry]:
    """Method names / checkpoint paths / external models -> entries, validated before anything
    runs.

    An external model (TorchScript or ONNX file, ``[ts:|onnx:]PATH[(key=value,...)]``, see
    :mod:`lowres.external`) is loaded and dry-run on its adapter's input here, so a model that
    cannot take its adapter fails before the output folder is touched. Its model id is the
    file name (``arcface.pt``).

    Raises:
        ConfigError: empty list, unknown method, duplicate model id, ``pixels`` given, or an
            external model's adapter missing, invalid or not accepted by the model.
        CheckpointError: a checkpoint or model file that does not exist or cannot be loaded.
    """
    from lowres.methods import parse_method

    names = [str(m).strip() for m in models if str(m).strip()]
    if not names:
        raise ConfigError("no models given; use e.g. --models SM,SM+R(0.01) or checkpoint paths")
    variants = dict(variants or {})
    unused = sorted(set(variants) - set(names))
    if unused:
        raise ConfigError(f"variant {unused[0]!r} is not in the model list; add it to --models")
    entries: list[ModelEntry] = []
    for text in names:
        if text in variants:
            entries.append(_variant_entry(text, variants[text]))
            continue
        if text.lower() == PIXELS:
            raise ConfigError(
                "'pixels' is always scored as the reference; leave it out of --models"
            )
        if _looks_like_path(text):
            from lowres import external

            if external.is_external(text):
                ext = external.parse_external(text)
                external.load_spec(ext)
                entries.append(
                    ModelEntry(name=ext.path.name, kind="external", method=ext.format, source=text)
                )
                continue
            from lowres.checkpoint import read_sidecar

            path = Path(text).expanduser()
            if not path.exists():
                raise CheckpointError(
                    f"checkpoint {text} does not exist; check the path or give a method name"
                )
            sidecar = read_sidecar(path)
            spec = parse_method(sidecar["method"])
            folder = path if path.is_dir() else path.parent
            entries.append(
                ModelEntry(
                    name=folder.name,
                    kind="checkpoint",
                    method=str(spec),
                    source=str(folder),
                    spec=spec,
                )
            )
        else:
            spec = parse_method(text)
            entries.append(
                ModelEntry(name=str(spec), kind="method", method=str(spec), source=text, spec=spec)
            )
    seen: dict[str, str] = {}
    for entry in entries:
        if entry.name in seen:
            raise ConfigError(
                f"model id {entry.name!r} given twice ({seen[entry.name]} and {entry.source}); "
                "list each model once"
            )
        seen[entry.name] = entry.source
    return entries


def base_of(spec: Any) -> Any | None:
    """The spec without its Ring-loss term (``SF+R(0.01)`` -> ``SF``), or None without ``+R``."""
    if spec is None or dict(spec.aux).get("R") is None:
        return None
    return dataclasses.replace(spec, aux=tuple(a for a in spec.aux if a[0] != "R"))


# --------------------------------------------------------------------------------------------
# Output folder: settings fingerprint, refusal, cells
# --------------------------------------------------------------------------------------------


def settings_fingerprint(
    *, data: str, preset: str | None, pairing: str, degrade_hash: str, seeds, folds
) -> dict[str, Any]:
    """The settings a sweep folder is bound to; a rerun with other values is refused."""
    return {
        "format": SWEEP_FORMAT,
        "data": str(data),
        "preset": preset,
        "pairing": pairing,
        "degrade_hash": degrade_hash,
        "seeds": sorted(int(s) for s in seeds),
        "folds": sorted(int(f) for f in folds),
    }


_OWN_OUTPUTS = (
    "results.csv",
    "roc.csv",
    "norms.csv",
    "scores.csv",
    "provenance.json",
    CELLS_DIR,
    "figures",
    "shard.json",
)


def prepare_out_dir(out: Path, fingerprint: dict[str, Any], *, force: bool) -> None:
    """Refuse (before writing anything) a folder made with other settings unless ``force``.

    A folder holding files but no ``provenance.json`` is not a sweep folder and is refused too.
    With ``force``, only lowres's own outputs are removed; other files stay.

    Raises:
        ResultsError: the folder holds another sweep or foreign files (and not ``force``).
    """
    prov_path = out / "provenance.json"
    if out.exists() and not out.is_dir():
        raise ResultsError(f"--out {out} is a file; give a folder path")
    if not out.exists():
        return
    if prov_path.is_file():
        try:
            prov = json.loads(prov_path.read_text(encoding="utf-8"))
            old = prov.get("settings")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            old = None
        if old == fingerprint:
            return
        if not force:
            diff = _describe_difference(old, fingerprint)
            raise ResultsError(
                f"{out} holds a sweep made with other settings ({diff}); use another --out or "
                "--force to replace it"
            )
    elif any(out.iterdir()):
        if not force:
            raise ResultsError(
                f"{out} is not empty and holds no lowres sweep; use another --out or --force"
            )
    else:
        return
    for name in _OWN_OUTPUTS:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _describe_difference(old: Any, new: dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "unreadable provenance.json"
    keys = [k for k in new if old.get(k) != new[k]]
    return ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in keys) or "different format"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "model"


def cell_key(
    *,
    fingerprint: dict[str, Any],
    model: str,
    model_hash: str,
    scale: float,
    size_px: int,
    fold: int,
    seed: int,
    fars: Sequence[float],
) -> dict[str, Any]:
    """Everything a cell's numbers depend on."""
    return {
        "format": CELL_FORMAT,
        "data": fingerprint["data"],
        "preset": fingerprint["preset"],
        "pairing": fingerprint["pairing"],
        "degrade_hash": fingerprint["degrade_hash"],
        "model": model,
        "model_hash": model_hash,
        "scale": repr(float(scale)),
        "size_px": int(size_px),
        "fold": int(fold),
        "seed": int(seed),
        "fars": [repr(float(f)) for f in fars],
    }


def cell_stem(key: dict[str, Any]) -> str:
    """File stem of a cell: readable prefix + digest of the full key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return f"{_slug(key['model'])}__{key['size_px']:04d}px__f{key['fold']}_s{key['seed']}__{digest}"


def read_cell(cells_dir: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The cell's JSON if it exists, is readable and has this exact key, else None."""
    path = cells_dir / f"{cell_stem(key)}.json"
    if not path.is_file():
        return None
    try:
        cell = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if cell.get("key") != key or not (cells_dir / cell.get("npz", "")).is_file():
        return None
    return cell


def load_cell_arrays(cells_dir: Path, cell: dict[str, Any]) -> dict[str, np.ndarray]:
    """A cell's pair data: ``scores`` (P,), ``id_a``/``id_b`` (P,) identities of the two images
    of each pair, ``issame`` (P,), ``norms`` (N,) and ``labels`` (N,).

    All-vs-all cells store only scores and labels (pairs are ``np.triu_indices(N, 1)``);
    fixed pair lists store their image indices too.
    """
    with np.load(cells_dir / cell["npz"], allow_pickle=False) as data:
        out = {k: data[k] for k in data.files}
    labels = out["labels"].astype(np.int64)
    if out["pair_a"].size:
        idx_a, idx_b = out["pair_a"].astype(np.int64), out["pair_b"].astype(np.int64)
        issame = out["issame"].astype(bool)
    else:
        idx_a, idx_b = np.triu_indices(labels.size, k=1)
        issame = labels[idx_a] == labels[idx_b]
    out.update(id_a=labels[idx_a], id_b=labels[idx_b], issame=issame)
    return out


# --------------------------------------------------------------------------------------------
# Scores and metrics (pure functions)
# --------------------------------------------------------------------------------------------


def pair_scores(
    gallery: np.ndarray, probe: np.ndarray, idx_a: np.ndarray, idx_b: np.ndarray
) -> np.ndarray:
    """Cosine similarity of ``gallery[idx_a]`` and ``probe[idx_b]``.

    Args:
        gallery: (N, D) features of the gallery-side images.
        probe: (N, D) features of the probe-side images.
        idx_a, idx_b: (P,) image indices.

    Returns:
        (P,) float64 scores in [-1, 1]; a zero feature scores 0 with everything.
    """
    g = np.asarray(gallery, dtype=np.float64)
    p = np.asarray(probe, dtype=np.float64)
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    if idx_a.size * 4 >= g.shape[0] * p.shape[0]:
        # Dense protocols (all-vs-all): one matrix product beats gathering rows per pair.
        return np.clip((g @ p.T)[idx_a, idx_b], -1.0, 1.0)
    out = np.empty(idx_a.shape[0], dtype=np.float64)
    block = 1 << 16
    for start in range(0, out.size, block):
        a = idx_a[start : start + block]
        b = idx_b[start : start + block]
        out[start : start + block] = np.einsum("pd,pd->p", g[a], p[b])
    return np.clip(out, -1.0, 1.0)


def cell_metric_rows(
    scores: np.ndarray,
    issame: np.ndarray,
    norms: np.ndarray,
    *,
    fars: Sequence[float],
    clean: dict[str, Any] | None,
    pair_folds: np.ndarray | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Metric rows of one cell (model x scale) from its pair scores and feature norms.

    Args:
        scores: (P,) cosine scores. issame: (P,) bool, True = genuine.
        norms: (N,) feature norms of the probe-side images at this scale.
        fars: target FARs.
        clean: the clean reference (``{"thresholds": {repr(far): t}, "norm_mean": m}``) of
            this model, or None when this cell *is* the clean one.
        pair_folds: (P,) fold id per pair of a fixed pair list (10-fold accuracy), or None.

    Returns:
        (rows with metric/far/value/... fields, this cell's own clean-reference dict).
    """
    from lowres import metrics as M

    rows: list[dict[str, Any]] = []
    n_gen = int(np.count_nonzero(issame))
    n_imp = int(issame.size - n_gen)
    if n_gen == 0 or n_imp == 0:
        raise ConfigError(
            f"the test split has {n_gen} genuine and {n_imp} impostor pairs; it needs both "
            "(at least two images of some identity and two identities)"
        )
    counts = {"n_genuine": n_gen, "n_impostor": n_imp}
    thresholds: dict[str, float] = {}
    for far in fars:
        r = M.tar_at_far(scores, issame, far)
        thresholds[repr(float(far))] = float(r.threshold)
        rows.append(
            dict(
                metric="tar",
                far=far,
                value=r.tar,
                ci_low=r.ci_low,
                ci_high=r.ci_high,
                threshold=r.threshold,
                far_achieved=r.far_achieved,
                flagged=bool(r.flagged),
                **counts,
            )
        )
        ref = clean["thresholds"][repr(float(far))] if clean else r.threshold
        t_far, t_frr = M.rates_at_threshold(scores, issame, ref)
        rows.append(dict(metric="transfer_far", far=far, value=t_far, threshold=ref, **counts))
        rows.append(dict(metric="transfer_frr", far=far, value=t_frr, threshold=ref, **counts))
    rows.append(dict(metric="auc", value=M.auc(scores, issame), **counts))
    rows.append(dict(metric="eer", value=M.eer(scores, issame), **counts))
    rows.append(dict(metric="dprime", value=M.dprime(scores, issame), **counts))
    if pair_folds is not None and np.unique(pair_folds).size >= 2:
        mean, std = M.kfold_accuracy(scores, issame, pair_folds)
        rows.append(dict(metric="accuracy", value=mean, **counts))
        rows.append(dict(metric="accuracy_std", value=std, **counts))
    rows.append(dict(metric="genuine_cos_mean", value=float(scores[issame].mean()), **counts))
    rows.append(dict(metric="impostor_cos_mean", value=float(scores[~issame].mean()), **counts))
    norms = np.asarray(norms, dtype=np.float64)
    norm_mean = float(norms.mean())
    rows.append(dict(metric="norm_mean", value=norm_mean))
    rows.append(dict(metric="norm_std", value=float(norms.std())))
    ref_mean = clean["norm_mean"] if clean else norm_mean
    rows.append(dict(metric="norm_ratio", value=norm_mean / ref_mean if ref_mean > 0 else math.nan))
    return rows, {"thresholds": thresholds, "norm_mean": norm_mean}


# --------------------------------------------------------------------------------------------
# Paired identity bootstrap of TAR@FAR
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _BootData:
    """One model's pair scores arranged for fast identity-resampled TAR@FAR.

    Impostors are sorted by score (descending). Only the highest ones can set a threshold at
    the FARs asked for, so the top ``T`` are cut into blocks and each block summarised by its
    per-identity-pair counts: one matrix product then gives every replicate's impostor weight
    per block, the block where the FAR allowance is crossed is found from those, and only that
    block is scanned pair by pair. A replicate whose threshold falls below the kept top is
    recomputed from every impostor, so the result is exact either way.
    """

    gen_scores: np.ndarray  # (G,) ascending
    gen_ids: np.ndarray  # (G,)
    top_scores: np.ndarray  # (T,) descending
    top_lo: np.ndarray  # (T,) smaller identity id of each kept impostor pair
    top_hi: np.ndarray  # (T,)
    block_len: int  # kept impostors per block
    block_counts: np.ndarray  # (K, n_blocks * K) float32, symmetric pair counts per block
    counts: np.ndarray  # (K, K) float64 symmetric pair counts of every impostor
    imp_scores: np.ndarray  # (I,) every impostor, unsorted (fallback)
    imp_lo: np.ndarray
    imp_hi: np.ndarray


def _boot_data(
    scores: np.ndarray, id_a: np.ndarray, id_b: np.ndarray, n_ids: int, max_far: float
) -> _BootData:
    scores = np.asarray(scores, dtype=np.float64)
    same = id_a == id_b
    g_order = np.argsort(scores[same], kind="stable")
    imp = scores[~same]
    lo = np.minimum(id_a, id_b)[~same]
    hi = np.maximum(id_a, id_b)[~same]
    n_top = min(imp.size, math.ceil(min(1.0, 2.0 * max_far + 0.01) * imp.size) + 64)
    top = np.argpartition(-imp, n_top - 1)[:n_top] if n_top < imp.size else np.arange(imp.size)
    top = top[np.argsort(-imp[top], kind="stable")]
    # Many small blocks: a BLAS product per block is far cheaper per pair than the gathers of
    # the pair-by-pair scan (measured: 128 blocks of 300 identities ~4x faster than 16).
    n_blocks = int(np.clip(int(4e7 // (n_ids * n_ids)), 1, 128))
    block_len = max(1, math.ceil(n_top / n_blocks))
    n_blocks = math.ceil(n_top / block_len)
    block = np.arange(n_top) // block_len
    code = (block * n_ids + lo[top]) * n_ids + hi[top]
    per_block = np.bincount(code, minlength=n_blocks * n_ids * n_ids).reshape(
        n_blocks, n_ids, n_ids
    )
    per_block = per_block + per_block.transpose(0, 2, 1)
    counts = np.bincount(lo * n_ids + hi, minlength=n_ids * n_ids).reshape(n_ids, n_ids)
    return _BootData(
        gen_scores=scores[same][g_order],
        gen_ids=id_a[same][g_order],
        top_scores=imp[top],
        top_lo=lo[top],
        top_hi=hi[top],
        block_len=block_len,
        block_counts=per_block.transpose(1, 0, 2).reshape(n_ids, -1).astype(np.float32),
        counts=(counts + counts.T).astype(np.float64),
        imp_scores=imp,
        imp_lo=lo,
        imp_hi=hi,
    )


def _fallback_threshold(data: _BootData, weights: np.ndarray, allowed: float) -> float:
    """Exact threshold score of one replicate from every impostor (slow path, rarely taken)."""
    order = np.argsort(-data.imp_scores, kind="stable")
    w = weights[data.imp_lo[order]].astype(np.int64) * weights[data.imp_hi[order]]
    return float(data.imp_scores[order][int(np.argmax(np.cumsum(w) > allowed))])


def _allowed(far: float, total: np.ndarray) -> np.ndarray:
    """Largest integer c with c / total <= far (float division, as lowres.metrics does)."""
    c = np.floor(far * total)
    # A replicate that drew no impostor pair has total 0: c stays 0 (the divisions give inf/nan,
    # which compare False), so nothing is accepted; the warnings say nothing new.
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where((c + 1) / total <= far, c + 1, c)
        return np.where((c > 0) & (c / total > far), c - 1, c)


def _weighted_tar(data: _BootData, weights: np.ndarray, fars: Sequence[float]) -> np.ndarray:
    """TAR@FAR for each row of identity multiplicities ``weights`` (R, K) int -> (R, F).

    TAR = weighted share of genuine pairs scoring above v, where v is the largest impostor
    score whose weighted tail share exceeds the FAR (the definition of
    :func:`lowres.metrics.tar_at_far` with pair multiplicities k_a * k_b and k_id).
    """
    n_rep, n_ids = weights.shape
    rows = np.arange(n_rep)
    kf = weights.astype(np.float64)
    total_imp = np.einsum("rk,rk->r", kf @ data.counts, kf) / 2.0
    gen_w = weights[:, data.gen_ids]
    gen_tail = np.concatenate(
        [np.cumsum(gen_w[:, ::-1], axis=1)[:, ::-1], np.zeros((n_rep, 1), np.int64)], axis=1
    )
    total_gen = gen_tail[:, 0].astype(np.float64)
    k32 = weights.astype(np.float32)
    per_block = (k32 @ data.block_counts).reshape(n_rep, -1, n_ids)
    block_w = np.rint(np.einsum("rjk,rk->rj", per_block, k32).astype(np.float64) / 2.0)
    block_cum = np.cumsum(block_w, axis=1)
    offsets = np.arange(data.block_len)
    n_top = data.top_scores.size
    flat = weights.astype(np.int32).ravel()
    row_base = (rows * n_ids)[:, None]
    out = np.full((n_rep, len(fars)), np.nan)
    for j, far in enumerate(fars):
        allowed = _allowed(far, total_imp)
        jb = np.argmax(block_cum > allowed[:, None], axis=1)
        reached = block_cum[rows, jb] > allowed
        prior = np.where(jb > 0, block_cum[rows, np.maximum(jb - 1, 0)], 0.0)
        idx = np.minimum(jb[:, None] * data.block_len + offsets[None, :], n_top - 1)
        w = flat.take(row_base + data.top_lo[idx]) * flat.take(row_base + data.top_hi[idx])
        # Entries past the end of the last block repeat its last pair; they sit after the
        # crossing (or the replicate takes the slow path), so they never change the answer.
        cum = np.cumsum(w, axis=1) + prior[:, None]
        # The threshold sits just above the first impostor whose cumulative weight exceeds
        # the allowance.
        pos = np.argmax(cum > allowed[:, None], axis=1)
        v = data.top_scores[idx[rows, pos]]
        for r in np.flatnonzero(~reached & (total_imp > 0)):
            v[r] = _fallback_threshold(data, weights[r], allowed[r])
        above = np.searchsorted(data.gen_scores, v, side="right")
        accepted = gen_tail[rows, above].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, j] = np.where(total_imp > 0, accepted, total_gen) / total_gen
    return out


def bootstrap_tar(
    groups: Sequence[Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]],
    fars: Sequence[float],
    *,
    n_boot: int = 1000,
    seed: int = 1000,
    level: float = 0.95,
) -> dict[str, np.ndarray]:
    """Paired identity (and seed) bootstrap of TAR@FAR for several models on the same pairs.

    Each replicate draws the test identities with replacement (multiplicities k) and, with
    several seeds, the seeds with replacement; every model is scored on the same draw: an
    impostor pair of identities (a, b) counts k_a * k_b times, a genuine pair of identity i
    k_i times, and TAR@FAR is recomputed exactly with those multiplicities.

    Args:
        groups: one entry per seed; each a list with one ``(scores, id_a, id_b)`` per model,
            all models of a seed scored on the same pairs. Identity ids are ints in 0..K-1
            shared across seeds (the same test identities).
        fars: target FARs in (0, 1).
        n_boot: replicates (>= 1).
        seed: RNG seed (numpy PCG64).
        level: central interval level.

    Returns:
        ``{"point": (M, F), "reps": (n_boot, M, F), "low": (M, F), "high": (M, F)}`` plus, with
        two or more models, ``"diff_point"``, ``"diff_low"``, ``"diff_high"`` (F,) for model 0
        minus model 1. Points are seed means of the exact TAR (the definition of
        :func:`lowres.metrics.tar_at_far`); intervals are percentile intervals.
    """
    if not groups or not groups[0]:
        raise ConfigError("bootstrap needs at least one seed with one model")
    if int(n_boot) < 1:
        raise ConfigError(f"bootstrap replicates must be >= 1, got {n_boot}")
    n_models = len(groups[0])
    n_ids = 1 + max(int(max(ia.max(), ib.max())) for g in groups for (_, ia, ib) in g)
    max_far = max(fars)
    data = [
        [
            _boot_data(s, ia.astype(np.int64), ib.astype(np.int64), n_ids, max_far)
            for (s, ia, ib) in g
        ]
        for g in groups
    ]
    rng = np.random.Generator(np.random.PCG64(seed))
    ones = np.ones((1, n_ids), dtype=np.int64)
    point = np.mean(
        [[_weighted_tar(d, ones, fars)[0] for d in per_seed] for per_seed in data], axis=0
    )
    # Multinomial counts == drawing identities with replacement, as multiplicities.
    weights = rng.multinomial(n_ids, np.full(n_ids, 1.0 / n_ids), size=n_boot).astype(np.int64)
    n_seeds = len(groups)
    if n_seeds > 1:
        seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_boot)
    else:
        seed_counts = np.ones((n_boot, 1), dtype=np.int64)
    reps = np.zeros((n_boot, n_models, len(fars)))
    # Replicates per chunk: bounds the (R, blocks * K) product and the (R, block) scans.
    widest = max(
        max(d.block_counts.shape[1], 4 * d.block_len) for per_seed in data for d in per_seed
    )
    chunk = max(1, int(4e6 // widest))
    for s, per_seed in enumerate(data):
        share = (seed_counts[:, s] / n_seeds)[:, None]
        for m, d in enumerate(per_seed):
            for start in range(0, n_boot, chunk):
                sl = slice(start, start + chunk)
                tar = _weighted_tar(d, weights[sl], fars)
                reps[sl, m, :] += share[sl] * tar
    alpha = (1.0 - level) / 2.0
    out = {
        "point": point,
        "reps": reps,
        "low": np.nanquantile(reps, alpha, axis=0),
        "high": np.nanquantile(reps, 1.0 - alpha, axis=0),
    }
    if n_models >= 2:
        diff = reps[:, 0, :] - reps[:, 1, :]
        out["diff_point"] = point[0] - point[1]
        out["diff_low"] = np.nanquantile(diff, alpha, axis=0)
        out["diff_high"] = np.nanquantile(diff, 1.0 - alpha, axis=0)
    return out


# --------------------------------------------------------------------------------------------
# ROC points for figures
# --------------------------------------------------------------------------------------------


def roc_points(scores: np.ndarray, issame: np.ndarray, n_points: int = ROC_POINTS) -> np.ndarray:
    """(n, 2) [far, tar] at log-spaced target FARs from 1/#impostors to 1 (exact TAR@FAR)."""
    imp = np.sort(np.asarray(scores, dtype=np.float64)[~issame])[::-1]
    gen = np.sort(np.asarray(scores, dtype=np.float64)[issame])
    n_imp = imp.size
    targets = np.unique(np.geomspace(1.0 / n_imp, 1.0, n_points))
    out = []
    for far in targets:
        c = int(np.floor(far * n_imp + 1e-9))
        if c >= n_imp:
            tar = 1.0
        else:
            b = imp[c]
            tar = 1.0 - np.searchsorted(gen, b, side="right") / gen.size
        out.append((c / n_imp, tar))
    return np.asarray(out, dtype=np.float64)


def score_histogram(
    scores: np.ndarray, issame: np.ndarray, bins: int = SCORE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Genuine and impostor pair counts in ``bins`` equal cosine bins over [-1, 1].

    Bins are half-open ``[lo, hi)`` except the last, which holds 1.0 (numpy's convention);
    scores are cosines, already clipped to [-1, 1], so every pair is counted once.

    Returns:
        (edges (bins + 1,), genuine counts (bins,), impostor counts (bins,)), counts int64.
    """
    scores = np.asarray(scores, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    edges = np.linspace(-1.0, 1.0, bins + 1)
    gen = np.histogram(scores[issame], bins=edges)[0].astype(np.int64)
    imp = np.histogram(scores[~issame], bins=edges)[0].astype(np.int64)
    return edges, gen, imp


# --------------------------------------------------------------------------------------------
# Models: train on demand with a cache, load checkpoints, raw-pixel reference
# --------------------------------------------------------------------------------------------


def _pixel_module():
    import torch
    from torch import nn

    class PixelReference(nn.Module):
        """Raw-pixel 'model': (B, C, H, W) normalised pixels -> (B, C*H*W) mean-centred."""

        def __init__(self) -> None:
            super().__init__()
            self.embed_dim = 0

        def embed(self, x: torch.Tensor) -> torch.Tensor:
            flat = x.float().flatten(1)
            return flat - flat.mean(dim=1, keepdim=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.embed(x)

    return PixelReference().eval()


def _train_config(entry: ModelEntry, config: SweepConfig, fold: int, seed: int):
    from lowres.train import TrainConfig

    kwargs: dict[str, Any] = {
        "method": entry.method,
        "data": config.data,
        "fold": fold,
        "seed": seed,
    }
    if config.train_data is not None:
        # One model per seed, trained on the whole training dataset, for every test fold.
        kwargs.update(data=str(config.train_data), fold=0, train_split="all")
    elif config.preset is not None:
        kwargs["preset"] = config.preset
    if config.epochs is not None:
        kwargs["epochs"] = int(config.epochs)
    if config.backbone is not None:
        kwargs["model"] = config.backbone
    kwargs["device"] = config.device
    kwargs.update(entry.train)
    return TrainConfig.from_dict(kwargs)


def trained_checkpoint(entry: ModelEntry, config: SweepConfig, fold: int, seed: int) -> Path:
    """Checkpoint of a method at (fold, seed): from the model cache, or trained now and cached
    (see :func:`lowres.train.train_cached`)."""
    from lowres.train import train_cached

    cache = Path(config.model_cache) if config.model_cache else default_model_cache()
    return train_cached(_train_config(entry, config, fold, seed), cache)


def _is_cached(entry: ModelEntry, config: SweepConfig, fold: int, seed: int) -> bool:
    cache = Path(config.model_cache) if config.model_cache else default_model_cache()
    from lowres.train import CACHE_MARKER

    return (cache / _train_config(entry, config, fold, seed).hash() / CACHE_MARKER).is_file()


def _pretrain_one(entry: ModelEntry, config: SweepConfig, fold: int, seed: int) -> str:
    return str(trained_checkpoint(entry, config, fold, seed))


def training_workers(config: SweepConfig) -> int:
    """Parallel training processes for ``config`` (see ``SweepConfig.jobs``)."""
    if config.jobs is not None:
        if int(config.jobs) < 1:
            raise ConfigError(f"jobs must be >= 1, got {config.jobs}")
        return int(config.jobs)
    if str(config.device).startswith("cuda"):
        return 1
    if config.device == "auto":
        import torch

        if torch.cuda.is_available():
            return 1
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def pretrain_models(
    entries: Sequence[ModelEntry],
    config: SweepConfig,
    folds: Sequence[int],
    seeds: Sequence[int],
    workers: int,
) -> int:
    """Train every missing on-demand model, ``workers`` at a time; returns how many trained.

    Each model is trained exactly as :func:`trained_checkpoint` trains it in-process (seeded
    per batch, one thread on CPU), so the weights are bit-identical; only the wall time changes.
    """
    todo, hashes = [], set()
    for f in folds:
        for s in seeds:
            for e in entries:
                if e.kind != "method" or _is_cached(e, config, f, s):
                    continue
                # With train_data every test fold shares one model: train it once, not in
                # two processes racing for the same cache folder.
                digest = _train_config(e, config, f, s).hash()
                if digest not in hashes:
                    hashes.add(digest)
                    todo.append((e, f, s))
    if workers <= 1 or len(todo) <= 1:
        return 0
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    log.info("training %d models, %d in parallel", len(todo), workers)
    _warm_rendered_data([_train_config(e, config, f, s) for e, f, s in todo])
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as pool:
        futures = [pool.submit(_pretrain_one, e, config, f, s) for e, f, s in todo]
        for fut in futures:
            fut.result()
    return len(todo)


def _warm_rendered_data(configs: Sequence[Any]) -> None:
    """Render each distinct synth training split once here, into the disk cache, before the
    training processes start: otherwise every process renders the same 16,000 faces on one
    thread (about a minute each, most of the first sweep's non-training time). Splits too big
    for the cache (the gpu preset) are left to the processes."""
    from lowres.data.registry import has_own_split
    from lowres.data.synthetic import is_cached_size
    from lowres.train import _load_split

    seen = set()
    for cfg in configs:
        key = (str(cfg.data), cfg.fold, cfg.split_seed, cfg.preset, cfg.train_split)
        if key in seen or not has_own_split(cfg.data) or not is_cached_size("train", cfg.preset):
            continue
        seen.add(key)
        _load_split(cfg)


def prepare_models(
    entries: Sequence[ModelEntry], config: SweepConfig, fold: int, seed: int
) -> list[Prepared]:
    """Train-or-load every model for (fold, seed), then add the raw-pixel reference."""
    from lowres.checkpoint import load_checkpoint
    from lowres.embed import InputAdapter

    prepared: list[Prepared] = []
    for entry in entries:
        if entry.kind == "external":
            from lowres import external

            ext = external.parse_external(entry.source)
            module = external.load_spec(ext)
            prepared.append(Prepared(entry, module, ext.adapter, external.model_hash(ext)))
            continue
        if entry.kind == "method":
            path = trained_checkpoint(entry, config, fold, seed)
            model_hash = _train_config(entry, config, fold, seed).hash()
        else:
            path = Path(entry.source)
            model_hash = ""
        loaded = load_checkpoint(path)
        if entry.kind == "checkpoint":
            model_hash = str(loaded.sidecar.get("weights_sha256", ""))[:16]
        prepared.append(Prepared(entry, loaded.model, loaded.adapter, model_hash))
    first = prepared[0].adapter
    adapter = InputAdapter(channels="grey", size=tuple(first.size))
    pixel_entry = ModelEntry(name=PIXELS, kind="pixels", method=PIXELS, source=PIXELS)
    pixel_hash = f"pixels-grey-{first.size[0]}x{first.size[1]}"
    prepared.append(Prepared(pixel_entry, _pixel_module(), adapter, pixel_hash))
    return prepared


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------


SPLIT_SEED = 0
"""Seed of the identity folds: fixed, like ``TrainConfig.split_seed``, so every training seed
holds out the same test identities and a model never sees its test faces."""


def _test_split(config: SweepConfig, fold: int):
    from lowres.data import get_test_split

    kwargs: dict[str, Any] = {"fold": fold, "seed": SPLIT_SEED}
    if config.preset is not None:
        kwargs["preset"] = config.preset
    return get_test_split(config.data, **kwargs)


def _protocol(test) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(idx_a, idx_b, issame, pair_folds or None) for a test set."""
    labels = test.labels.numpy()
    pairs = getattr(test, "pairs", None)
    if pairs is not None:
        if pairs.idx_a is None or pairs.idx_b is None:
            raise ConfigError(
                f"dataset {test.name} has a pair list not attached to its images; reload it"
            )
        return (
            pairs.idx_a.numpy().astype(np.int64),
            pairs.idx_b.numpy().astype(np.int64),
            pairs.issame.numpy().astype(bool),
            pairs.fold.numpy().astype(np.int64),
        )
    n_pairs = labels.size * (labels.size - 1) // 2
    if n_pairs > MAX_PAIRS:
        raise ConfigError(
            f"{test.name}'s test split has {labels.size} images ({n_pairs:,} all-vs-all pairs); "
            f"sweeps store every pair score and allow at most {MAX_PAIRS:,}: use a smaller "
            "preset or a dataset with a fixed pair list"
        )
    idx_a, idx_b = np.triu_indices(labels.size, k=1)
    return idx_a, idx_b, labels[idx_a] == labels[idx_b], None


def _sizes_and_scales(config: SweepConfig, width: int) -> list[tuple[float, int]]:
    """[(scale, size_px)] descending, clean first."""
    if config.sizes is not None and config.scales is not None:
        raise ConfigError("give --scales or --sizes, not both")
    if config.sizes is not None:
        for s in config.sizes:
            if not (isinstance(s, (int, np.integer)) and 1 <= s <= width):
                raise ConfigError(
                    f"size {s!r} px is outside 1..{width} (the test images are {width} px wide)"
                )
        scales = validate_scales([s / width for s in config.sizes])
    else:
        scales = validate_scales(config.scales if config.scales is not None else DEFAULT_SCALES)
    out, seen = [], set()
    for s in scales:
        size = max(1, round(width * s))
        if size in seen:
            raise ConfigError(
                f"scales give face width {size} px twice on {width} px images; drop one"
            )
        seen.add(size)
        out.append((s, size))
    return out


def run_sweep(
    config: SweepConfig,
    *,
    on_cell: Callable[[dict[str, Any]], None] | None = None,
) -> SweepResult:
    """Run (or resume, or extend) a sweep and assemble its outputs.

    Args:
        config: the sweep settings.
        on_cell: called with each newly written cell's key (progress hooks, tests).

    Returns:
        SweepResult with the assembled table and the numbers of computed and reused cells.

    Raises:
        ConfigError / CheckpointError / DataError: bad settings, found before anything is
            written.
        ResultsError: ``out`` holds a sweep made with other settings (and not ``force``).
    """
    from lowres.degrade import DEFAULT, parse_degrade

    t_start = time.perf_counter()
    timings = {"train": 0.0, "embed": 0.0, "score": 0.0}
    if config.pairing not in PAIRINGS:
        raise ConfigError(f"pairing {config.pairing!r} is not one of {', '.join(PAIRINGS)}")
    if int(config.batch_size) < 1:
        raise ConfigError(f"batch size must be >= 1, got {config.batch_size}")
    _device_name(config.device)  # an unknown or absent device fails before the folder exists
    if config.save_baseline is not None and Path(config.save_baseline).is_dir():
        raise ConfigError(
            f"--save-baseline {config.save_baseline} is a folder; give a file path, e.g. "
            f"{Path(config.save_baseline) / 'baseline.csv'}"
        )
    if not (0 < config.critical_tar <= 1):
        raise ConfigError(f"critical TAR {config.critical_tar!r} is outside (0, 1]")
    fars = validate_fars(config.fars)
    if not any(math.isclose(f, config.critical_far) for f in fars):
        raise ConfigError(
            f"critical FAR {config.critical_far:g} is not among --far {list(fars)}; add it"
        )
    folds = parse_int_list(",".join(map(str, config.folds)), "folds")
    seeds = parse_int_list(",".join(map(str, config.seeds)), "seeds")
    entries = resolve_models(config.models, config.variants)
    shard = validate_shard(config.shard)
    if shard is not None and config.save_baseline is not None:
        raise ConfigError(
            "a shard has no table to save as a baseline; give --save-baseline to lowres merge"
        )
    plan = shard_plan([e.name for e in entries], folds, seeds, shard)
    spec = DEFAULT if config.degrade is None else parse_degrade(config.degrade)
    degrade_text, degrade_hash = str(spec), spec.hash()

    # Load every test split, and find every training set, before touching the output folder:
    # bad data fails early.
    tests = {f: _test_split(config, f) for f in folds}
    _check_training_data(config)
    first_test = tests[folds[0]]
    height, width = first_test.image_size
    grid = _sizes_and_scales(config, width)
    dataset_name = first_test.name

    fingerprint = settings_fingerprint(
        data=config.data,
        preset=config.preset,
        pairing=config.pairing,
        degrade_hash=degrade_hash,
        seeds=seeds,
        folds=folds,
    )
    out = Path(config.out)
    prepare_out_dir(out, fingerprint, force=config.force)
    cells_dir = out / CELLS_DIR
    cells_dir.mkdir(parents=True, exist_ok=True)
    for stale in cells_dir.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    provenance: dict[str, Any] = {
        "settings": fingerprint,
        "status": "running",
        "config": config.to_json(),
        "dataset": {"name": dataset_name, "image_size": [height, width]},
        "degradation": {"chain": degrade_text, "hash": degrade_hash},
        "versions": software_versions(),
        "git_revision": git_revision(),
        "seed": list(seeds),
    }
    atomic_write_json(out / "provenance.json", provenance)

    t0 = time.perf_counter()
    _pretrain_planned(entries, config, plan, training_workers(config))
    timings["train"] += time.perf_counter() - t0

    cells: dict[tuple[str, int, int, float], dict[str, Any]] = {}
    model_info: dict[str, ModelEntry] = {}
    computed = reused = 0
    n_images_embedded = 0
    n_model_images = 0
    for fold in folds:
        for seed in seeds:
            mine = plan[(fold, seed)]
            if not mine:
                continue
            t0 = time.perf_counter()
            owned = [e for e in entries if e.name in mine]
            prepared = [
                p for p in prepare_models(owned, config, fold, seed) if p.entry.name in mine
            ]
            timings["train"] += time.perf_counter() - t0
            test = tests[fold]
            for p in prepared:
                model_info[p.entry.name] = p.entry
            keys = {
                (p.entry.name, scale): cell_key(
                    fingerprint=fingerprint,
                    model=p.entry.name,
                    model_hash=p.model_hash,
                    scale=scale,
                    size_px=size,
                    fold=fold,
                    seed=seed,
                    fars=fars,
                )
                for p in prepared
                for scale, size in grid
            }
            missing: dict[float, list[Prepared]] = {}
            for p in prepared:
                for scale, _ in grid:
                    found = read_cell(cells_dir, keys[(p.entry.name, scale)])
                    if found is None:
                        missing.setdefault(scale, []).append(p)
                    else:
                        cells[(p.entry.name, fold, seed, scale)] = found
                        reused += 1
            if not missing:
                continue
            c, n_img, n_mimg = _compute_cells(
                config,
                test,
                prepared,
                grid,
                keys,
                missing,
                cells,
                cells_dir,
                fold,
                seed,
                spec,
                fars,
                timings,
                on_cell,
                total=sum(len(v) for v in missing.values()),
            )
            computed += c
            n_images_embedded += n_img
            n_model_images += n_mimg
    log.info("computed %d cells, reused %d", computed, reused)
    provenance.update(
        cells={"computed": computed, "reused": reused},
        inference={
            "images_degraded_and_embedded": n_images_embedded,
            "model_images": n_model_images,
            "images_per_s": round(n_images_embedded / timings["embed"], 1)
            if timings["embed"] > 0
            else None,
            "model_images_per_s": round(n_model_images / timings["embed"], 1)
            if timings["embed"] > 0
            else None,
            "device": _device_name(config.device),
        },
        **_table_provenance(model_info, grid, fars, config),
    )
    context = {
        "dataset": dataset_name,
        "pairing": config.pairing,
        "degrade": degrade_text,
        "degrade_hash": degrade_hash,
    }
    if shard is not None:
        timings["total"] = time.perf_counter() - t_start
        model_ids = [e.name for e in entries]
        _write_shard_manifest(
            out, provenance, shard, model_ids, model_info, cells, folds, seeds, context, timings
        )
        return SweepResult(
            out=out, table=to_frame([]), computed=computed, reused=reused, timings=timings
        )
    table, figures = _assemble_outputs(
        out, cells, model_info, grid, folds, seeds, fars, context, config, timings
    )
    timings["total"] = time.perf_counter() - t_start
    provenance.update(status="complete", timings_s={k: round(v, 3) for k, v in timings.items()})
    atomic_write_json(out / "provenance.json", provenance)
    return SweepResult(
        out=out, table=table, computed=computed, reused=reused, timings=timings, figures=figures
    )


def _table_provenance(model_info, grid, fars, config: SweepConfig) -> dict[str, Any]:
    """The provenance entries that describe the table's rows (shared by sweep and merge)."""
    return {
        "models": {
            name: {"kind": e.kind, "method": e.method, "source": e.source}
            for name, e in sorted(model_info.items())
        },
        "grid": [{"scale": s, "size_px": z} for s, z in grid],
        "fars": list(fars),
        "critical": {"tar": config.critical_tar, "far": config.critical_far},
        "bootstrap": {"replicates": config.n_boot, "seed": config.boot_seed, "level": 0.95},
    }


def _assemble_outputs(
    out: Path, cells, model_info, grid, folds, seeds, fars, context, config: SweepConfig, timings
) -> tuple[pd.DataFrame, list[Path]]:
    """Cells in ``out/cells`` -> results.csv, roc.csv, norms.csv, scores.csv, the baseline and
    figures.

    The one assembly path of both :func:`run_sweep` and :func:`merge_shards`, so a merged
    sweep writes the bytes an unsharded one writes.
    """
    t0 = time.perf_counter()
    table, roc_frame, norms_frame, scores_frame = assemble(
        out / CELLS_DIR, cells, model_info, grid, folds, seeds, fars, context, config, timings
    )
    write_table(table, out / "results.csv")
    _write_frame(roc_frame, out / "roc.csv")
    _write_frame(norms_frame, out / "norms.csv")
    _write_frame(scores_frame, out / "scores.csv")
    timings["assemble"] = time.perf_counter() - t0 - timings.get("bootstrap", 0.0)
    if config.save_baseline is not None:
        from lowres.check import save_baseline

        save_baseline(table, config.save_baseline)
    figures: list[Path] = []
    if config.plot:
        from lowres.plots import plot_run

        t0 = time.perf_counter()
        figures = plot_run(out)
        timings["plot"] = time.perf_counter() - t0
    return table, figures


def _check_training_data(config: SweepConfig) -> None:
    """``train_data`` (the set on-demand models train on, when not the test set) resolves and
    has its files; loading it waits until the first model trains. Variants cannot set data."""
    from lowres.data.registry import check_dataset

    if config.train_data is not None and str(config.train_data) != str(config.data):
        check_dataset(config.train_data)


def _device_name(name: str) -> str:
    from lowres.embed import pick_device

    return str(pick_device(None if name == "auto" else name))


def _write_frame(frame: pd.DataFrame, path: Path) -> None:
    from lowres.atomic import atomic_write_text

    atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n", float_format="%.17g"))


def _compute_cells(
    config,
    test,
    prepared,
    grid,
    keys,
    missing,
    cells,
    cells_dir,
    fold,
    seed,
    spec,
    fars,
    timings,
    on_cell,
    *,
    total,
) -> tuple[int, int, int]:
    """Embed and score every missing cell of one (fold, seed). Returns counts for provenance."""
    from lowres.embed import embed_many, pick_device

    device = pick_device(None if config.device == "auto" else config.device)
    idx_a, idx_b, issame, pair_folds = _protocol(test)
    labels = test.labels.numpy().astype(np.int64)
    images = test.images
    size_of = dict(grid)
    need = {p.entry.name: p for ps in missing.values() for p in ps}

    def run(models: dict[str, Prepared], scale: float):
        t0 = time.perf_counter()
        emb = embed_many(
            images,
            {n: (p.module, p.adapter) for n, p in models.items()},
            scale=scale,
            size_px=None if scale == 1.0 else size_of[scale],
            spec=spec,
            batch_size=int(config.batch_size),
            device=device,
            seed=seed,
        )
        timings["embed"] += time.perf_counter() - t0
        return emb

    # Clean embeddings: the gallery of every pairing-"probe" cell and the clean reference.
    clean = run(need, 1.0)
    n_images, n_model_images = images.shape[0], images.shape[0] * len(need)
    done = 0
    for scale, _ in grid:
        todo = missing.get(scale)
        if not todo:
            continue
        if scale == 1.0:
            emb = {p.entry.name: clean[p.entry.name] for p in todo}
        else:
            emb = run({p.entry.name: p for p in todo}, scale)
            n_images += images.shape[0]
            n_model_images += images.shape[0] * len(todo)
        for p in todo:
            t0 = time.perf_counter()
            name = p.entry.name
            probe = emb[name]
            gallery = clean[name] if config.pairing == "probe" else probe
            # Metrics are computed from the float32 scores stored in the cell, the same numbers
            # pooling, the bootstrap and the ROC figure read back later.
            scores = pair_scores(
                gallery.features.float().cpu().numpy(),
                probe.features.float().cpu().numpy(),
                idx_a,
                idx_b,
            ).astype(np.float32)
            norms = probe.norms.float().cpu().numpy()
            clean_ref = None
            if scale != 1.0:
                clean_ref = _clean_reference(cells, cells_dir, keys, name, fold, seed)
            rows, own_ref = cell_metric_rows(
                scores.astype(np.float64),
                issame,
                norms,
                fars=fars,
                clean=clean_ref,
                pair_folds=pair_folds,
            )
            key = keys[(name, scale)]
            stem = cell_stem(key)
            fixed = pair_folds is not None
            atomic_save_npz(
                cells_dir / f"{stem}.npz",
                scores=scores,
                labels=labels.astype(np.int32),
                norms=norms.astype(np.float32),
                pair_a=idx_a.astype(np.int32) if fixed else np.zeros(0, np.int32),
                pair_b=idx_b.astype(np.int32) if fixed else np.zeros(0, np.int32),
                issame=issame if fixed else np.zeros(0, bool),
                pair_folds=pair_folds if fixed else np.zeros(0, np.int64),
            )
            cell = {
                "format": CELL_FORMAT,
                "key": key,
                "npz": f"{stem}.npz",
                "rows": rows,
                "clean_ref": own_ref if scale == 1.0 else clean_ref,
                "seconds": round(time.perf_counter() - t0, 4),
            }
            atomic_write_json(cells_dir / f"{stem}.json", cell)
            # Read back what was written, so a fresh run and a resumed one assemble identical
            # numbers.
            cells[(name, fold, seed, scale)] = read_cell(cells_dir, key)
            timings["score"] += time.perf_counter() - t0
            done += 1
            log.info(
                "[%*d/%d] %-14s %4d px  fold %d seed %d  TAR@%g=%.3f",
                len(str(total)),
                done,
                total,
                name,
                size_of[scale],
                fold,
                seed,
                fars[0],
                rows[0]["value"],
            )
            if on_cell is not None:
                on_cell(key)
    return done, n_images, n_model_images


def _clean_reference(cells, cells_dir, keys, name, fold, seed) -> dict[str, Any]:
    cell = cells.get((name, fold, seed, 1.0))
    if cell is None:
        cell = read_cell(cells_dir, keys[(name, 1.0)])
    if cell is None:
        raise ResultsError(f"clean cell of {name} is missing; rerun the sweep")
    return cell["clean_ref"]


# --------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------


def assemble(
    cells_dir: Path,
    cells: dict[tuple[str, int, int, float], dict[str, Any]],
    model_info: dict[str, ModelEntry],
    grid: Sequence[tuple[float, int]],
    folds: Sequence[int],
    seeds: Sequence[int],
    fars: Sequence[float],
    context: dict[str, str],
    config: SweepConfig,
    timings: dict[str, float],
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Cells -> (results table, ROC points, per-image norms, score histograms), all
    deterministic."""
    size_of = dict(grid)
    rows: list[dict[str, Any]] = []
    for (name, fold, seed, scale), cell in sorted(cells.items()):
        entry = model_info[name]
        for r in cell["rows"]:
            rows.append(
                make_row(
                    **context,
                    model=name,
                    method=entry.method,
                    scale=scale,
                    size_px=size_of[scale],
                    fold=fold,
                    seed=seed,
                    **r,
                )
            )

    arrays: dict[tuple[str, int, int, float], dict[str, np.ndarray]] = {}

    def arr(key):
        if key not in arrays:
            arrays[key] = load_cell_arrays(cells_dir, cells[key])
        return arrays[key]

    names = sorted(model_info)
    pooled = len(folds) > 1
    id_offset = {}
    offset = 0
    for fold in folds:
        id_offset[fold] = offset
        offset += int(arr((names[0], fold, seeds[0], 1.0))["labels"].max()) + 1

    def level(name, seed, scale):
        """(scores, id_a, id_b, issame, norms, pair_folds) for the primary fold level."""
        parts = [arr((name, f, seed, scale)) for f in folds]
        return (
            np.concatenate([p["scores"].astype(np.float64) for p in parts]),
            np.concatenate(
                [
                    p["id_a"].astype(np.int64) + id_offset[f]
                    for p, f in zip(parts, folds, strict=True)
                ]
            ),
            np.concatenate(
                [
                    p["id_b"].astype(np.int64) + id_offset[f]
                    for p, f in zip(parts, folds, strict=True)
                ]
            ),
            np.concatenate([p["issame"] for p in parts]),
            np.concatenate([p["norms"].astype(np.float64) for p in parts]),
        )

    if pooled:
        for name in names:
            for seed in seeds:
                s, _, _, same, norms = level(name, seed, 1.0)
                clean_rows, clean_ref = cell_metric_rows(s, same, norms, fars=fars, clean=None)
                for scale, size in grid:
                    if scale == 1.0:
                        mrows = clean_rows
                    else:
                        s, _, _, same, norms = level(name, seed, scale)
                        mrows, _ = cell_metric_rows(s, same, norms, fars=fars, clean=clean_ref)
                    for r in mrows:
                        rows.append(
                            make_row(
                                **context,
                                model=name,
                                method=model_info[name].method,
                                scale=scale,
                                size_px=size,
                                fold=POOLED,
                                seed=seed,
                                **r,
                            )
                        )
    table = to_frame(rows)
    level_fold = POOLED if pooled else folds[0]
    primary = table[table["fold"] == level_fold]
    summary = robustness_rows(
        primary, target_tar=config.critical_tar, target_far=config.critical_far
    )

    t0 = time.perf_counter()
    margin_rows = []
    for name in names:
        entry = model_info[name]
        base_spec = base_of(entry.spec)
        if base_spec is None:
            continue
        base = next(
            (
                n
                for n in names
                if model_info[n].spec is not None
                and model_info[n].spec == base_spec
                and model_info[n].kind == entry.kind
                and model_info[n].train == entry.train
            ),
            None,
        )
        if base is None:
            log.info(
                "no base model %s in the sweep: Ring-loss margin of %s skipped", base_spec, name
            )
            continue
        for scale, size in grid:
            boot = _margin(cells_dir, cells, level, name, base, scale, folds, seeds, fars, config)
            for j, far in enumerate(fars):
                margin_rows.append(
                    make_row(
                        **context,
                        model=name,
                        method=entry.method,
                        scale=scale,
                        size_px=size,
                        fold=level_fold,
                        seed=seeds[0] if len(seeds) == 1 else None,
                        metric="ring_margin",
                        far=far,
                        value=float(boot["diff_point"][j]),
                        ci_low=float(boot["diff_low"][j]),
                        ci_high=float(boot["diff_high"][j]),
                        n_genuine=boot["n_genuine"],
                        n_impostor=boot["n_impostor"],
                        reference=base,
                    )
                )
    if len(seeds) > 1:
        # Several seeds: the seed mean of each model's TAR with an interval that holds the
        # identity *and* seed variation (what a paper table with several seeds should show).
        for name in names:
            for scale, size in grid:
                boot = _seed_mean(cells_dir, cells, level, name, scale, folds, seeds, fars, config)
                for j, far in enumerate(fars):
                    margin_rows.append(
                        make_row(
                            **context,
                            model=name,
                            method=model_info[name].method,
                            scale=scale,
                            size_px=size,
                            fold=level_fold,
                            seed=None,
                            metric="tar_mean",
                            far=far,
                            value=float(boot["point"][j]),
                            ci_low=float(boot["low"][j]),
                            ci_high=float(boot["high"][j]),
                            n_genuine=boot["n_genuine"],
                            n_impostor=boot["n_impostor"],
                        )
                    )
    timings["bootstrap"] = time.perf_counter() - t0
    table = sort_table(
        normalise(pd.concat([table, to_frame(summary), to_frame(margin_rows)], ignore_index=True))
    )

    roc_rows, norm_rows, score_rows = [], [], []
    for name in names:
        for seed in seeds:
            clean_norm_mean = float(level(name, seed, 1.0)[4].mean())
            for scale, size in grid:
                s, _, _, same, norms = level(name, seed, scale)
                for far, tar in roc_points(s, same):
                    roc_rows.append((name, model_info[name].method, seed, scale, size, far, tar))
                edges, gen, imp = score_histogram(s, same)
                for b in range(edges.size - 1):
                    score_rows.append(
                        (
                            name,
                            model_info[name].method,
                            seed,
                            scale,
                            size,
                            edges[b],
                            edges[b + 1],
                            gen[b],
                            imp[b],
                        )
                    )
                for i, v in enumerate(norms):
                    norm_rows.append(
                        (
                            name,
                            model_info[name].method,
                            seed,
                            scale,
                            size,
                            i,
                            v,
                            v / clean_norm_mean if clean_norm_mean > 0 else math.nan,
                        )
                    )
    roc_frame = pd.DataFrame(
        roc_rows, columns=["model", "method", "seed", "scale", "size_px", "far", "tar"]
    )
    norms_frame = pd.DataFrame(
        norm_rows,
        columns=["model", "method", "seed", "scale", "size_px", "image", "norm", "norm_rel"],
    )
    scores_frame = pd.DataFrame(
        score_rows,
        columns=[
            *("model", "method", "seed", "scale", "size_px"),
            *("bin_low", "bin_high", "n_genuine", "n_impostor"),
        ],
    )
    for frame in (roc_frame, norms_frame, scores_frame):
        frame.insert(0, "pairing", context["pairing"])
        frame.insert(0, "dataset", context["dataset"])
    return table, roc_frame, norms_frame, scores_frame


def _cached_bootstrap(
    cells_dir,
    cells,
    level,
    models,
    scale,
    folds,
    seeds,
    fars,
    config,
    *,
    fmt: str,
    prefix: str,
    summarise,
) -> dict:
    """:func:`bootstrap_tar` of ``models`` (one, or a model and its base) at one scale, cached
    in ``cells/`` as ``<prefix>__<model>__<size>px__<digest>.json``.

    The cache key holds every model's cell keys, the FARs and the bootstrap settings, so a
    rerun (or a sweep extended by another scale) reuses every result already computed.
    ``summarise(boot)`` picks what is stored from the bootstrap's output.
    """
    key = {"format": fmt}
    for role, name in zip(("model", "base"), models, strict=False):
        key[role] = [cells[(name, f, s, scale)]["key"] for f in folds for s in seeds]
    key |= {
        "fars": [repr(float(f)) for f in fars],
        "n_boot": int(config.n_boot),
        "boot_seed": int(config.boot_seed),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    size = key["model"][0]["size_px"]
    path = cells_dir / f"{prefix}__{_slug(models[0])}__{size:04d}px__{digest}.json"
    if path.is_file():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
            if cached.get("key") == key:
                return cached
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass
    groups = []
    for seed in seeds:
        groups.append([level(name, seed, scale)[:3] for name in models])
    boot = bootstrap_tar(groups, fars, n_boot=config.n_boot, seed=config.boot_seed)
    same = groups[0][0][1] == groups[0][0][2]
    result = {
        "key": key,
        **summarise(boot),
        "n_genuine": int(same.sum()),
        "n_impostor": int((~same).sum()),
    }
    atomic_write_json(path, result)
    return json.loads(path.read_text(encoding="utf-8"))


def _seed_mean(cells_dir, cells, level, name, scale, folds, seeds, fars, config) -> dict:
    """Seed-mean TAR of one model at one scale with its identity + seed bootstrap interval."""
    return _cached_bootstrap(
        cells_dir,
        cells,
        level,
        (name,),
        scale,
        folds,
        seeds,
        fars,
        config,
        fmt="lowres-seedmean/1",
        prefix="seedmean",
        summarise=lambda boot: {
            k: [float(v) for v in boot[k][0]] for k in ("point", "low", "high")
        },
    )


def _margin(cells_dir, cells, level, name, base, scale, folds, seeds, fars, config) -> dict:
    """Ring-margin bootstrap of ``name`` vs ``base`` at one scale (paired over identities and
    seeds)."""
    return _cached_bootstrap(
        cells_dir,
        cells,
        level,
        (name, base),
        scale,
        folds,
        seeds,
        fars,
        config,
        fmt="lowres-margin/1",
        prefix="margin",
        summarise=lambda boot: {
            k: [float(v) for v in boot[k]] for k in ("diff_point", "diff_low", "diff_high")
        },
    )


# --------------------------------------------------------------------------------------------
# Shards: one sweep split across processes or machines, then merged
# --------------------------------------------------------------------------------------------


SHARD_FORMAT = "lowres-shard/1"
SHARD_MANIFEST = "shard.json"
RUNTIME_KEYS = frozenset(
    {
        "out",
        "force",
        "plot",
        "save_baseline",
        "jobs",
        "model_cache",
        "device",
        "batch_size",
        "shard",
    }
)
"""SweepConfig fields that may differ between the shards of one sweep (where and how each
shard ran, not what it computes)."""


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> ``(2, 4)``. ConfigError unless ``1 <= i <= n``."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if match is None:
        raise ConfigError(f"shard {text!r} is not i/n; use e.g. 1/2 (shard i of n, 1 <= i <= n)")
    return validate_shard((int(match.group(1)), int(match.group(2))))  # type: ignore[return-value]


def validate_shard(shard: Any) -> tuple[int, int] | None:
    """None (the whole sweep) or ``(i, n)`` ints with ``1 <= i <= n``, else ConfigError."""
    if shard is None:
        return None
    try:
        i, n = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise ConfigError(f"shard {shard!r} is not (i, n); use e.g. (1, 2)") from None
    if not (n >= 1 and 1 <= i <= n):
        raise ConfigError(f"shard {i}/{n} is outside 1..n; use i/n with 1 <= i <= n, e.g. 1/2")
    return i, n


def shard_plan(
    models: Sequence[str],
    folds: Sequence[int],
    seeds: Sequence[int],
    shard: tuple[int, int] | None,
) -> dict[tuple[int, int], tuple[str, ...]]:
    """The model ids whose cells shard ``(i, n)`` computes, per (fold, seed).

    A unit is one model at one (fold, seed), with all its scales: the model is trained (or
    loaded) once for it, so a shard trains exactly the models of its units. Units are ordered
    by fold, then seed (both ascending), then the models' order in the sweep; unit k goes to
    shard ``k % n + 1`` (round robin), so shard sizes differ by at most one unit. The raw-pixel
    reference of a (fold, seed) goes with that (fold, seed)'s first model, whose input size it
    uses. ``shard=None``: every model and the reference.

    Args:
        models: model ids in sweep order (without ``pixels``).
        folds, seeds: the sweep's folds and seeds.
        shard: ``(i, n)`` or None.

    Returns:
        ``{(fold, seed): model ids in sweep order, plus "pixels" where this shard owns it}``.

    >>> shard_plan(["SM", "SF"], [0, 1], [0], (2, 2))
    {(0, 0): ('SF',), (1, 0): ('SF',)}
    """
    models = list(models)
    plan: dict[tuple[int, int], tuple[str, ...]] = {}
    k = 0
    for fold in sorted(folds):
        for seed in sorted(seeds):
            mine = []
            for j, name in enumerate(models):
                if shard is None or k % shard[1] + 1 == shard[0]:
                    mine.append(name)
                    if j == 0:
                        mine.append(PIXELS)
                k += 1
            plan[(fold, seed)] = tuple(mine)
    return plan


def _pretrain_planned(entries, config: SweepConfig, plan, workers: int) -> None:
    """:func:`pretrain_models` for the planned units only, as few calls as keep it exact.

    Units are grouped by their model set; a group whose (fold, seed) pairs form a full
    folds x seeds grid is one call (the whole unsharded sweep is), any other one call per seed.
    """
    groups: dict[tuple[str, ...], list[tuple[int, int]]] = {}
    for (fold, seed), names in plan.items():
        mine = tuple(e.name for e in entries if e.name in names)
        if mine:
            groups.setdefault(mine, []).append((fold, seed))
    for mine, pairs in groups.items():
        subset = [e for e in entries if e.name in mine]
        group_folds = sorted({f for f, _ in pairs})
        group_seeds = sorted({s for _, s in pairs})
        if len(pairs) == len(group_folds) * len(group_seeds):
            pretrain_models(subset, config, group_folds, group_seeds, workers)
            continue
        for seed in group_seeds:
            seed_folds = [f for f, s in pairs if s == seed]
            pretrain_models(subset, config, seed_folds, [seed], workers)


def _entry_json(entry: ModelEntry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "kind": entry.kind,
        "method": entry.method,
        "source": entry.source,
        "spec": None if entry.spec is None else str(entry.spec),
        "train": entry.train,
    }


def _entry_from_json(item: dict[str, Any]) -> ModelEntry:
    from lowres.methods import parse_method

    spec = item.get("spec")
    return ModelEntry(
        name=item["name"],
        kind=item["kind"],
        method=item["method"],
        source=item["source"],
        spec=None if spec is None else parse_method(spec),
        train=dict(item.get("train") or {}),
    )


def _write_shard_manifest(
    out: Path, provenance, shard, model_ids, model_info, cells, folds, seeds, context, timings
) -> None:
    """``provenance.json`` (status "shard") and ``shard.json``: what :func:`merge_shards`
    needs to check a shard against the others and assemble the whole sweep."""
    listed = [
        {
            "model": name,
            "fold": fold,
            "seed": seed,
            "scale": scale,
            "stem": cell_stem(cell["key"]),
        }
        for (name, fold, seed, scale), cell in sorted(cells.items())
    ]
    provenance.update(
        status="shard",
        shard={"index": shard[0], "count": shard[1]},
        timings_s={k: round(v, 3) for k, v in timings.items()},
        model_ids=list(model_ids),
        folds=list(folds),
        seeds=list(seeds),
        context=context,
        entries=[_entry_json(e) for _, e in sorted(model_info.items())],
        shard_cells=listed,
    )
    atomic_write_json(out / "provenance.json", provenance)
    atomic_write_json(out / SHARD_MANIFEST, {"format": SHARD_FORMAT, **provenance})


def _cell_label(model: str, size_px: int, fold: int, seed: int) -> str:
    return f"{model} {size_px}px fold {fold} seed {seed}"


def _some(labels: Sequence[str], limit: int = 4) -> str:
    more = len(labels) - limit
    return ", ".join(labels[:limit]) + (f" and {more} more" if more > 0 else "")


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / SHARD_MANIFEST
    if not path.is_file():
        raise ResultsError(
            f"{folder} holds no {SHARD_MANIFEST}; give the --out folders of finished "
            "`lowres sweep --shard i/n` runs"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ResultsError(f"{path} is unreadable; rerun that shard's sweep") from None
    if not isinstance(manifest, dict) or manifest.get("format") != SHARD_FORMAT:
        raise ResultsError(f"{path} is not a {SHARD_FORMAT} manifest; rerun that shard's sweep")
    return manifest


def _comparable(manifest: dict[str, Any]) -> dict[str, Any]:
    """What must be equal across the shards of one sweep."""
    return {
        "settings": manifest["settings"],
        "config": {k: v for k, v in manifest["config"].items() if k not in RUNTIME_KEYS},
        "shard count": manifest["shard"]["count"],
        "grid": manifest["grid"],
        "fars": manifest["fars"],
        "models": manifest["model_ids"],
        "folds": manifest["folds"],
        "seeds": manifest["seeds"],
        "context": manifest["context"],
    }


def _config_from_json(data: dict[str, Any]) -> SweepConfig:
    """Inverse of :meth:`SweepConfig.to_json` (lists back to tuples, paths back to Paths)."""
    fields = {f.name for f in dataclasses.fields(SweepConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ResultsError(
            f"shard config has unknown settings {unknown}; merge with the lowres version that "
            "ran the shards"
        )
    values: dict[str, Any] = {}
    for name, value in data.items():
        if isinstance(value, list):
            value = tuple(value)
        if name in ("out", "model_cache", "save_baseline") and value is not None:
            value = Path(value)
        values[name] = value
    return SweepConfig(**values)


def merge_shards(
    out: str | os.PathLike,
    shard_dirs: Sequence[str | os.PathLike],
    *,
    plot: bool = True,
    save_baseline: str | os.PathLike | None = None,
    force: bool = False,
) -> SweepResult:
    """Join the folders of ``lowres sweep --shard i/n`` runs into one sweep folder.

    Checks that every folder was made with the same settings and sweep config (everything but
    :data:`RUNTIME_KEYS`) and that together they hold every cell exactly once; copies the cells
    into ``out/cells`` and assembles them as :func:`run_sweep` does (same function), so
    ``results.csv`` is byte-identical to an unsharded sweep's. Provenance records each shard.

    Raises:
        ResultsError: a folder without a shard manifest, shards that disagree, a missing or
            duplicate cell, a cell file missing from its shard, or ``out`` holding a sweep with
            other settings (and not ``force``). Nothing is written before these checks.
    """
    t_start = time.perf_counter()
    out = Path(out)
    dirs = [Path(d) for d in shard_dirs]
    if not dirs:
        raise ResultsError("no shard folders given; use lowres merge OUT SHARD_DIR...")
    if out.resolve() in {d.resolve() for d in dirs}:
        raise ResultsError(f"{out} is one of the shard folders; merge into a new folder")
    manifests = [_read_manifest(d) for d in dirs]
    order = sorted(range(len(dirs)), key=lambda j: manifests[j]["shard"]["index"])
    dirs = [dirs[j] for j in order]
    manifests = [manifests[j] for j in order]
    first = _comparable(manifests[0])
    for folder, manifest in zip(dirs[1:], manifests[1:], strict=True):
        other = _comparable(manifest)
        if other != first:
            diff = _describe_difference(first, other)
            raise ResultsError(
                f"{folder} was swept with other settings than {dirs[0]} ({diff}); merge only "
                "shards of one sweep run with the same arguments"
            )

    head = manifests[0]
    grid = [(float(s["scale"]), int(s["size_px"])) for s in head["grid"]]
    size_of = dict(grid)
    fars = tuple(float(f) for f in head["fars"])
    folds = tuple(int(f) for f in head["folds"])
    seeds = tuple(int(s) for s in head["seeds"])
    count = int(head["shard"]["count"])
    universe = shard_plan(head["model_ids"], folds, seeds, None)
    expected = {
        (name, fold, seed, scale)
        for (fold, seed), names in universe.items()
        for name in names
        for scale, _ in grid
    }

    def label(coord):
        return _cell_label(coord[0], size_of[coord[3]], coord[1], coord[2])

    owner: dict[tuple[str, int, int, float], tuple[Path, str]] = {}
    duplicates: dict[tuple[Path, Path], list[str]] = {}
    for folder, manifest in zip(dirs, manifests, strict=True):
        for item in manifest["shard_cells"]:
            coord = (item["model"], int(item["fold"]), int(item["seed"]), float(item["scale"]))
            if coord in owner:
                duplicates.setdefault((owner[coord][0], folder), []).append(label(coord))
            else:
                owner[coord] = (folder, item["stem"])
    if duplicates:
        (a, b), labels = next(iter(duplicates.items()))
        raise ResultsError(
            f"{a} and {b} both hold cells {_some(labels)}; merge each shard's folder once"
        )
    missing = sorted(expected - set(owner))
    if missing:
        have = sorted({int(m["shard"]["index"]) for m in manifests})
        absent = [i for i in range(1, count + 1) if i not in have]
        hint = (
            f" (no folder for shard {', '.join(f'{i}/{count}' for i in absent)})" if absent else ""
        )
        raise ResultsError(
            f"{len(missing)} cells missing{hint}: {_some([label(c) for c in missing])}; give "
            "every shard's folder, or finish the missing shard with lowres sweep --shard i/n"
        )
    unexpected = sorted(set(owner) - expected)
    if unexpected:
        raise ResultsError(
            f"shard folders hold cells outside the sweep: {_some([label(c) for c in unexpected])}"
            "; rerun those shards"
        )

    keys: dict[tuple[str, int, int, float], dict[str, Any]] = {}
    fingerprint = head["settings"]
    for coord, (folder, stem) in sorted(owner.items()):
        src = folder / CELLS_DIR
        try:
            key = json.loads((src / f"{stem}.json").read_text(encoding="utf-8"))["key"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            key = None
        index = next(
            m["shard"]["index"] for d, m in zip(dirs, manifests, strict=True) if d == folder
        )
        if (
            not isinstance(key, dict)
            or read_cell(src, key) is None
            or any(
                key.get(k) != fingerprint[k] for k in ("data", "preset", "pairing", "degrade_hash")
            )
            or (key.get("model"), key.get("fold"), key.get("seed"), key.get("scale"))
            != (coord[0], coord[1], coord[2], repr(coord[3]))
        ):
            raise ResultsError(
                f"{folder} lacks a readable cell {label(coord)}; rerun lowres sweep with "
                f"--shard {index}/{count} --out {folder} to recompute it"
            )
        keys[coord] = key

    config = dataclasses.replace(
        _config_from_json(head["config"]),
        out=out,
        shard=None,
        force=force,
        plot=plot,
        save_baseline=None if save_baseline is None else Path(save_baseline),
    )
    prepare_out_dir(out, fingerprint, force=force)
    cells_dir = out / CELLS_DIR
    cells_dir.mkdir(parents=True, exist_ok=True)
    for stale in cells_dir.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    from lowres.atomic import atomic_write_bytes

    provenance: dict[str, Any] = {
        "settings": fingerprint,
        "status": "merging",
        "config": config.to_json(),
        "dataset": head["dataset"],
        "degradation": head["degradation"],
        "versions": software_versions(),
        "git_revision": git_revision(),
        "seed": list(seeds),
        "shards": [
            {
                "folder": str(folder),
                "index": m["shard"]["index"],
                "count": count,
                "cells": len(m["shard_cells"]),
                "device": m.get("inference", {}).get("device"),
                "git_revision": m.get("git_revision"),
                "versions": m.get("versions"),
                "timings_s": m.get("timings_s"),
                "config": {k: v for k, v in m["config"].items() if k in RUNTIME_KEYS},
            }
            for folder, m in zip(dirs, manifests, strict=True)
        ],
    }
    atomic_write_json(out / "provenance.json", provenance)
    t0 = time.perf_counter()
    cells: dict[tuple[str, int, int, float], dict[str, Any]] = {}
    for coord, (folder, stem) in sorted(owner.items()):
        src = folder / CELLS_DIR
        cell = read_cell(src, keys[coord])
        # The NPZ first: a cell exists iff its JSON does.
        atomic_write_bytes(cells_dir / cell["npz"], (src / cell["npz"]).read_bytes())
        atomic_write_bytes(cells_dir / f"{stem}.json", (src / f"{stem}.json").read_bytes())
        cells[coord] = read_cell(cells_dir, keys[coord])
    timings: dict[str, float] = {"copy": time.perf_counter() - t0}

    model_info = {item["name"]: _entry_from_json(item) for m in manifests for item in m["entries"]}
    table, figures = _assemble_outputs(
        out, cells, model_info, grid, folds, seeds, fars, head["context"], config, timings
    )
    timings["total"] = time.perf_counter() - t_start
    provenance.update(
        status="complete",
        timings_s={k: round(v, 3) for k, v in timings.items()},
        cells={"merged": len(cells), "computed": 0, "reused": len(cells)},
        **_table_provenance(model_info, grid, fars, config),
    )
    atomic_write_json(out / "provenance.json", provenance)
    return SweepResult(
        out=out, table=table, computed=0, reused=len(cells), timings=timings, figures=figures
    )


# --------------------------------------------------------------------------------------------
# Summary for the terminal
# --------------------------------------------------------------------------------------------


def summary_table(table: pd.DataFrame, far: float = 1e-2) -> pd.DataFrame:
    """TAR@``far`` per model x size_px (columns), plus resolution AUC and critical size."""
    from lowres.results import primary_rows

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
