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

**Modules**, in the order a sweep runs them:

- :mod:`~lowres.sweep.config`: the settings, list parsing and validation, the probe grid;
- :mod:`~lowres.sweep.models`: model ids resolved, trained on demand or loaded, the pixels;
- :mod:`~lowres.sweep.compute`: the test split's pairs; embedding and scoring missing cells;
- :mod:`~lowres.sweep.protocols`: ``--protocol identification|open-set|template``: gallery and
  probes, the search arrays and rows of a cell, rank-1 margins and ``cmc.csv``; templates, their
  pooled pair scores and ``template_tar`` rows;
- :mod:`~lowres.sweep.assemble`: cells -> results.csv and the side tables, the bootstraps;
- :mod:`~lowres.sweep.run`: :func:`run_sweep`, which wires the stages above;
- :mod:`~lowres.sweep.merge`: :func:`merge_shards`; :mod:`~lowres.sweep.summary`: the terminal.

The cell store (:class:`lowres.cells.CellStore`) and each cell's pure metrics live in
:mod:`lowres.cells`, the paired bootstrap in :mod:`lowres.bootstrap`, shard planning and
checking in :mod:`lowres.shards`.

**Pooling.** With several folds, cells are also pooled (scores concatenated over folds, one
threshold; ``fold = -1``); summaries and figures use the pooled rows, averaged over seeds.
"""

from lowres.cells import CELLS_DIR
from lowres.results import PIXELS
from lowres.sweep.assemble import assemble, ring_base
from lowres.sweep.compute import SPLIT_SEED, protocol_pairs, sweep_test_split
from lowres.sweep.config import (
    DEFAULT_DATA,
    DEFAULT_FARS,
    DEFAULT_FOLDS,
    DEFAULT_MODELS,
    DEFAULT_SCALES,
    MAX_PAIRS,
    PAIRINGS,
    SweepConfig,
    SweepResult,
    default_model_cache,
    parse_float_list,
    parse_int_list,
    probe_grid,
    validate_fars,
    validate_grid_options,
    validate_scales,
)
from lowres.sweep.merge import merge_shards
from lowres.sweep.models import (
    SYNTH_VAL_IDENTITIES,
    ModelEntry,
    Prepared,
    base_of,
    parse_variant,
    prepare_models,
    pretrain_models,
    resolve_models,
    train_config,
    trained_checkpoint,
    training_workers,
)
from lowres.sweep.protocols import PROTOCOLS
from lowres.sweep.run import plan_sweep, run_sweep
from lowres.sweep.summary import format_summary, summary_table

__all__ = [
    "CELLS_DIR",
    "DEFAULT_DATA",
    "DEFAULT_FARS",
    "DEFAULT_FOLDS",
    "DEFAULT_MODELS",
    "DEFAULT_SCALES",
    "MAX_PAIRS",
    "PAIRINGS",
    "PIXELS",
    "PROTOCOLS",
    "SPLIT_SEED",
    "SYNTH_VAL_IDENTITIES",
    "ModelEntry",
    "Prepared",
    "SweepConfig",
    "SweepResult",
    "assemble",
    "base_of",
    "default_model_cache",
    "format_summary",
    "merge_shards",
    "parse_float_list",
    "parse_int_list",
    "parse_variant",
    "plan_sweep",
    "prepare_models",
    "pretrain_models",
    "probe_grid",
    "protocol_pairs",
    "resolve_models",
    "ring_base",
    "run_sweep",
    "summary_table",
    "sweep_test_split",
    "train_config",
    "trained_checkpoint",
    "training_workers",
    "validate_fars",
    "validate_grid_options",
    "validate_scales",
]
