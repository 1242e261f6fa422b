"""What a sweep is asked to do: its settings (:class:`SweepConfig`), the lists the CLI parses,
their validation, the probe grid of face widths, and what a run returns (:class:`SweepResult`)."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lowres.data.images import cache_dir_default
from lowres.embed import pick_device
from lowres.errors import ConfigError, ResultsError

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


DEFAULT_TEMPLATE_SIZE = 2
"""Images (media) per template of ``protocol="template"`` when ``template_size`` is None: the
smallest template that pools, and with synth's five test images per identity two templates
(of 2 and 3 media) per identity, so every identity gives a genuine template pair."""


def default_model_cache() -> Path:
    """``$LOWRES_CACHE/models`` if set, else ``~/.cache/lowres/models``."""
    return cache_dir_default() / "models"


def resolve_model_cache(path: str | os.PathLike | None) -> Path:
    """``path``, or :func:`default_model_cache` when it is None or empty."""
    return Path(path) if path else default_model_cache()


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
        protocol: ``"verification"`` (pairs), ``"identification"`` (closed-set rank-k),
            ``"open-set"`` (TPIR at FPIR) or ``"template"`` (template 1:1 TAR at FAR): see
            :mod:`lowres.sweep.protocols`.
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
        template_size: images (media) per template of ``protocol="template"`` (None:
            :data:`DEFAULT_TEMPLATE_SIZE`); set with another protocol it is refused.
        distractors: identification / open-set only: ``synth``, a dataset, a folder of faces
            or ``none`` whose images join every search as nobody's mate
            (:mod:`lowres.sweep.distractors`); None: the dataset's own distractors if it has
            some (TinyFace), else none.
    """

    models: tuple[str, ...] = DEFAULT_MODELS
    scales: tuple[float, ...] | None = None
    sizes: tuple[int, ...] | None = None
    data: str = DEFAULT_DATA
    preset: str | None = None
    degrade: str | None = None
    pairing: str = "probe"
    protocol: str = "verification"
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
    template_size: int | None = None
    distractors: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form for provenance; ``template_size`` only when set, so the other
        protocols' provenance and shard manifests stay as they were (an older lowres merges
        them)."""
        out = dataclasses.asdict(self)
        for key in ("out", "model_cache", "save_baseline"):
            out[key] = None if out[key] is None else str(out[key])
        if out["template_size"] is None:
            del out["template_size"]
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
            raise ConfigError(
                f"FAR {f!r} is outside (0, 1) (with --protocol open-set --far gives the FPIR "
                "targets); use e.g. --far 1e-3,1e-2"
            )
        values.append(float(f))
    if not values:
        raise ConfigError("no FAR given; use e.g. --far 1e-3,1e-2,1e-1")
    return tuple(sorted(set(values)))


def validate_grid_options(scales: Any, sizes: Any) -> None:
    """The checks of the probe widths that need no image: scales or sizes, not both, and sizes
    in whole pixels >= 1 (:func:`probe_grid` checks them against the image width).

    >>> validate_grid_options(None, (48, 12))
    >>> validate_grid_options((1, 0.5), (48,))
    Traceback (most recent call last):
    lowres.errors.ConfigError: give --scales or --sizes, not both
    """
    if sizes is not None and scales is not None:
        raise ConfigError("give --scales or --sizes, not both")
    for s in sizes or ():
        if not (isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1):
            raise ConfigError(f"size {s!r} is not a whole number of pixels >= 1, e.g. 48,24,12")


def probe_grid(config: SweepConfig, width: int) -> list[tuple[float, int]]:
    """[(scale, size_px)] of the sweep on ``width``-pixel images: descending, clean first.

    Raises:
        ConfigError: both scales and sizes, a size outside 1..width, a scale outside (0, 1],
            or two scales rounding to the same width.
    """
    validate_grid_options(config.scales, config.sizes)
    if config.sizes is not None:
        for s in config.sizes:
            if s > width:
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


def device_name(name: str) -> str:
    """The device ``name`` (``"auto"``, ``"cpu"``, ``"cuda:0"``...) resolves to here; an unknown
    or absent device fails with a ConfigError."""
    return str(pick_device(None if name == "auto" else name))


def template_size_of(config: SweepConfig) -> int | None:
    """Images per template of a ``template`` sweep (``template_size`` or
    :data:`DEFAULT_TEMPLATE_SIZE`); None for the other protocols, which form no templates."""
    if config.protocol != "template":
        return None
    return DEFAULT_TEMPLATE_SIZE if config.template_size is None else config.template_size


def model_cache_of(config: SweepConfig) -> Path:
    """The folder ``config``'s on-demand models are cached in (``model_cache`` or the default)."""
    return resolve_model_cache(config.model_cache)
