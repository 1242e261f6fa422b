"""Figures: a sweep's (:mod:`~lowres.plots.sweep`) and a study's (:mod:`~lowres.plots.study`),
with their shared style (:mod:`~lowres.plots.style`). A sweep's figures are drawn only from its
tidy tables (``results.csv``, ``roc.csv``, ``norms.csv``, ``scores.csv``), each written
atomically as PNG and PDF into ``RUN/figures/``.

1. ``tar_vs_resolution``: verification rate (TAR) vs probe face width (pixels, log2 axis), one
   panel per FAR, one line per model with its 95% Clopper-Pearson band. Each loss family has one
   hue: the base loss is dashed in a light shade, its ``+R`` variants solid in darker shades,
   so the Ring-loss margin is the gap between a solid line and the dashed one of the same hue.
   The raw-pixel reference is grey and dotted.
2. ``roc``: ROC curves (TAR vs FAR, log FAR axis), one panel per probe face width.
3. ``norms``: feature-norm distributions per face width per model, each model's norms divided
   by its own mean norm on clean images (1 = clean level), so models with different norm scales
   share one axis. The paper's premise: norms fall with resolution, and stay near R with +R.
4. ``genuine_cosine``: mean cosine of genuine pairs vs face width.
5. ``ring_margin``: TAR(X+R) - TAR(X) vs face width with the paired bootstrap 95% interval, one
   panel per FAR, zero line drawn.
6. ``scores`` (from ``scores.csv``): genuine and impostor cosine distributions, one row per model
   and one column per face width, with the threshold fixed on clean pairs at FAR 1e-2 (or the
   sweep's FAR nearest it), d' and the share of genuine pairs that threshold rejects at each
   width: how the genuine scores slide into the impostors as faces shrink.
7. ``training`` (from ``training.csv``, the models' own per-epoch logs): held-out TAR, training
   accuracy and loss against the epoch, one line per trained model.
8. ``quality_edc`` (from ``quality.csv``): the feature norm as a quality score, error versus
   discard.

``lowres sweep --protocol`` adds (:mod:`~lowres.plots.protocols`, only where the rows exist):
``rank1_vs_resolution`` (rank-1/5/10 vs face width with Clopper-Pearson bands) and ``cmc``
(from ``cmc.csv``: one panel per width, one curve per model) for ``identification``;
``ring_margin_rank1`` (rank-1 of X+R minus X with its paired bootstrap interval, as
``ring_margin``) for ``identification``; ``tpir_vs_resolution`` (TPIR vs face width, one panel
per FPIR target) for ``open-set``; ``template_vs_resolution`` (template 1:1 TAR vs face width,
one panel per FAR) and ``ring_margin_template`` for ``template``.

How to read each one, as ``lowres report`` captions it: :data:`lowres.report.FIGURE_CAPTIONS`.

Matplotlib's object API is used (no pyplot, no global backend or style change), so plotting
works headless and inside other programs. Several seeds are averaged
(:func:`lowres.results.primary_rows`).
"""

from lowres.plots.protocols import (
    PROTOCOL_FIGURE_STEMS,
    figure_cmc,
    figure_rank_vs_resolution,
    figure_template_vs_resolution,
    figure_tpir_vs_resolution,
)
from lowres.plots.study import (
    BUDGET_LABEL,
    budget_table,
    figure_budget,
    figure_features2d,
    figure_norm_angle,
    figure_runs,
    plateau_table,
)
from lowres.plots.style import FIGURES_DIR, X_LABEL, model_styles
from lowres.plots.sweep import (
    FIGURE_STEMS,
    figure_genuine_cosine,
    figure_norms,
    figure_ring_margin,
    figure_roc,
    figure_scores,
    figure_tar_vs_resolution,
    figure_training,
    figures_current,
    plot_run,
    plot_tables,
    tables_digest,
)

__all__ = [
    "BUDGET_LABEL",
    "FIGURES_DIR",
    "FIGURE_STEMS",
    "PROTOCOL_FIGURE_STEMS",
    "X_LABEL",
    "budget_table",
    "figure_budget",
    "figure_cmc",
    "figure_features2d",
    "figure_genuine_cosine",
    "figure_norm_angle",
    "figure_norms",
    "figure_rank_vs_resolution",
    "figure_ring_margin",
    "figure_roc",
    "figure_runs",
    "figure_scores",
    "figure_tar_vs_resolution",
    "figure_template_vs_resolution",
    "figure_tpir_vs_resolution",
    "figure_training",
    "figures_current",
    "model_styles",
    "plateau_table",
    "plot_run",
    "plot_tables",
    "tables_digest",
]
