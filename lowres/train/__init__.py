"""Training: one backbone + one method loss (paper notation), SGD with a warm-up and a
cosine (or step) schedule, cached by config and training images.

Modules, in the order a run uses them: :mod:`~lowres.train.config` (what a model is),
:mod:`~lowres.train.data` (the split, the held-out identities, clean features),
:mod:`~lowres.train.augment` (flip/affine/brightness augmentation, batched or per image,
and random-resolution augmentation),
:mod:`~lowres.train.schedule` (the lr schedule), :mod:`~lowres.train.loop` (the training loop,
checkpoints and resume, data parallel), :mod:`~lowres.train.logbook` (``log.csv`` and progress)
and :mod:`~lowres.train.cache` (the model cache). See :mod:`lowres.train.loop` for the flow of
one step, determinism and data parallel training.
"""

from lowres.checkpoint import LoadedModel, load_checkpoint
from lowres.train.augment import (
    augment_batch,
    augment_batch_torch,
    build_augmentation,
    degrade_chain,
    random_resolution,
)
from lowres.train.cache import (
    CACHE_MARKER,
    cached_model,
    model_key,
    train_cached,
)
from lowres.train.config import (
    DEFAULT_RESOLUTION,
    MIN_STEPS_PER_EPOCH,
    SCHEDULES,
    TRAIN_FORMAT,
    TRAIN_SPLITS,
    TrainConfig,
    auto_epochs,
    check_int,
    default_lr,
    mix_seed,
    resolve_milestones,
    train_batch,
)
from lowres.train.data import (
    CLEAN_EVAL_IMAGES,
    VAL_FAR,
    clean_features,
    feature_norms,
    hold_out_identities,
    load_split,
    norm_cv,
    validation_metrics,
)
from lowres.train.logbook import (
    LOG_FILE,
    EpochStats,
    Progress,
    write_log,
)
from lowres.train.loop import (
    STATE_VERSION,
    check_names,
    optimizer_step,
    train,
)
from lowres.train.schedule import (
    lr_factor,
    make_scheduler,
    restore_scheduler,
    scheduler_state,
)

__all__ = [
    "CACHE_MARKER",
    "CLEAN_EVAL_IMAGES",
    "DEFAULT_RESOLUTION",
    "LOG_FILE",
    "MIN_STEPS_PER_EPOCH",
    "SCHEDULES",
    "STATE_VERSION",
    "TRAIN_FORMAT",
    "TRAIN_SPLITS",
    "VAL_FAR",
    "EpochStats",
    "LoadedModel",
    "Progress",
    "TrainConfig",
    "augment_batch",
    "augment_batch_torch",
    "auto_epochs",
    "build_augmentation",
    "cached_model",
    "check_int",
    "check_names",
    "clean_features",
    "default_lr",
    "degrade_chain",
    "feature_norms",
    "hold_out_identities",
    "load_checkpoint",
    "load_split",
    "lr_factor",
    "make_scheduler",
    "mix_seed",
    "model_key",
    "norm_cv",
    "optimizer_step",
    "random_resolution",
    "resolve_milestones",
    "restore_scheduler",
    "scheduler_state",
    "train",
    "train_batch",
    "train_cached",
    "validation_metrics",
    "write_log",
]
