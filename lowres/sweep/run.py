"""Run (or resume, or extend) a sweep: check every setting before the output folder is touched,
train what is missing, compute each missing cell, then assemble the tables and figures, or,
for a shard, write its manifest."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowres import shards
from lowres.cells import CellStore, cell_key, open_out_dir, settings_fingerprint
from lowres.data.registry import check_training_part
from lowres.degrade import DEFAULT, parse_degrade
from lowres.errors import ConfigError
from lowres.files import atomic_write_json
from lowres.provenance import RESULT_LIBRARIES, git_revision, versions
from lowres.report import report_after_run
from lowres.results import to_frame
from lowres.sweep.assemble import assemble_outputs, table_provenance
from lowres.sweep.compute import Counts, Unit, check_pairs, compute_cells, sweep_test_split
from lowres.sweep.config import (
    PAIRINGS,
    SweepConfig,
    SweepResult,
    device_name,
    parse_int_list,
    probe_grid,
    template_size_of,
    validate_fars,
)
from lowres.sweep.distractors import DistractorSet, resolve_distractors
from lowres.sweep.models import (
    ModelEntry,
    Prepared,
    check_training_data,
    check_training_settings,
    prepare_models,
    pretrain_planned,
    resolve_models,
    training_workers,
)
from lowres.sweep.protocols import check_protocol, check_protocol_name, check_template_size
from lowres.training_logs import TRAINING_FILE, training_frame, write_training

log = logging.getLogger("lowres.sweep")


@dataclass
class Plan:
    """A sweep checked and ready to run: what :func:`plan_sweep` found before any file exists."""

    config: SweepConfig
    entries: list[ModelEntry]
    folds: tuple[int, ...]
    seeds: tuple[int, ...]
    fars: tuple[float, ...]
    shard: tuple[int, int] | None
    owners: dict[tuple[int, int], set[str]]
    chain: Any
    tests: dict[int, Any]
    grid: list[tuple[float, int]]
    fingerprint: dict[str, Any]
    distractors: DistractorSet | None = None

    def dataset_label(self) -> str:
        """The ``dataset`` column of the sweep's rows: the test set's name, with its
        distractors when it has some (:meth:`DistractorSet.label`)."""
        name = self.tests[self.folds[0]].name
        return name if self.distractors is None else self.distractors.label(name)


@dataclass
class Progress:
    """What the (fold, seed) units of one run have produced so far."""

    store: CellStore
    model_info: dict[str, ModelEntry] = field(default_factory=dict)
    logs: list[tuple[str, str, int, int, Path]] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    reused: int = 0


def _check_settings(config: SweepConfig) -> tuple[float, ...]:
    """The settings that need no data: pairing, batch, device, baseline path, critical target
    and FARs (returned validated)."""
    if config.pairing not in PAIRINGS:
        raise ConfigError(f"pairing {config.pairing!r} is not one of {', '.join(PAIRINGS)}")
    check_protocol_name(config.protocol)
    check_template_size(config.protocol, config.template_size)
    if int(config.batch_size) < 1:
        raise ConfigError(f"batch size must be >= 1, got {config.batch_size}")
    device_name(config.device)  # an unknown or absent device fails before the folder exists
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
    return fars


def plan_sweep(config: SweepConfig) -> Plan:
    """Check everything and load every test split, before touching the output folder: bad
    settings and bad data fail here."""
    fars = _check_settings(config)
    folds = parse_int_list(",".join(map(str, config.folds)), "folds")
    seeds = parse_int_list(",".join(map(str, config.seeds)), "seeds")
    entries = resolve_models(config.models, config.variants)
    check_training_settings(entries, config, folds[0], seeds[0])
    shard = shards.validate_shard(config.shard)
    if shard is not None and config.save_baseline is not None:
        raise ConfigError(
            "a shard has no table to save as a baseline; give --save-baseline to lowres merge"
        )
    owners = shards.shard_plan([e.name for e in entries], folds, seeds, shard)
    chain = DEFAULT if config.degrade is None else parse_degrade(config.degrade)
    tests = {f: sweep_test_split(config, f) for f in folds}
    for fold, test in tests.items():
        check_pairs(test, fold)
        check_protocol(test, fold, config.protocol, template_size_of(config))
    check_training_data(config)
    if config.train_data is None and any(e.kind == "method" for e in entries):
        check_training_part(config.data)
    distractors = resolve_distractors(config, tests[folds[0]])
    fingerprint = settings_fingerprint(
        data=config.data,
        preset=config.preset,
        pairing=config.pairing,
        degrade_hash=chain.hash(),
        seeds=seeds,
        folds=folds,
        protocol=config.protocol,
        template_size=template_size_of(config),
        distractors=None if distractors is None else distractors.key(),
    )
    grid = probe_grid(config, tests[folds[0]].image_size[1])
    return Plan(
        config,
        entries,
        folds,
        seeds,
        fars,
        shard,
        owners,
        chain,
        tests,
        grid,
        fingerprint,
        distractors,
    )


def _run_unit(plan: Plan, fold: int, seed: int, progress: Progress, timings, on_cell) -> None:
    """Prepare the models of one (fold, seed) that this run owns, reuse every cell on disk and
    compute the missing ones."""
    mine = plan.owners[(fold, seed)]
    if not mine:
        return
    t0 = time.perf_counter()
    owned = [e for e in plan.entries if e.name in mine]
    prepared = [p for p in prepare_models(owned, plan.config, fold, seed) if p.entry.name in mine]
    timings["train"] += time.perf_counter() - t0
    test = plan.tests[fold]
    for p in prepared:
        progress.model_info[p.entry.name] = p.entry
        if p.folder is not None:
            progress.logs.append((p.entry.name, p.entry.method, fold, seed, p.folder))
    keys = {
        (p.entry.name, scale): cell_key(
            fingerprint=plan.fingerprint,
            data_digest=test.content_digest(),
            model=p.entry.name,
            model_hash=p.model_hash,
            scale=scale,
            size_px=size,
            fold=fold,
            seed=seed,
            fars=plan.fars,
        )
        for p in prepared
        for scale, size in plan.grid
    }
    unit = Unit(plan.config, fold, seed, test, prepared, plan.grid, plan.chain, plan.fars, keys)
    if plan.distractors is not None:
        unit.distractors = plan.distractors.dataset
    missing: dict[float, list[Prepared]] = {}
    for p in prepared:
        for scale, _ in plan.grid:
            if progress.store.reuse(unit.index(p.entry.name, scale), keys[(p.entry.name, scale)]):
                progress.reused += 1
            else:
                missing.setdefault(scale, []).append(p)
    if missing:
        counts = compute_cells(unit, progress.store, missing, timings, on_cell)
        progress.counts.cells += counts.cells
        progress.counts.images += counts.images
        progress.counts.model_images += counts.model_images


def _provenance(plan: Plan) -> dict[str, Any]:
    """The provenance a sweep writes before its first cell (``status: running``)."""
    test = plan.tests[plan.folds[0]]
    dataset: dict[str, Any] = {"name": test.name, "image_size": list(test.image_size)}
    if plan.distractors is not None:
        dataset["distractors"] = plan.distractors.key() | {"label": plan.dataset_label()}
    if getattr(test, "roles", None) is not None:
        dataset["roles"] = "fixed by the set: gallery and probe images as its folders say"
    return {
        "settings": plan.fingerprint,
        "status": "running",
        "config": plan.config.to_json(),
        "dataset": dataset,
        "degradation": {"chain": str(plan.chain), "hash": plan.chain.hash()},
        "versions": versions(RESULT_LIBRARIES),
        "git_revision": git_revision(),
        "seed": list(plan.seeds),
    }


def _inference_provenance(counts: Counts, timings, device: str) -> dict[str, Any]:
    embed = timings["embed"]
    return {
        "images_degraded_and_embedded": counts.images,
        "model_images": counts.model_images,
        "images_per_s": round(counts.images / embed, 1) if embed > 0 else None,
        "model_images_per_s": round(counts.model_images / embed, 1) if embed > 0 else None,
        "device": device_name(device),
    }


def run_sweep(
    config: SweepConfig,
    *,
    on_cell: Callable[[dict[str, Any]], None] | None = None,
    report: bool = True,
) -> SweepResult:
    """Run (or resume, or extend) a sweep and assemble its outputs.

    Args:
        config: the sweep settings.
        on_cell: called with each newly written cell's key (progress hooks, tests).
        report: write ``report.html`` at the end when the figures are drawn (``config.plot``);
            a study that reports the folder itself passes False. A report that fails is one
            warning, never a failed sweep (:func:`lowres.report.report_after_run`).

    Returns:
        SweepResult with the assembled table and the numbers of computed and reused cells.

    Raises:
        ConfigError / CheckpointError / DataError: bad settings, found before anything is
            written.
        ResultsError: ``out`` holds a sweep made with other settings (and not ``force``).
    """
    t_start = time.perf_counter()
    timings = {"train": 0.0, "embed": 0.0, "score": 0.0}
    plan = plan_sweep(config)
    out = Path(config.out)
    with open_out_dir(out, plan.fingerprint, force=config.force) as cells_dir:
        provenance = _provenance(plan)
        atomic_write_json(out / "provenance.json", provenance)
        t0 = time.perf_counter()
        pretrain_planned(plan.entries, config, plan.owners, training_workers(config))
        timings["train"] += time.perf_counter() - t0
        progress = Progress(CellStore(cells_dir))
        for fold in plan.folds:
            for seed in plan.seeds:
                _run_unit(plan, fold, seed, progress, timings, on_cell)
        computed, reused = progress.counts.cells, progress.reused
        log.info("computed %d cells, reused %d", computed, reused)
        write_training(training_frame(progress.logs), out / TRAINING_FILE)
        provenance.update(
            cells={"computed": computed, "reused": reused},
            inference=_inference_provenance(progress.counts, timings, config.device),
            **table_provenance(progress.model_info, plan.grid, plan.fars, config),
        )
        context = {
            "dataset": plan.dataset_label(),
            "pairing": config.pairing,
            "degrade": str(plan.chain),
            "degrade_hash": plan.chain.hash(),
        }
        if plan.shard is not None:
            timings["total"] = time.perf_counter() - t_start
            shards.write_shard_manifest(
                out,
                provenance,
                plan.shard,
                model_ids=[e.name for e in plan.entries],
                entries=[e.to_json() for _, e in sorted(progress.model_info.items())],
                cells=progress.store.cells,
                folds=plan.folds,
                seeds=plan.seeds,
                context=context,
                timings=timings,
            )
            return SweepResult(out, to_frame([]), computed, reused, timings)
        args = (progress.model_info, plan.grid, plan.folds, plan.seeds, plan.fars, context)
        table, figures = assemble_outputs(out, progress.store, *args, config, timings)
        timings["total"] = time.perf_counter() - t_start
        provenance.update(status="complete", timings_s={k: round(v, 3) for k, v in timings.items()})
        atomic_write_json(out / "provenance.json", provenance)
    if config.plot and report:
        t0 = time.perf_counter()
        report_after_run(out)
        timings["report"] = time.perf_counter() - t0
    return SweepResult(out, table, computed, reused, timings, figures)
