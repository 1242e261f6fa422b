"""Models x scales sweep -> one tidy results table, resumable cell by cell.

The experiment (the Ring loss paper's low-resolution experiment): models are trained at full
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
95% interval. The replicates are exact, not binned: see :func:`lowres.bootstrap.bootstrap_tar`.

**Shards.** ``SweepConfig.shard = (i, n)`` (``lowres sweep --shard i/n``) computes only shard
i's cells (:func:`lowres.shards.shard_plan`: whole models per fold and seed, round robin, so
each shard trains only its own models) into its own ``--out`` folder, and writes ``shard.json``
instead of the table. :func:`merge_shards` (``lowres merge OUT SHARD_DIR...``) checks that the
shard folders share settings and together hold every cell exactly once, copies the cells into
``OUT/cells`` and assembles them with the same function as an unsharded sweep: the same
``results.csv``.

**Modules.** This module wires the stages: settings and model resolution, training on demand,
embedding and scoring each missing cell, assembly and summaries. The cell store and each
cell's pure metrics live in :mod:`lowres.cells`, the paired bootstrap in
:mod:`lowres.bootstrap`, shard planning and checking in :mod:`lowres.shards`.

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
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lowres import shards
from lowres.bootstrap import bootstrap_tar
from lowres.cells import (
    CELLS_DIR,
    cell_key,
    cell_metric_rows,
    load_cell_arrays,
    open_out_dir,
    pair_scores,
    read_cell,
    roc_points,
    score_histogram,
    settings_fingerprint,
    slug,
    write_cell,
)
from lowres.errors import CheckpointError, ConfigError, ResultsError
from lowres.processes import run_parallel
from lowres.results import (
    PIXELS,
    POOLED,
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
from lowres.training_logs import (
    TRAINING_FILE,
    merge_training,
    read_training,
    training_frame,
    write_training,
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
PAIRINGS = ("probe", "both")
MAX_PAIRS = 20_000_000
"""Largest all-vs-all protocol a sweep accepts (scores are stored: 4 bytes per pair per cell)."""


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
            as one 2-thread job on the 2-core machines (measured); on a GPU one process
            owns the device. Does not change any number, only the wall time.
        shard: ``(i, n)``: compute only shard i of n (see :func:`lowres.shards.shard_plan`)
            and write a shard manifest instead of the table; :func:`merge_shards` joins them.
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

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SweepConfig:
        """Inverse of :meth:`to_json` (lists back to tuples, paths back to Paths).

        Raises:
            ResultsError: a setting this version does not know (a shard run by another one).
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ResultsError(
                f"shard config has unknown settings {unknown}; merge with the lowres version "
                "that ran the shards"
            )
        values: dict[str, Any] = {}
        for name, value in data.items():
            if isinstance(value, list):
                value = tuple(value)
            if name in ("out", "model_cache", "save_baseline") and value is not None:
                value = Path(value)
            values[name] = value
        return cls(**values)


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

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (shard manifests)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "method": self.method,
            "source": self.source,
            "spec": None if self.spec is None else str(self.spec),
            "train": self.train,
        }

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> ModelEntry:
        """Inverse of :meth:`to_json`."""
        from lowres.methods import parse_method

        spec = item.get("spec")
        return cls(
            name=item["name"],
            kind=item["kind"],
            method=item["method"],
            source=item["source"],
            spec=None if spec is None else parse_method(spec),
            train=dict(item.get("train") or {}),
        )


@dataclass
class Prepared:
    """A model ready for inference at one (fold, seed)."""

    entry: ModelEntry
    module: Any
    adapter: Any
    model_hash: str
    folder: Path | None = None
    """The checkpoint folder of a trained or loaded model (its ``log.csv``), else None."""


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
    """``"1,0.5,1/4"`` -> floats (fractions allowed). ConfigError on an empty list or item,
    a non-number, or a value given twice."""
    items = _list_items(text, what, "1,0.5,0.25")
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
    if len(set(out)) != len(out):
        raise ConfigError(f"{what} lists a value twice: {text}")
    return tuple(out)


def _list_items(text: str, what: str, example: str) -> list[str]:
    items = [t.strip() for t in str(text).split(",")]
    if not any(items):
        raise ConfigError(f"{what} is empty; give a comma list such as {example}")
    if "" in items:
        raise ConfigError(f"{what} {text!r} has an empty item; remove the extra comma")
    return items


def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> ints in [0, 2^63) (seeds are 63-bit). ConfigError on empty, negative,
    too large or non-integers."""
    items = _list_items(text, what, "0,1")
    out = []
    for item in items:
        if not re.fullmatch(r"\d+", item) or int(item) >= 1 << 63:
            raise ConfigError(f"{what}: {item!r} is not an integer in [0, 2^63)")
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
    try:
        shadowed = parse_method(name)
    except ConfigError:
        shadowed = None
    # A variant may carry its own method's name (a study's shared settings do that); another
    # method's name would label one loss's results as another's.
    if shadowed is not None and shadowed != spec:
        raise ConfigError(
            f"variant name {name!r} is the method {shadowed}, so the table would label one "
            f"model as another; rename it, e.g. '{name}+aug'"
        )
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
            from lowres.checkpoint import load_checkpoint

            path = Path(text).expanduser()
            if not path.exists():
                raise CheckpointError(
                    f"checkpoint {text} does not exist; check the path or give a method name"
                )
            # The whole checkpoint is checked now (sha256, keys and shapes), not when its
            # cells come up: a damaged file must fail before the output folder is touched.
            sidecar = load_checkpoint(path).sidecar
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


SYNTH_VAL_IDENTITIES = 100


def train_config(entry: ModelEntry, config: SweepConfig, fold: int, seed: int):
    """The :class:`lowres.train.TrainConfig` of an on-demand model at (fold, seed): the
    embedded defaults, the sweep's data, preset, epochs, backbone and device, then the
    variant's overrides. Its ``hash()`` names the model in the cache and in every cell key."""
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
    if config.train_data is None and config.data == "synth":
        # synth's thousands of training identities spare 100 (a tenth of a small preset's) for
        # the held-out curve of the training figure (never trained on, disjoint from the test
        # identities).
        from lowres.data import synthetic

        name, _ = synthetic.parse_preset(config.preset)
        k = synthetic.PRESETS[name].train_identities
        kwargs["val_identities"] = min(SYNTH_VAL_IDENTITIES, k // 10) if k >= 20 else 0
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
    return train_cached(train_config(entry, config, fold, seed), cache)


def _is_cached(entry: ModelEntry, config: SweepConfig, fold: int, seed: int) -> bool:
    """True when the model's cache entry is finished and intact (a damaged one is retrained)."""
    from lowres.train import cached_model, model_key

    cache = Path(config.model_cache) if config.model_cache else default_model_cache()
    tc = train_config(entry, config, fold, seed)
    try:
        return cached_model(cache / model_key(tc), tc.hash()) is not None
    except CheckpointError:
        return False


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
                digest = train_config(e, config, f, s).hash()  # same config, same data
                if digest not in hashes:
                    hashes.add(digest)
                    todo.append((e, f, s))
    if workers <= 1 or len(todo) <= 1:
        return 0
    log.info("training %d models, %d in parallel", len(todo), workers)
    _warm_rendered_data([train_config(e, config, f, s) for e, f, s in todo])
    run_parallel(_pretrain_one, [(e, config, f, s) for e, f, s in todo], workers)
    return len(todo)


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
            # The cache folder is named by the model key: no second load of the training split.
            cache = Path(config.model_cache) if config.model_cache else default_model_cache()
            model_hash = path.relative_to(cache).parts[0]
        else:
            path = Path(entry.source)
            model_hash = ""
        loaded = load_checkpoint(path)
        if entry.kind == "checkpoint":
            model_hash = str(loaded.sidecar.get("weights_sha256", ""))[:16]
        folder = path if path.is_dir() else path.parent
        prepared.append(Prepared(entry, loaded.model, loaded.adapter, model_hash, folder))
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


def sweep_test_split(config: SweepConfig, fold: int):
    """The held-out test identities of ``fold`` (fixed :data:`SPLIT_SEED`)."""
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


def _check_pairs(test, fold: int) -> None:
    """A test split needs genuine and impostor pairs: found before any model trains."""
    issame = _protocol(test)[2]
    n_gen = int(np.count_nonzero(issame))
    if n_gen == 0 or n_gen == issame.size:
        raise ConfigError(
            f"fold {fold} of {test.name} has {n_gen} genuine and {issame.size - n_gen} impostor "
            "pairs; verification needs both (at least two images of some identity, and two "
            "identities)"
        )


def probe_grid(config: SweepConfig, width: int) -> list[tuple[float, int]]:
    """[(scale, size_px)] of the sweep on ``width``-pixel images: descending, clean first.

    Raises:
        ConfigError: both scales and sizes, a size outside 1..width, a scale outside (0, 1],
            or two scales rounding to the same width.
    """
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
    _check_training_settings(entries, config, folds[0], seeds[0])
    shard = shards.validate_shard(config.shard)
    if shard is not None and config.save_baseline is not None:
        raise ConfigError(
            "a shard has no table to save as a baseline; give --save-baseline to lowres merge"
        )
    plan = shards.shard_plan([e.name for e in entries], folds, seeds, shard)
    spec = DEFAULT if config.degrade is None else parse_degrade(config.degrade)
    degrade_text, degrade_hash = str(spec), spec.hash()

    # Load every test split, and find every training set, before touching the output folder:
    # bad data fails early.
    tests = {f: sweep_test_split(config, f) for f in folds}
    for fold, test in tests.items():
        _check_pairs(test, fold)
    _check_training_data(config)
    first_test = tests[folds[0]]
    height, width = first_test.image_size
    grid = probe_grid(config, width)
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
    with open_out_dir(out, fingerprint, force=config.force) as cells_dir:
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
        logs: list[tuple[str, str, int, int, Path]] = []
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
                    if p.folder is not None:
                        logs.append((p.entry.name, p.entry.method, fold, seed, p.folder))
                keys = {
                    (p.entry.name, scale): cell_key(
                        fingerprint=fingerprint,
                        data_digest=test.content_digest(),
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
        write_training(training_frame(logs), out / TRAINING_FILE)
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
            shards.write_shard_manifest(
                out,
                provenance,
                shard,
                model_ids=[e.name for e in entries],
                entries=[e.to_json() for _, e in sorted(model_info.items())],
                cells=cells,
                folds=folds,
                seeds=seeds,
                context=context,
                timings=timings,
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


def _check_training_settings(
    entries: Sequence[ModelEntry], config: SweepConfig, fold: int, seed: int
) -> None:
    """Everything the on-demand models need that can be checked without training them: the
    backbone and method names, every training setting, and a writable model cache (a preset
    for data without presets fails when the test splits load, also before the folder exists).
    Training starts after the output folder exists, so a bad setting found there would leave a
    half-made sweep behind. Fold and seed change none of these: one (fold, seed) checks all."""
    from lowres.atomic import check_writable
    from lowres.train import check_names

    methods = [e for e in entries if e.kind == "method"]
    for entry in methods:
        check_names(train_config(entry, config, fold, seed))
    if methods:
        cache = Path(config.model_cache) if config.model_cache else default_model_cache()
        check_writable(cache, "--model-cache")


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
    import torch

    from lowres.embed import embed_many, pick_device

    device = pick_device(None if config.device == "auto" else config.device)
    idx_a, idx_b, issame, pair_folds = _protocol(test)
    labels = test.labels.numpy().astype(np.int64)
    # Onto the device once for every scale (embed_many would copy it again for each call).
    images = test.images.to(device)
    size_of = dict(grid)
    width = images.shape[-1]
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
        for name, e in emb.items():
            bad = int((~torch.isfinite(e.features).all(dim=1)).sum())
            if bad:
                raise ConfigError(
                    f"model {name} gives NaN/inf features for {bad} of {e.features.shape[0]} "
                    f"test images at {size_of.get(scale, width)} px; check the model (an external "
                    "model's adapter normalisation, or retrain a diverged one)"
                )
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
            fixed = pair_folds is not None
            arrays = dict(
                scores=scores,
                labels=labels.astype(np.int32),
                norms=norms.astype(np.float32),
                pair_a=idx_a.astype(np.int32) if fixed else np.zeros(0, np.int32),
                pair_b=idx_b.astype(np.int32) if fixed else np.zeros(0, np.int32),
                issame=issame if fixed else np.zeros(0, bool),
                pair_folds=pair_folds if fixed else np.zeros(0, np.int64),
            )
            cells[(name, fold, seed, scale)] = write_cell(
                cells_dir,
                key,
                arrays,
                rows=rows,
                clean_ref=own_ref if scale == 1.0 else clean_ref,
                seconds=time.perf_counter() - t0,
            )
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
    """:func:`lowres.bootstrap.bootstrap_tar` of ``models`` (one, or a model and its base) at
    one scale, cached in ``cells/`` as ``<prefix>__<model>__<size>px__<digest>.json``.

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
    path = cells_dir / f"{prefix}__{slug(models[0])}__{size:04d}px__{digest}.json"
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
# Merging shards (lowres.shards checks them; the assembly is the sweep's own)
# --------------------------------------------------------------------------------------------


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
    :data:`lowres.shards.RUNTIME_KEYS`) and that together they hold every cell exactly once
    (:func:`lowres.shards.collect_shards`); copies the cells into ``out/cells`` and assembles
    them as :func:`run_sweep` does (same function), so ``results.csv`` is byte-identical to an
    unsharded sweep's. Provenance records each shard.

    Raises:
        ResultsError: a folder without a shard manifest, shards that disagree, a missing or
            duplicate cell, a cell file missing from its shard, or ``out`` holding a sweep with
            other settings (and not ``force``). Nothing is written before these checks.
    """
    t_start = time.perf_counter()
    out = Path(out)
    collected = shards.collect_shards(out, [Path(d) for d in shard_dirs])
    head = collected.head
    grid = [(float(s["scale"]), int(s["size_px"])) for s in head["grid"]]
    fars = tuple(float(f) for f in head["fars"])
    folds = tuple(int(f) for f in head["folds"])
    seeds = tuple(int(s) for s in head["seeds"])
    config = dataclasses.replace(
        SweepConfig.from_json(head["config"]),
        out=out,
        shard=None,
        force=force,
        plot=plot,
        save_baseline=None if save_baseline is None else Path(save_baseline),
    )
    fingerprint = head["settings"]
    with open_out_dir(out, fingerprint, force=force) as cells_dir:
        provenance: dict[str, Any] = {
            "settings": fingerprint,
            "status": "merging",
            "config": config.to_json(),
            "dataset": head["dataset"],
            "degradation": head["degradation"],
            "versions": software_versions(),
            "git_revision": git_revision(),
            "seed": list(seeds),
            "shards": shards.shard_records(collected),
        }
        atomic_write_json(out / "provenance.json", provenance)
        t0 = time.perf_counter()
        cells = shards.copy_cells(collected, cells_dir)
        write_training(
            merge_training(read_training(d / TRAINING_FILE) for d in collected.dirs),
            out / TRAINING_FILE,
        )
        timings: dict[str, float] = {"copy": time.perf_counter() - t0}

        model_info = {
            item["name"]: ModelEntry.from_json(item)
            for m in collected.manifests
            for item in m["entries"]
        }
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
