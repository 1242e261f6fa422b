"""Cells -> the sweep's tables: ``results.csv`` (per-cell rows, folds pooled, robustness
summaries, Ring-loss margins and seed means with their bootstrap intervals, the norm-quality
rows), ``roc.csv``, ``norms.csv``, ``scores.csv`` and ``quality.csv``, all deterministic, then
the baseline and the figures."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lowres.bootstrap import bootstrap_tar
from lowres.cells import (
    CellStore,
    cell_metric_rows,
    roc_points,
    score_histogram,
    slug,
)
from lowres.check import save_baseline
from lowres.files import atomic_write_csv, atomic_write_json
from lowres.plots import plot_run
from lowres.progress import Stage
from lowres.results import (
    POOLED,
    make_row,
    normalise,
    robustness_rows,
    sort_table,
    stamp_rows,
    to_frame,
    write_table,
)
from lowres.sweep.config import SweepConfig, template_size_of
from lowres.sweep.models import ModelEntry, base_of, model_details
from lowres.sweep.protocols import (
    OPEN_SET_SEED,
    RANKS,
    cmc_frame,
    pooled_protocol_rows,
    rank1_margin_rows,
    template_level,
    template_rules,
)
from lowres.sweep.quality import quality_outputs

log = logging.getLogger("lowres.sweep")

Grid = Sequence[tuple[float, int]]


def table_provenance(model_info, grid, fars, config: SweepConfig) -> dict[str, Any]:
    """The provenance entries that describe the table's rows (shared by sweep and merge); each
    model with how it came to be (:func:`lowres.sweep.models.model_details`)."""
    return ({} if config.protocol == "verification" else _protocol_provenance(config)) | {
        "models": {
            name: {"kind": e.kind, "method": e.method, "source": e.source}
            | model_details(e, config)
            for name, e in sorted(model_info.items())
        },
        "grid": [{"scale": s, "size_px": z} for s, z in grid],
        "fars": list(fars),
        "critical": {"tar": config.critical_tar, "far": config.critical_far},
        "bootstrap": {"replicates": config.n_boot, "seed": config.boot_seed, "level": 0.95},
    }


def _protocol_provenance(config: SweepConfig) -> dict[str, Any]:
    """The identification protocol of a sweep, for its provenance (none for verification)."""
    if config.protocol == "template":
        return {"protocol": {"name": "template", **template_rules(template_size_of(config))}}
    rules = {
        "gallery": "first image (index order) of each enrolled identity",
        "ties": "pessimistic (rank = 1 + #other identities scoring >= the true one)",
    }
    if config.protocol == "identification":
        rules["ranks"] = list(RANKS)
    else:
        rules["enrolled"] = f"half the test identities, seed {OPEN_SET_SEED}"
        rules["fpir_targets"] = list(config.fars)
    return {"protocol": {"name": config.protocol, **rules}}


def assemble_outputs(
    out: Path, store: CellStore, model_info, grid, folds, seeds, fars, context, config, timings
) -> tuple[pd.DataFrame, list[Path]]:
    """Cells in ``out/cells`` -> results.csv, roc.csv, norms.csv, scores.csv, the baseline and
    figures.

    The one assembly path of both :func:`lowres.sweep.run_sweep` and
    :func:`lowres.sweep.merge_shards`, so a merged sweep writes the bytes an unsharded one
    writes.
    """
    t0 = time.perf_counter()
    table, roc_frame, norms_frame, scores_frame, edc_frame = assemble(
        store, model_info, grid, folds, seeds, fars, context, config, timings
    )
    write_table(table, out / "results.csv")
    atomic_write_csv(out / "roc.csv", roc_frame)
    atomic_write_csv(out / "norms.csv", norms_frame)
    atomic_write_csv(out / "scores.csv", scores_frame)
    atomic_write_csv(out / "quality.csv", edc_frame)
    if config.protocol == "identification":
        atomic_write_csv(out / "cmc.csv", cmc_frame(store, model_info, grid, folds, seeds, context))
    timings["assemble"] = (
        time.perf_counter() - t0 - timings.get("bootstrap", 0.0) - timings.get("quality", 0.0)
    )
    if config.save_baseline is not None:
        save_baseline(table, config.save_baseline)
    figures: list[Path] = []
    if config.plot:
        t0 = time.perf_counter()
        figures = plot_run(out)
        timings["plot"] = time.perf_counter() - t0
        log.info("figures: %d files in %.1f s", len(figures), timings["plot"])
    return table, figures


class Levels:
    """Each model's arrays at the primary fold level: one fold's, or all folds' concatenated
    (identities offset per fold so they stay distinct) when the sweep pools folds."""

    def __init__(self, store: CellStore, names: Sequence[str], folds: Sequence[int], seeds):
        self.store, self.folds = store, list(folds)
        self.offset: dict[int, int] = {}
        offset = 0
        for fold in self.folds:
            self.offset[fold] = offset
            offset += int(store.arrays((names[0], fold, seeds[0], 1.0))["labels"].max()) + 1

    def __call__(self, name: str, seed: int, scale: float):
        """(scores, id_a, id_b, issame, norms) over the folds, float64 scores and norms."""
        parts = [(self.store.arrays((name, f, seed, scale)), f) for f in self.folds]
        return (
            np.concatenate([p["scores"].astype(np.float64) for p, _ in parts]),
            np.concatenate([p["id_a"].astype(np.int64) + self.offset[f] for p, f in parts]),
            np.concatenate([p["id_b"].astype(np.int64) + self.offset[f] for p, f in parts]),
            np.concatenate([p["issame"] for p, _ in parts]),
            np.concatenate([p["norms"].astype(np.float64) for p, _ in parts]),
        )

    def flags(self, name: str, seed: int, scale: float) -> dict[str, np.ndarray]:
        """The per-image flags a model reported (``flag_<name>`` arrays), over the folds."""
        parts = [self.store.arrays((name, f, seed, scale)) for f in self.folds]
        keys = sorted(k for k in parts[0] if k.startswith("flag_"))
        return {k[len("flag_") :]: np.concatenate([p[k] for p in parts]) for k in keys}


def _cell_rows(store: CellStore, model_info, size_of, context) -> list[dict[str, Any]]:
    """Every cell's own rows (per fold and seed), in cell order."""
    rows = []
    for (name, fold, seed, scale), cell in sorted(store.cells.items()):
        rows += stamp_rows(
            cell["rows"],
            **context,
            model=name,
            method=model_info[name].method,
            scale=scale,
            size_px=size_of[scale],
            fold=fold,
            seed=seed,
        )
    return rows


def _pooled_rows(levels: Levels, model_info, grid: Grid, seeds, fars, context) -> list[dict]:
    """The metric rows of the folds pooled (``fold = -1``): one threshold over all folds."""
    rows = []
    for name in sorted(model_info):
        for seed in seeds:
            s, _, _, same, norms = levels(name, seed, 1.0)
            clean_rows, clean_ref = cell_metric_rows(
                s, same, norms, fars=fars, clean=None, flags=levels.flags(name, seed, 1.0)
            )
            for scale, size in grid:
                if scale == 1.0:
                    mrows = clean_rows
                else:
                    s, _, _, same, norms = levels(name, seed, scale)
                    flags = levels.flags(name, seed, scale)
                    mrows, _ = cell_metric_rows(
                        s, same, norms, fars=fars, clean=clean_ref, flags=flags
                    )
                rows += stamp_rows(
                    mrows,
                    **context,
                    model=name,
                    method=model_info[name].method,
                    scale=scale,
                    size_px=size,
                    fold=POOLED,
                    seed=seed,
                )
    return rows


def ring_base(name: str, model_info: dict[str, ModelEntry]) -> str | None:
    """The model id whose Ring margin ``name`` is measured against: the same loss without
    ``+R``, of the same kind and trained the same way; None when the sweep lacks it or
    ``name`` has no Ring term."""
    entry = model_info[name]
    base_spec = base_of(entry.spec)
    if base_spec is None:
        return None
    for n in sorted(model_info):
        other = model_info[n]
        if (
            other.spec is not None
            and other.spec == base_spec
            and other.kind == entry.kind
            and other.train == entry.train
        ):
            return n
    log.info("no base model %s in the sweep: Ring-loss margin of %s skipped", base_spec, name)
    return None


def _boot_rows(boot: dict, names: tuple[str, ...], fields: tuple[str, str, str], **row) -> list:
    """One row per FAR (``row["fars"]``) from a cached bootstrap's ``fields`` (point, low,
    high); a margin (two ``names``) names its base in ``reference``."""
    point, low, high = fields
    fars = row.pop("fars")
    return [
        make_row(
            **row,
            far=far,
            value=float(boot[point][j]),
            ci_low=float(boot[low][j]),
            ci_high=float(boot[high][j]),
            n_genuine=boot["n_genuine"],
            n_impostor=boot["n_impostor"],
            **({"reference": names[1]} if len(names) > 1 else {}),
        )
        for j, far in enumerate(fars)
    ]


def _margin_rows(boot: dict, name: str, base: str, metric: str, model_info, seeds, **row):
    """The rows (one per FAR) of the margin ``name`` minus ``base`` from its cached paired
    bootstrap ``boot``; ``row`` holds the context, fold, FARs, scale and width."""
    return _boot_rows(
        boot,
        (name, base),
        ("diff_point", "diff_low", "diff_high"),
        **row,
        model=name,
        method=model_info[name].method,
        seed=seeds[0] if len(seeds) == 1 else None,
        metric=metric,
    )


def _bootstrap_rows(boots: Bootstraps, model_info, grid: Grid, seeds, level_fold, context):
    """The Ring-margin rows of every ``+R`` model with its base in the sweep and, with several
    seeds, every model's seed-mean TAR (its interval holds identity *and* seed variation); a
    progress stage over the bootstraps (most of a rerun's time on a big sweep)."""
    rows = []
    names = sorted(model_info)
    common = dict(context, fold=level_fold, fars=boots.fars)
    pairs = [(n, b) for n in names if (b := ring_base(n, model_info)) is not None]
    means = names if len(seeds) > 1 else []
    t0 = time.perf_counter()
    total = (len(pairs) + len(means)) * len(grid)
    with Stage("bootstrap", total, log=log) as stage:
        for name, base in pairs:
            for scale, size in grid:
                margin = boots.margin(name, base, scale)
                rows += _margin_rows(margin, name, base, "ring_margin", model_info, seeds,
                                     scale=scale, size_px=size, **common)  # fmt: skip
                stage.advance(1, f"{name} - {base} {size} px")
        for name in means:
            for scale, size in grid:
                rows += _boot_rows(
                    boots.seed_mean(name, scale),
                    (name,),
                    ("point", "low", "high"),
                    **common,
                    model=name,
                    method=model_info[name].method,
                    scale=scale,
                    size_px=size,
                    seed=None,
                    metric="tar_mean",
                )
                stage.advance(1, f"{name} seed mean {size} px")
        if total:
            stage.done(
                f"bootstrap: {total} intervals ({boots.computed} computed) in "
                f"{time.perf_counter() - t0:.1f} s"
            )
    return rows


def _template_margin_rows(boots: Bootstraps, model_info, grid: Grid, seeds, level_fold, context):
    """``ring_margin_template`` rows (``--protocol template``): template TAR of every ``+R``
    model minus its base's, per width and FAR, with the paired bootstrap of ``ring_margin``
    over the template pairs (:meth:`Bootstraps.template_margin`)."""
    rows = []
    common = dict(context, fold=level_fold, fars=boots.fars)
    for name in sorted(model_info):
        base = ring_base(name, model_info)
        if base is None:
            continue
        for scale, size in grid:
            margin = boots.template_margin(name, base, scale)
            rows += _margin_rows(margin, name, base, "ring_margin_template", model_info, seeds,
                                 scale=scale, size_px=size, **common)  # fmt: skip
    return rows


def _side_frames(levels: Levels, model_info, grid: Grid, seeds, context):
    """(roc, norms, scores) frames: ROC points, per-image norms (and relative to the clean
    mean) and score histograms of every model, seed and width at the primary fold level."""
    roc_rows, norm_rows, score_rows = [], [], []
    for name in sorted(model_info):
        method = model_info[name].method
        for seed in seeds:
            clean_norm_mean = float(levels(name, seed, 1.0)[4].mean())
            for scale, size in grid:
                s, _, _, same, norms = levels(name, seed, scale)
                head = (name, method, seed, scale, size)
                roc_rows += [(*head, far, tar) for far, tar in roc_points(s, same)]
                edges, gen, imp = score_histogram(s, same)
                score_rows += [
                    (*head, edges[b], edges[b + 1], gen[b], imp[b]) for b in range(edges.size - 1)
                ]
                rel = clean_norm_mean if clean_norm_mean > 0 else math.nan
                norm_rows += [(*head, i, v, v / rel) for i, v in enumerate(norms)]
    keys = ("model", "method", "seed", "scale", "size_px")
    frames = (
        pd.DataFrame(roc_rows, columns=[*keys, "far", "tar"]),
        pd.DataFrame(norm_rows, columns=[*keys, "image", "norm", "norm_rel"]),
        pd.DataFrame(score_rows, columns=[*keys, "bin_low", "bin_high", "n_genuine", "n_impostor"]),
    )
    for frame in frames:
        frame.insert(0, "pairing", context["pairing"])
        frame.insert(0, "dataset", context["dataset"])
    return frames


def assemble(
    store: CellStore,
    model_info: dict[str, ModelEntry],
    grid: Grid,
    folds: Sequence[int],
    seeds: Sequence[int],
    fars: Sequence[float],
    context: dict[str, str],
    config: SweepConfig,
    timings: dict[str, float],
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Cells -> (results table, ROC points, per-image norms, score histograms, EDC curves),
    all deterministic."""
    rows = _cell_rows(store, model_info, dict(grid), context)
    levels = Levels(store, sorted(model_info), folds, seeds)
    pooled = len(folds) > 1
    if pooled:
        rows += _pooled_rows(levels, model_info, grid, seeds, fars, context)
    table = to_frame(rows)
    level_fold = POOLED if pooled else folds[0]
    summary = robustness_rows(
        table[table["fold"] == level_fold],
        target_tar=config.critical_tar,
        target_far=config.critical_far,
    )
    t0 = time.perf_counter()
    boots = Bootstraps(store, levels, folds, seeds, fars, config)
    extra = _bootstrap_rows(boots, model_info, grid, seeds, level_fold, context)
    if config.protocol == "template":
        extra += _template_margin_rows(boots, model_info, grid, seeds, level_fold, context)
    timings["bootstrap"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    quality, edc_frame = quality_outputs(
        store, model_info, grid, folds, seeds, context,
        level_fold=level_fold, n_boot=config.n_boot, boot_seed=config.boot_seed,
    )  # fmt: skip
    timings["quality"] = time.perf_counter() - t0
    parts = [table, to_frame(summary), to_frame(extra), to_frame(quality)]
    if config.protocol != "verification":
        parts.append(
            to_frame(_protocol_extra(store, model_info, grid, folds, seeds, fars, context, config))
        )
    table = sort_table(normalise(pd.concat(parts, ignore_index=True)))
    return (table, *_side_frames(levels, model_info, grid, seeds, context), edc_frame)


def _protocol_extra(store, model_info, grid, folds, seeds, fars, context, config) -> list:
    """The identification protocol's assembled rows: pooled over folds (several folds) and the
    rank-1 Ring margins (``identification``)."""
    rows = []
    if len(folds) > 1:
        rows += pooled_protocol_rows(
            store, model_info, grid, folds, seeds, fars, context, config.protocol
        )
    if config.protocol == "identification":
        pairs = [(n, b) for n in sorted(model_info) if (b := ring_base(n, model_info)) is not None]
        level_fold = POOLED if len(folds) > 1 else folds[0]
        rows += rank1_margin_rows(
            store, pairs, model_info, grid, folds, seeds, level_fold, context, config
        )
    return rows


def _margin_summary(boot: dict) -> dict:
    """What the cache keeps of a margin bootstrap: its point, low and high per FAR."""
    return {k: [float(v) for v in boot[k]] for k in ("diff_point", "diff_low", "diff_high")}


class Bootstraps:
    """The paired bootstraps of a sweep (:func:`lowres.bootstrap.bootstrap_tar`): a Ring
    margin (a model vs its base) or a seed mean, at one scale, each cached in ``cells/`` as
    ``<prefix>__<model>__<size>px__<digest>.json``.

    The cache key holds every model's cell keys, the FARs and the bootstrap settings, so a
    rerun (or a sweep extended by another scale) reuses every result already computed."""

    def __init__(self, store: CellStore, levels: Levels, folds, seeds, fars, config):
        self.store, self.levels = store, levels
        self.folds, self.seeds, self.fars = list(folds), list(seeds), list(fars)
        self.n_boot, self.boot_seed = int(config.n_boot), int(config.boot_seed)
        self.computed = 0  # bootstraps run (not read from the cache) so far

    def margin(self, name: str, base: str, scale: float) -> dict:
        """Ring-margin bootstrap of ``name`` vs ``base`` (paired over identities and seeds)."""
        return self._cached(
            (name, base),
            scale,
            fmt="lowres-margin/1",
            prefix="margin",
            summarise=_margin_summary,
        )

    def template_margin(self, name: str, base: str, scale: float) -> dict:
        """Ring-margin bootstrap of template TAR (``--protocol template``): ``name`` vs
        ``base`` on their template pairs, paired over identities and seeds."""
        return self._cached(
            (name, base),
            scale,
            fmt="lowres-template-margin/1",
            prefix="template-margin",
            summarise=_margin_summary,
            pairs=lambda model, seed: template_level(self.store, model, seed, scale, self.folds),
        )

    def seed_mean(self, name: str, scale: float) -> dict:
        """Seed-mean TAR of one model with its identity + seed bootstrap interval."""
        return self._cached(
            (name,),
            scale,
            fmt="lowres-seedmean/1",
            prefix="seedmean",
            summarise=lambda boot: {
                k: [float(v) for v in boot[k][0]] for k in ("point", "low", "high")
            },
        )

    def _cached(
        self,
        models: tuple[str, ...],
        scale: float,
        *,
        fmt: str,
        prefix: str,
        summarise: Callable,
        pairs: Callable | None = None,
    ) -> dict:
        """The bootstrap of ``models`` at ``scale``, from the cache or computed and cached;
        ``pairs(model, seed)`` gives the (scores, id_a, id_b) bootstrapped (default: the
        verification pairs at the level of :class:`Levels`)."""
        if pairs is None:
            pairs = lambda model, seed: self.levels(model, seed, scale)[:3]  # noqa: E731
        key: dict[str, Any] = {"format": fmt}
        for role, name in zip(("model", "base"), models, strict=False):
            key[role] = [
                self.store[(name, f, s, scale)]["key"] for f in self.folds for s in self.seeds
            ]
        key |= {
            "fars": [repr(float(f)) for f in self.fars],
            "n_boot": self.n_boot,
            "boot_seed": self.boot_seed,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        size = key["model"][0]["size_px"]
        path = self.store.folder / f"{prefix}__{slug(models[0])}__{size:04d}px__{digest}.json"
        if path.is_file():
            try:
                cached = json.loads(path.read_text(encoding="utf-8"))
                if cached.get("key") == key:
                    return cached
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                pass
        self.computed += 1
        groups = [[pairs(name, seed) for name in models] for seed in self.seeds]
        boot = bootstrap_tar(groups, self.fars, n_boot=self.n_boot, seed=self.boot_seed)
        same = groups[0][0][1] == groups[0][0][2]
        result = {
            "key": key,
            **summarise(boot),
            "n_genuine": int(same.sum()),
            "n_impostor": int((~same).sum()),
        }
        atomic_write_json(path, result)
        return json.loads(path.read_text(encoding="utf-8"))
