"""The quality rows of a sweep: each model's feature norm as a quality score of its probes
(:mod:`lowres.quality`), from the cells, pooled over folds and seeds.

Norms are divided by the mean clean norm of their own (model, fold, seed) first, so seeds with
other norm scales pool into one ordering. Per model and probe width the probes of that width
are pooled with the clean probes:

* ``edc_pauc20`` [-]: the mean FNMR over 0-20% discard of the lowest-norm probes, with the
  threshold fixed on clean pairs at FAR :data:`QUALITY_FAR`, and a bootstrap interval over
  test identities; ``edc_pauc20_oracle``: the same discarding by true width (degraded first);
* ``norm_auc``: P(clean probe's norm > this width's probe's norm);
* per model ``norm_width_spearman``: Spearman's rho of relative norm and probe width over every
  probe of every width.

``quality.csv`` holds the EDC curves (model, width, ``quality`` = norm or oracle, discard, FNMR)
behind the ``quality_edc`` figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from lowres import metrics as M
from lowres.cells import CellStore, cell_pair_indices
from lowres.quality import (
    DISCARD_FRACTIONS,
    ProbeErrors,
    edc,
    edc_pauc_bootstrap,
    norm_auc,
    probe_errors,
    spearman,
)
from lowres.results import make_row

QUALITY_FAR = 1e-2
"""The clean threshold of the EDC is set at this FAR."""

EDC_COLUMNS = ("model", "method", "scale", "size_px", "quality", "discard", "fnmr")


def _unit(store: CellStore, name: str, fold: int, seed: int, scale: float, threshold: float):
    """(relative norms, ProbeErrors) of one cell; identities are offset by the caller."""
    arrays = store.arrays((name, fold, seed, scale))
    labels = arrays["labels"].astype(np.int64)
    probe = cell_pair_indices(arrays)[1]
    errors = probe_errors(arrays["scores"], arrays["issame"], probe, labels, threshold)
    return arrays["norms"].astype(np.float64), errors


class _Pool:
    """One model's probes at every width over the folds and seeds: relative norms, errors
    (identities offset per fold, shared by the seeds) and each probe's width."""

    def __init__(self, store: CellStore, name: str, grid, folds, seeds) -> None:
        self.by_scale: dict[float, list[tuple[np.ndarray, ProbeErrors]]] = {s: [] for s, _ in grid}
        offset = 0
        for fold in folds:
            width = 0
            for seed in seeds:
                clean = store.arrays((name, fold, seed, 1.0))
                issame = clean["issame"]
                threshold = M.tar_at_far(clean["scores"], issame, QUALITY_FAR).threshold
                clean_mean = float(clean["norms"].astype(np.float64).mean()) or 1.0
                for scale, _ in grid:
                    norms, err = _unit(store, name, fold, seed, scale, threshold)
                    err = ProbeErrors(err.genuine, err.rejected, err.identity + offset)
                    self.by_scale[scale].append((norms / clean_mean, err))
                    width = max(width, int(err.identity.max()) + 1 - offset)
            offset += width

    def joined(self, scale: float) -> tuple[np.ndarray, ProbeErrors]:
        parts = self.by_scale[scale]
        return np.concatenate([q for q, _ in parts]), _concat([e for _, e in parts])


def _concat(errors: Sequence[ProbeErrors]) -> ProbeErrors:
    return ProbeErrors(
        np.concatenate([e.genuine for e in errors]),
        np.concatenate([e.rejected for e in errors]),
        np.concatenate([e.identity for e in errors]),
    )


def quality_outputs(
    store: CellStore,
    model_info: dict[str, Any],
    grid: Sequence[tuple[float, int]],
    folds: Sequence[int],
    seeds: Sequence[int],
    context: dict[str, str],
    *,
    level_fold: int,
    n_boot: int,
    boot_seed: int,
) -> tuple[list[dict], pd.DataFrame]:
    """(result rows, EDC curve frame) of every model of the sweep; empty without a clean width
    and at least one degraded one."""
    scales = [s for s, _ in grid]
    if 1.0 not in scales or len(scales) < 2:
        return [], pd.DataFrame(columns=["dataset", "pairing", *EDC_COLUMNS])
    rows: list[dict] = []
    curves: list[tuple] = []
    seed_col = seeds[0] if len(seeds) == 1 else None
    for name in sorted(model_info):
        method = model_info[name].method
        pool = _Pool(store, name, grid, folds, seeds)
        common = dict(context, model=name, method=method, fold=level_fold, seed=seed_col)
        q_clean, e_clean = pool.joined(1.0)
        all_q, all_w = [q_clean], [np.full(q_clean.size, dict(grid)[1.0], float)]
        for scale, size in grid:
            if scale == 1.0:
                continue
            q_deg, e_deg = pool.joined(scale)
            all_q.append(q_deg)
            all_w.append(np.full(q_deg.size, size, float))
            errors = _concat([e_clean, e_deg])
            n_gen = int(errors.genuine.sum())
            qualities = {
                "norm": np.concatenate([q_clean, q_deg]),
                "oracle": np.r_[np.ones(q_clean.size), np.zeros(q_deg.size)],
            }
            for kind, quality in qualities.items():
                point, low, high = edc_pauc_bootstrap(
                    quality, errors, n_boot=n_boot, seed=boot_seed
                )
                metric = "edc_pauc20" if kind == "norm" else "edc_pauc20_oracle"
                rows.append(
                    make_row(
                        **common,
                        scale=scale,
                        size_px=size,
                        metric=metric,
                        far=QUALITY_FAR,
                        value=point,
                        ci_low=low,
                        ci_high=high,
                        n_genuine=n_gen,
                    )
                )
                curve = edc(quality, errors)
                curves += [
                    (name, method, scale, size, kind, float(f), float(v))
                    for f, v in zip(DISCARD_FRACTIONS, curve, strict=True)
                ]
            rows.append(
                make_row(
                    **common,
                    scale=scale,
                    size_px=size,
                    metric="norm_auc",
                    value=norm_auc(q_clean, q_deg),
                )
            )
        rows.append(
            make_row(
                **common,
                metric="norm_width_spearman",
                value=spearman(np.concatenate(all_q), np.concatenate(all_w)),
            )
        )
    frame = pd.DataFrame(curves, columns=list(EDC_COLUMNS))
    frame.insert(0, "pairing", context["pairing"])
    frame.insert(0, "dataset", context["dataset"])
    return rows, frame
