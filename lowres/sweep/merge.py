"""Join the folders of ``lowres sweep --shard i/n`` runs into one sweep folder
(:mod:`lowres.shards` checks them; the assembly is the unsharded sweep's own)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lowres import shards
from lowres.cells import CellStore, open_out_dir
from lowres.files import atomic_write_json
from lowres.provenance import RESULT_LIBRARIES, git_revision, versions
from lowres.report import report_after_run
from lowres.sweep.assemble import assemble_outputs, table_provenance
from lowres.sweep.config import SweepConfig, SweepResult
from lowres.sweep.models import ModelEntry
from lowres.training_logs import TRAINING_FILE, merge_training, read_training, write_training


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
    unsharded sweep's. Provenance records each shard. With ``plot``, the figures and then
    ``report.html`` (:mod:`lowres.report`) are written too.

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
            "versions": versions(RESULT_LIBRARIES),
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
        store = CellStore(cells_dir, cells)
        table, figures = assemble_outputs(
            out, store, model_info, grid, folds, seeds, fars, head["context"], config, timings
        )
        timings["total"] = time.perf_counter() - t_start
        provenance.update(
            status="complete",
            timings_s={k: round(v, 3) for k, v in timings.items()},
            cells={"merged": len(cells), "computed": 0, "reused": len(cells)},
            **table_provenance(model_info, grid, fars, config),
        )
        atomic_write_json(out / "provenance.json", provenance)
    if plot:
        t0 = time.perf_counter()
        report_after_run(out)
        timings["report"] = time.perf_counter() - t0
    return SweepResult(
        out=out, table=table, computed=0, reused=len(cells), timings=timings, figures=figures
    )
