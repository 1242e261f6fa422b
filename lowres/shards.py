"""Shards: one sweep split across processes or machines, then checked and joined.

``lowres sweep --shard i/n`` (or ``--shard auto`` inside a SLURM job array or under torchrun,
:func:`shard_from_environment`) computes only shard i's cells (:func:`shard_plan`: whole models
per fold and seed, round robin, so each shard trains only its own models) into its own
``--out`` folder and writes a manifest (:func:`write_shard_manifest`) instead of the table.
``lowres merge OUT SHARD_DIR...`` (:func:`lowres.sweep.merge_shards`) reads the manifests,
checks with :func:`collect_shards` that the folders share their settings and together hold every
cell exactly once, copies the cells (:func:`copy_cells`) and assembles them exactly as an
unsharded sweep does.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowres.cells import (
    CELLS_DIR,
    SHARD_FORMAT,
    SHARD_MANIFEST,
    cell_stem,
    describe_difference,
    read_cell,
    read_manifest,
)
from lowres.errors import ConfigError, ResultsError
from lowres.files import atomic_write_bytes, atomic_write_json
from lowres.results import PIXELS

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

Coord = tuple[str, int, int, float]
"""A cell's place in the sweep: (model id, fold, seed, scale)."""


def parse_shard(text: str, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``"2/4"`` -> ``(2, 4)``; ``"auto"`` -> the shard this job is in a SLURM array or under
    torchrun (:func:`shard_from_environment`). ConfigError unless ``1 <= i <= n``.

    >>> parse_shard("2/4"), parse_shard("auto", {"RANK": "0", "WORLD_SIZE": "2"})
    ((2, 4), (1, 2))
    """
    if str(text).strip().lower() == "auto":
        return shard_from_environment(os.environ if environ is None else environ)
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if match is None:
        raise ConfigError(f"shard {text!r} is not i/n; use e.g. 1/2 (shard i of n, 1 <= i <= n)")
    return validate_shard((int(match.group(1)), int(match.group(2))))  # type: ignore[return-value]


def shard_from_environment(environ: Mapping[str, str]) -> tuple[int, int]:
    """Shard ``(i, n)`` of a SLURM job array task (``SLURM_ARRAY_TASK_ID`` counted from
    ``SLURM_ARRAY_TASK_MIN`` in steps of ``SLURM_ARRAY_TASK_STEP``, of
    ``SLURM_ARRAY_TASK_COUNT`` tasks) or of a torchrun / torch.distributed process (``RANK`` of
    ``WORLD_SIZE``), in that order. ConfigError when neither is set.

    >>> shard_from_environment({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "4",
    ...                         "SLURM_ARRAY_TASK_COUNT": "4"})
    (4, 4)
    """
    try:
        if "SLURM_ARRAY_TASK_ID" in environ:
            task = int(environ["SLURM_ARRAY_TASK_ID"])
            first = int(environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            step = int(environ.get("SLURM_ARRAY_TASK_STEP", "1") or 1)
            count = int(environ["SLURM_ARRAY_TASK_COUNT"])
            if (task - first) % step:
                raise ConfigError(
                    f"SLURM_ARRAY_TASK_ID {task} is not on the array's grid (min {first}, step "
                    f"{step}); give --shard I/N"
                )
            return _checked_auto((task - first) // step + 1, count, "SLURM array task")
        if "RANK" in environ and "WORLD_SIZE" in environ:
            rank, size = int(environ["RANK"]), int(environ["WORLD_SIZE"])
            return _checked_auto(rank + 1, size, "torchrun RANK")
    except KeyError as missing:
        raise ConfigError(
            f"--shard auto: {missing.args[0]} is not set beside SLURM_ARRAY_TASK_ID; "
            "give --shard I/N"
        ) from None
    except ValueError:
        raise ConfigError(
            "--shard auto: the SLURM_ARRAY_TASK_* or RANK/WORLD_SIZE variables are not "
            "integers; give --shard I/N"
        ) from None
    raise ConfigError(
        "--shard auto found neither a SLURM array task (SLURM_ARRAY_TASK_ID, "
        "SLURM_ARRAY_TASK_COUNT) nor torchrun's RANK and WORLD_SIZE; give --shard I/N"
    )


def _checked_auto(i: int, n: int, source: str) -> tuple[int, int]:
    if not (n >= 1 and 1 <= i <= n):
        raise ConfigError(f"--shard auto: {source} gives shard {i}/{n}, outside 1..n")
    return i, n


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


def write_shard_manifest(
    out: Path,
    provenance: dict[str, Any],
    shard: tuple[int, int],
    *,
    model_ids: Sequence[str],
    entries: Sequence[dict[str, Any]],
    cells: dict[Coord, dict[str, Any]],
    folds: Sequence[int],
    seeds: Sequence[int],
    context: dict[str, str],
    timings: dict[str, float],
) -> None:
    """``provenance.json`` (status "shard") and ``shard.json``: what :func:`collect_shards`
    needs to check a shard against the others and what the merge needs to assemble the sweep.

    Args:
        entries: the JSON form of every model this shard computed (``ModelEntry.to_json``).
    """
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
        entries=list(entries),
        shard_cells=listed,
    )
    atomic_write_json(out / "provenance.json", provenance)
    atomic_write_json(out / SHARD_MANIFEST, {"format": SHARD_FORMAT, **provenance})


@dataclass
class Collected:
    """Shard folders checked to form one whole sweep (what :func:`collect_shards` returns).

    Attributes:
        dirs: the shard folders, by shard index.
        manifests: their ``shard.json`` contents, same order.
        owner: every cell of the sweep -> (the folder holding it, its file stem).
        keys: every cell -> its full cell key, as read from the folder.
    """

    dirs: list[Path]
    manifests: list[dict[str, Any]]
    owner: dict[Coord, tuple[Path, str]]
    keys: dict[Coord, dict[str, Any]]

    @property
    def head(self) -> dict[str, Any]:
        """The first shard's manifest (every shard agrees on what the merge reads from it)."""
        return self.manifests[0]


def _cell_label(model: str, size_px: int, fold: int, seed: int) -> str:
    return f"{model} {size_px}px fold {fold} seed {seed}"


def _some(labels: Sequence[str], limit: int = 4) -> str:
    more = len(labels) - limit
    return ", ".join(labels[:limit]) + (f" and {more} more" if more > 0 else "")


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


def collect_shards(out: Path, shard_dirs: Sequence[Path]) -> Collected:
    """Check that ``shard_dirs`` are the shards of one sweep and hold every cell exactly once.

    Reads only; writes nothing.

    Raises:
        ResultsError: no folders, ``out`` among them, a folder without a shard manifest,
            shards that disagree on their settings, a missing or duplicate cell (naming the
            missing shard), a cell outside the sweep, or a cell file missing or unreadable.
    """
    dirs = [Path(d) for d in shard_dirs]
    if not dirs:
        raise ResultsError("no shard folders given; use lowres merge OUT SHARD_DIR...")
    if Path(out).resolve() in {d.resolve() for d in dirs}:
        raise ResultsError(f"{out} is one of the shard folders; merge into a new folder")
    manifests = [read_manifest(d) for d in dirs]
    order = sorted(range(len(dirs)), key=lambda j: manifests[j]["shard"]["index"])
    dirs = [dirs[j] for j in order]
    manifests = [manifests[j] for j in order]
    first = _comparable(manifests[0])
    for folder, manifest in zip(dirs[1:], manifests[1:], strict=True):
        other = _comparable(manifest)
        if other != first:
            diff = describe_difference(first, other)
            raise ResultsError(
                f"{folder} was swept with other settings than {dirs[0]} ({diff}); merge only "
                "shards of one sweep run with the same arguments"
            )

    head = manifests[0]
    size_of = {float(s["scale"]): int(s["size_px"]) for s in head["grid"]}
    folds = [int(f) for f in head["folds"]]
    seeds = [int(s) for s in head["seeds"]]
    count = int(head["shard"]["count"])
    expected = {
        (name, fold, seed, scale)
        for (fold, seed), names in shard_plan(head["model_ids"], folds, seeds, None).items()
        for name in names
        for scale in size_of
    }

    def label(coord: Coord) -> str:
        return _cell_label(coord[0], size_of[coord[3]], coord[1], coord[2])

    owner: dict[Coord, tuple[Path, str]] = {}
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

    keys: dict[Coord, dict[str, Any]] = {}
    fingerprint = head["settings"]
    index_of = {d: m["shard"]["index"] for d, m in zip(dirs, manifests, strict=True)}
    for coord, (folder, stem) in sorted(owner.items()):
        src = folder / CELLS_DIR
        try:
            key = json.loads((src / f"{stem}.json").read_text(encoding="utf-8"))["key"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            key = None
        if (
            not isinstance(key, dict)
            or read_cell(src, key, say=False) is None
            or any(
                key.get(k) != fingerprint[k] for k in ("data", "preset", "pairing", "degrade_hash")
            )
            or (key.get("model"), key.get("fold"), key.get("seed"), key.get("scale"))
            != (coord[0], coord[1], coord[2], repr(coord[3]))
        ):
            raise ResultsError(
                f"{folder} lacks a readable cell {label(coord)}; rerun lowres sweep with "
                f"--shard {index_of[folder]}/{count} --out {folder} to recompute it"
            )
        keys[coord] = key
    return Collected(dirs=dirs, manifests=manifests, owner=owner, keys=keys)


def copy_cells(collected: Collected, cells_dir: Path) -> dict[Coord, dict[str, Any]]:
    """Copy every collected cell into ``cells_dir`` (each NPZ before its JSON, atomically, so
    an interrupted merge leaves only whole cells) and return them as read back from there."""
    cells: dict[Coord, dict[str, Any]] = {}
    for coord, (folder, stem) in sorted(collected.owner.items()):
        src = folder / CELLS_DIR
        cell = read_cell(src, collected.keys[coord])
        atomic_write_bytes(cells_dir / cell["npz"], (src / cell["npz"]).read_bytes())
        atomic_write_bytes(cells_dir / f"{stem}.json", (src / f"{stem}.json").read_bytes())
        cells[coord] = read_cell(cells_dir, collected.keys[coord])
    return cells


def shard_records(collected: Collected) -> list[dict[str, Any]]:
    """Provenance of each merged shard: where and how it ran."""
    count = int(collected.head["shard"]["count"])
    return [
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
        for folder, m in zip(collected.dirs, collected.manifests, strict=True)
    ]
