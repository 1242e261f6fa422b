"""A sweep's output folder and its cells: the on-disk store behind resumable sweeps.

A *cell* is one (model, scale, pairing, fold, seed, degradation) combination of a sweep. Its key
(:func:`cell_key`) holds everything its numbers depend on: dataset and preset, pairing, the
degradation hash, the model's content hash, the scale and width, fold, seed, the FAR list and
the cell format. A cell is stored in ``OUT/cells/`` as ``NAME.npz`` (float32 pair scores,
identities, per-image feature norms) and then ``NAME.json`` (its table rows and clean-reference
facts), each written atomically: a cell exists iff its JSON does and names an existing NPZ, and
its file name carries a digest of the whole key, so a changed setting never reuses a stale cell.

An output folder is bound to its settings (:func:`settings_fingerprint`, kept in
``provenance.json``); :func:`prepare_out_dir` refuses a folder holding another sweep, or foreign
files, before anything is written.

The per-cell numbers are pure functions here: :func:`pair_scores` (cosine of gallery and probe
features), :func:`cell_metric_rows` (TAR@FAR, threshold transfer, AUC, EER, d', norms),
:func:`roc_points` and :func:`score_histogram` (what the figures draw).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lowres import metrics as M
from lowres.errors import ConfigError, ResultsError
from lowres.files import atomic_write_bytes, atomic_write_text, check_writable
from lowres.processes import file_lock

log = logging.getLogger("lowres")

CELL_FORMAT = "lowres-cell/2"
SWEEP_FORMAT = "lowres-sweep/1"
CELLS_DIR = "cells"
ROC_POINTS = 80
"""Number of log-spaced FAR points per ROC curve in ``roc.csv``."""
SCORE_BINS = 128
"""Equal-width cosine bins over [-1, 1] of the genuine/impostor histograms in ``scores.csv``
(width 1/64: every edge is exact in binary, so the table prints them exactly)."""


SHARD_MANIFEST = "shard.json"
"""The file that marks a sweep folder as one shard (``lowres sweep --shard i/n``)."""
SHARD_FORMAT = "lowres-shard/1"


def read_manifest(folder: Path) -> dict[str, Any]:
    """A shard folder's ``shard.json``; ResultsError naming the folder if it is not one."""
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


def settings_fingerprint(
    *,
    data: str,
    preset: str | None,
    pairing: str,
    degrade_hash: str,
    seeds,
    folds,
    protocol: str = "verification",
    template_size: int | None = None,
    distractors: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings a sweep folder is bound to; a rerun with other values is refused. The
    protocol is named only when it is not ``verification`` (verification folders keep the
    fingerprint, and so the cell names, they always had); ``template_size`` (images per
    template, ``template`` sweeps) only when given; the distractors (source, count, content
    digest: :meth:`lowres.sweep.distractors.DistractorSet.key`) only when there are some."""
    extra = {} if protocol == "verification" else {"protocol": protocol}
    if template_size is not None:
        extra["template_size"] = int(template_size)
    if distractors is not None:
        extra["distractors"] = dict(distractors)
    return extra | {
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
    "cmc.csv",
    "provenance.json",
    CELLS_DIR,
    "figures",
    "shard.json",
)


_SET_ASIDE = ".lowres-replaced"
LOCK_FILE = ".lowres.lock"
"""Lock file inside a sweep folder: one process at a time writes a folder (see
:func:`open_out_dir`); the kernel drops the lock when its holder dies."""


def prepare_out_dir(
    out: Path, fingerprint: dict[str, Any], *, force: bool, clean: bool = True
) -> None:
    """Refuse (before writing anything) a folder made with other settings unless ``force``.

    A folder holding files but no ``provenance.json`` is not a sweep folder and is refused too.
    With ``force`` and ``clean``, only lowres's own outputs are removed; other files stay. With
    ``clean=False`` nothing is removed (the check alone, made before any other work).

    Raises:
        ResultsError: the folder holds another sweep or foreign files (and not ``force``).
        ConfigError: ``out`` is a file, lies inside one, or cannot be written.
    """
    prov_path = out / "provenance.json"
    check_writable(out, "--out")
    if not out.exists():
        return
    if prov_path.is_file():
        try:
            prov = json.loads(prov_path.read_text(encoding="utf-8"))
            old = prov.get("settings") if isinstance(prov, dict) else None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            old = None
        if old == fingerprint:
            return
        if not force:
            diff = describe_difference(old, fingerprint)
            raise ResultsError(
                f"{out} holds a sweep made with other settings ({diff}); use another --out or "
                "--force to replace it"
            )
    elif any(p.name not in (LOCK_FILE, _SET_ASIDE) for p in out.iterdir()):
        if not force:
            raise ResultsError(
                f"{out} is not empty and holds no lowres sweep; use another --out or --force"
            )
    else:
        return
    if not clean:
        return
    for name in _OWN_OUTPUTS:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


@contextlib.contextmanager
def open_out_dir(out: Path, fingerprint: dict[str, Any], *, force: bool) -> Iterator[Path]:
    """The sweep folder ``out``, checked, locked and (with ``force``) cleaned; yields its cells
    folder.

    The order keeps every promise: the folder is checked before anything is written; a second
    process on the same folder waits for the first (then reuses its cells); the check is
    repeated under the lock, and only then does ``force`` remove anything. Leftover temporary
    files of a killed run are removed (no other process writes here while the lock is held). If
    the ``with`` body fails before its first cell, a folder this call created is removed
    again: a refused or interrupted sweep leaves nothing behind.
    """
    prepare_out_dir(out, fingerprint, force=force, clean=False)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    cells_dir = out / CELLS_DIR
    with file_lock(out / LOCK_FILE, f"the sweep folder {out}"):
        prepare_out_dir(out, fingerprint, force=force, clean=False)
        set_aside = _set_aside(out, fingerprint) if force else None
        provenance = out / "provenance.json"
        old_provenance = provenance.read_bytes() if provenance.is_file() else None
        cells_dir.mkdir(exist_ok=True)
        for stale in cells_dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        before = {p.name for p in cells_dir.glob("*.json")}
        try:
            yield cells_dir
        except BaseException:
            if {p.name for p in cells_dir.glob("*.json")} == before:
                # Failed before its first new cell: put the folder back as it was.
                if created:
                    shutil.rmtree(out, ignore_errors=True)
                else:
                    _restore(out, set_aside, old_provenance)
            elif set_aside is not None:
                shutil.rmtree(set_aside, ignore_errors=True)
            raise
        if set_aside is not None:
            shutil.rmtree(set_aside, ignore_errors=True)


def _set_aside(out: Path, fingerprint: dict[str, Any]) -> Path | None:
    """``--force``: move lowres's own outputs of another sweep into a hidden folder (renames, no
    copies), to be deleted once the new sweep wrote its first cell, or put back if it fails
    before that. None when there is nothing to replace."""
    prov = out / "provenance.json"
    try:
        same = json.loads(prov.read_text(encoding="utf-8")).get("settings") == fingerprint
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        same = False
    names = [n for n in _OWN_OUTPUTS if (out / n).exists()]
    if same or not names:
        return None
    aside = out / _SET_ASIDE
    if aside.exists():  # left by a sweep killed mid-replacement: its files are the old sweep's
        shutil.rmtree(aside)
    aside.mkdir()
    for name in names:
        os.replace(out / name, aside / name)
    return aside


def _restore(out: Path, set_aside: Path | None, old_provenance: bytes | None) -> None:
    """Undo a failed sweep that wrote no cell: its provenance, and any set-aside outputs."""
    if set_aside is not None:
        for name in _OWN_OUTPUTS:
            target = out / name
            if (set_aside / name).exists():
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
                os.replace(set_aside / name, target)
        shutil.rmtree(set_aside, ignore_errors=True)
    elif old_provenance is not None:
        atomic_write_bytes(out / "provenance.json", old_provenance)


_ABSENT = {"protocol": "verification"}
"""What a fingerprint key that is left out means (the distractors: none)."""


def describe_difference(old: Any, new: dict[str, Any]) -> str:
    """``"key: old -> new, ..."`` for the settings that differ (for refusal messages)."""
    if not isinstance(old, dict):
        return "unreadable provenance.json"
    keys = [k for k in new if old.get(k) != new[k]] + [k for k in old if k not in new]
    return (
        ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k, _ABSENT.get(k))!r}" for k in keys)
        or "different format"
    )


def slug(text: str) -> str:
    """A model id as a file-name prefix (``SF+R(0.01)`` -> ``SF-R-0.01``)."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "model"


def cell_key(
    *,
    fingerprint: dict[str, Any],
    data_digest: str,
    model: str,
    model_hash: str,
    scale: float,
    size_px: int,
    fold: int,
    seed: int,
    fars: Sequence[float],
) -> dict[str, Any]:
    """Everything a cell's numbers depend on.

    ``data_digest`` is the test split's :meth:`~lowres.data.FaceDataset.content_digest` (its
    pixels, labels and pairs, not its name) and ``model_hash`` names the model by content (a
    trained model by its config and its training data's digest, a file by its sha256), so new
    pixels behind the same names, or a retrained model, never reuse a stale cell; a sweep with
    distractors adds the fingerprint's distractor set (with its content digest).
    """
    return {
        "format": CELL_FORMAT,
        "data": fingerprint["data"],
        "data_digest": data_digest,
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
    } | {
        k: fingerprint[k] for k in ("protocol", "template_size", "distractors") if k in fingerprint
    }


def cell_stem(key: dict[str, Any]) -> str:
    """File stem of a cell: readable prefix + digest of the full key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return f"{slug(key['model'])}__{key['size_px']:04d}px__f{key['fold']}_s{key['seed']}__{digest}"


def _payload_digest(cell: dict[str, Any]) -> str:
    """sha256 of a cell's JSON without its own checksum and timing."""
    body = {k: v for k, v in cell.items() if k not in ("checksum", "seconds")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_cell(
    cells_dir: Path,
    key: dict[str, Any],
    arrays: dict[str, np.ndarray],
    *,
    rows: list[dict[str, Any]],
    clean_ref: dict[str, Any] | None,
    seconds: float,
) -> dict[str, Any]:
    """Store a cell: its NPZ, then its JSON naming the NPZ's sha256 and a checksum of itself.

    Both files are written atomically, the JSON last, so a cell exists only once both are whole.
    Returns the cell as :func:`read_cell` reads it back (JSON round trip), so a fresh run and a
    resumed one assemble identical numbers.
    """
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    payload = buf.getvalue()
    stem = cell_stem(key)
    atomic_write_bytes(cells_dir / f"{stem}.npz", payload)
    cell = {
        "format": CELL_FORMAT,
        "key": key,
        "npz": f"{stem}.npz",
        "npz_sha256": hashlib.sha256(payload).hexdigest(),
        "rows": rows,
        "clean_ref": clean_ref,
    }
    cell = json.loads(json.dumps(cell, sort_keys=True, default=_plain))
    cell["checksum"] = _payload_digest(cell)
    cell["seconds"] = round(float(seconds), 4)
    atomic_write_text(cells_dir / f"{stem}.json", json.dumps(cell, indent=2, sort_keys=True) + "\n")
    return cell


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_cell(cells_dir: Path, key: dict[str, Any], *, say: bool = True) -> dict[str, Any] | None:
    """The cell stored for ``key``, or None when there is none or it cannot be trusted.

    A cell is trusted only when its JSON parses, holds exactly ``key``, matches its own checksum
    (no edited rows), and names an NPZ whose sha256 is the one recorded (no truncated or
    swapped arrays). A cell that exists but fails a check is logged with the reason (unless
    ``say`` is False: a merge refuses such a shard in its own words), so the sweep's
    "recomputing" is never silent.
    """
    path = cells_dir / f"{cell_stem(key)}.json"
    if not path.is_file():
        return None
    reason = _untrusted(cells_dir, path, key)
    if isinstance(reason, str):
        if say:
            log.warning("recomputing cell %s: %s", path.stem, reason)
        return None
    return reason


def _untrusted(cells_dir: Path, path: Path, key: dict[str, Any]) -> dict[str, Any] | str:
    """The cell at ``path`` if every check passes, else the reason it fails (a string)."""
    try:
        cell = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "its JSON is unreadable"
    if not isinstance(cell, dict) or cell.get("key") != key:
        return "its JSON holds another key"
    if cell.get("format") != CELL_FORMAT or cell.get("checksum") != _payload_digest(cell):
        return "its JSON does not match its checksum (edited or damaged)"
    rows, npz = cell.get("rows"), cell.get("npz")
    if not isinstance(rows, list) or not rows or not isinstance(npz, str) or "/" in npz:
        return "its JSON has no rows"
    try:
        actual = hashlib.sha256((cells_dir / npz).read_bytes()).hexdigest()
    except OSError:
        return f"its arrays {npz} are missing"
    if actual != cell.get("npz_sha256"):
        return f"its arrays {npz} do not match the sha256 in its JSON (truncated or replaced)"
    return cell


def load_cell_arrays(cells_dir: Path, cell: dict[str, Any]) -> dict[str, np.ndarray]:
    """A cell's pair data: ``scores`` (P,), ``id_a``/``id_b`` (P,) identities of the two images
    of each pair, ``issame`` (P,), ``norms`` (N,) and ``labels`` (N,).

    All-vs-all cells store only scores and labels (pairs are ``np.triu_indices(N, 1)``);
    fixed pair lists store their image indices too; sets with gallery/probe roles store the
    roles (pairs: :func:`role_pairs`).
    """
    with np.load(cells_dir / cell["npz"], allow_pickle=False) as data:
        out = {k: data[k] for k in data.files}
    labels = out["labels"].astype(np.int64)
    idx_a, idx_b = cell_pair_indices(out)
    if out["pair_a"].size:
        issame = out["issame"].astype(bool)
    else:
        issame = labels[idx_a] == labels[idx_b]
    out.update(id_a=labels[idx_a], id_b=labels[idx_b], issame=issame)
    return out


def role_pairs(roles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(idx_a, idx_b) of a set with gallery/probe roles (``FaceDataset.roles``): every gallery
    image (``idx_a``, index order) with every probe (``idx_b``, index order), gallery-major.

    >>> [a.tolist() for a in role_pairs(np.array([0, 1, 0, 1, 1], np.uint8))]
    [[0, 0, 0, 2, 2, 2], [1, 3, 4, 1, 3, 4]]
    """
    roles = np.asarray(roles)
    gallery, probes = np.flatnonzero(roles == 0), np.flatnonzero(roles == 1)
    return np.repeat(gallery, probes.size), np.tile(probes, gallery.size)


def cell_pair_indices(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(idx_a, idx_b) int64 of a cell's pairs: its stored fixed pairs, the gallery x probe pairs
    of its ``roles`` (sets with roles), or all-vs-all ``np.triu_indices(N, 1)``."""
    if arrays["pair_a"].size:
        return arrays["pair_a"].astype(np.int64), arrays["pair_b"].astype(np.int64)
    if "roles" in arrays:
        return role_pairs(arrays["roles"])
    return np.triu_indices(arrays["labels"].size, k=1)


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


def tar_row(metric: str, far: float, r: M.TarAtFar) -> dict[str, Any]:
    """The row of one exact TAR at FAR (:func:`lowres.metrics.tar_at_far`): value, interval,
    threshold, achieved FAR, flag and pair counts; ``metric`` is ``tar`` or ``template_tar``."""
    return dict(
        metric=metric,
        far=far,
        value=r.tar,
        ci_low=r.ci_low,
        ci_high=r.ci_high,
        threshold=r.threshold,
        far_achieved=r.far_achieved,
        flagged=bool(r.flagged),
        n_genuine=r.n_genuine,
        n_impostor=r.n_impostor,
    )


def cell_metric_rows(
    scores: np.ndarray,
    issame: np.ndarray,
    norms: np.ndarray,
    *,
    fars: Sequence[float],
    clean: dict[str, Any] | None,
    pair_folds: np.ndarray | None = None,
    flags: dict[str, np.ndarray] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Metric rows of one cell (model x scale) from its pair scores and feature norms.

    Args:
        scores: (P,) cosine scores. issame: (P,) bool, True = genuine.
        norms: (N,) feature norms of the probe-side images at this scale.
        fars: target FARs.
        clean: the clean reference (``{"thresholds": {repr(far): t}, "norm_mean": m}``) of
            this model, or None when this cell *is* the clean one.
        pair_folds: (P,) fold id per pair of a fixed pair list (10-fold accuracy), or None.
        flags: per-image booleans the model reported for the probe-side images (name -> (N,)),
            each giving a row ``<name>_share`` (e.g. ``no_face_share``: images where a
            detector found no face).

    Returns:
        (rows with metric/far/value/... fields, this cell's own clean-reference dict).
    """

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
        rows.append(tar_row("tar", far, r))
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
    for name, mask in sorted((flags or {}).items()):
        rows.append(dict(metric=f"{name}_share", value=float(np.asarray(mask, bool).mean())))
    return rows, {"thresholds": thresholds, "norm_mean": norm_mean}


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


CellIndex = tuple[str, int, int, float]
"""Where a cell sits in a sweep: (model id, fold, seed, scale)."""


class CellStore:
    """The cells of one sweep folder: ``cells/`` on disk, and an index, by :data:`CellIndex`, of
    the cells this run has reused or written (their JSON: key, rows, clean reference), with
    their arrays loaded once on first use."""

    def __init__(self, folder: Path, cells: dict[CellIndex, dict[str, Any]] | None = None):
        self.folder = Path(folder)
        self.cells: dict[CellIndex, dict[str, Any]] = dict(cells or {})
        self._arrays: dict[CellIndex, dict[str, np.ndarray]] = {}

    def __getitem__(self, index: CellIndex) -> dict[str, Any]:
        return self.cells[index]

    def __len__(self) -> int:
        return len(self.cells)

    def reuse(self, index: CellIndex, key: dict[str, Any]) -> bool:
        """Index the cell with ``key`` if it is on disk and intact; False when it must be made."""
        found = read_cell(self.folder, key)
        if found is not None:
            self.cells[index] = found
        return found is not None

    def write(self, index: CellIndex, key: dict[str, Any], arrays: dict, **meta: Any) -> None:
        """:func:`write_cell` and index it (``meta``: rows, clean_ref, seconds)."""
        self.cells[index] = write_cell(self.folder, key, arrays, **meta)

    def clean_reference(self, index: CellIndex, key: dict[str, Any]) -> dict[str, Any]:
        """The clean-reference facts of the scale-1 cell at ``index`` (``key``: its key)."""
        cell = self.cells.get(index)
        if cell is None:
            cell = read_cell(self.folder, key)
        if cell is None:
            raise ResultsError(f"clean cell of {index[0]} is missing; rerun the sweep")
        return cell["clean_ref"]

    def arrays(self, index: CellIndex) -> dict[str, np.ndarray]:
        """The cell's arrays (scores, labels, norms, pairs), read from disk once."""
        if index not in self._arrays:
            self._arrays[index] = load_cell_arrays(self.folder, self.cells[index])
        return self._arrays[index]
