"""What a trained model is: :class:`TrainConfig` (its fields, checks and hash), the default
learning rate, epochs and batch for a set's size, the milestones and the counter seeds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any

from lowres.errors import ConfigError

# Fields that say how a run executes, not what it trains: they are left out of the config hash
# so a model trained on a GPU or with more threads is found in the sweep's cache.
_EXECUTION_FIELDS = ("device", "num_threads", "amp", "loader_workers", "compile")


_LATE_FIELDS = {
    "train_split": "fold",
    "val_identities": 0,
    "schedule": "step",
    "warmup": 0.0,
    "augment_backend": "albumentations",
    "channels_last": False,
    "auto_steps": 1000,
}
"""Fields added after TRAIN_FORMAT 2, with the value that reproduces the models trained before
they existed (not always today's default)."""


SCHEDULES = ("step", "cosine")


TRAIN_SPLITS = ("fold", "all")


AUGMENT_BACKENDS = ("torch", "albumentations")
"""``augment_backend`` values: batched on the training device, or per image on the CPU."""


TRAIN_FORMAT = 2
"""Version of the training recipe in :meth:`TrainConfig.hash` (2: per-image augmentation seeds)."""


# Default random-resolution range: a face side from 1/16 of the image up to full size, drawn
# log-uniformly (every octave equally often), applied to half the images so the network still
# sees mostly clean faces.
DEFAULT_RESOLUTION = (1.0 / 16.0, 1.0, 0.5)


def default_lr(model: str, batch_size: int) -> float:
    """Default base learning rate for ``model`` at ``batch_size``.

    The SphereFace residual nets (``sphere*``: PReLU, no BatchNorm) get SphereFace's recipe,
    lr 0.1 at batch 256, scaled linearly to the batch size (0.0125 at 32): at the small nets'
    0.05 with batch 32, SF on sphere20 diverged to a NaN loss within 7 ORL epochs on a GPU
    (fp16 autocast) and within 4 on CPU in float32, so it is the rate, not the precision; at
    0.0125 the same CPU run trains all 40 epochs to 99.3% training accuracy. Every other model
    (BatchNorm nets such as cpunet, LeNet++) gets 0.05 at batch 32 (tuned on ORL here), scaled
    linearly to the batch: 0.2 at the default 128, which the recipe search measured as the
    better of 0.1 and 0.2 with the cosine schedule (README, training length).
    """
    if str(model).startswith("sphere"):
        return 0.1 * batch_size / 256
    return 0.05 * batch_size / 32


@dataclass
class TrainConfig:
    """Everything that defines a trained model (and, in the execution fields, how to run it).

    Defaults are tuned for the embedded default: ``cpunet`` on 2 CPU cores; ORL fold 0 (30
    identities x 10 images) trains 40 epochs in well under a minute.

    Attributes:
        method: paper notation, e.g. ``"SM"``, ``"SF+R(0.01)"``, ``"l2-SM(30)"``, ``"SM+CL"``.
        model: registry name (``lowres.models.list_models()``).
        data: ``"orl"``, ``"synth"``, another builtin name, or a manifest path.
        fold: which identity-disjoint fold is held out (its test identities are not trained).
        train_split: ``"fold"`` (train on the identities outside ``fold``) or ``"all"`` (train
            on the whole dataset, e.g. CASIA-WebFace when the test set is another dataset such
            as LFW; synth/mnist: their whole training part). ``fold`` is ignored with ``"all"``.
        preset: dataset preset (e.g. ``"cpu"`` for synth); None -> the dataset's default.
        split_seed: seed of the identity folds; kept apart from ``seed`` so every method and
            training seed holds out the same identities.
        epochs: passes over the training images; None -> :func:`auto_epochs` of the steps per
            epoch and ``auto_steps``: 12 to 40 epochs (synth's cpu preset: 18; ORL's 300
            training images at batch 32: 40 epochs).
        auto_steps: the optimizer steps :func:`auto_epochs` aims for when ``epochs`` is None
            (default 2,100: synth's 18 epochs, 97-99% of its 48-epoch TAR; 1,000 reproduces the
            models trained before this setting existed).
        batch_size: images per step (default 128; :func:`train_batch` halves it, and the lr
            with it, for sets too small for 8 steps per epoch). Incomplete last batches are
            dropped (BatchNorm on a handful of images is noisy), unless the set is smaller than
            one batch.
        lr: base learning rate of the backbone and the head (R uses ``lr * lr_mult``); None ->
            :func:`default_lr` for the model and batch size.
        momentum, weight_decay: SGD settings (SphereFace's 0.9 and 5e-4).
        milestones: when to multiply the lr by ``lr_gamma``. Values all in (0, 1) are fractions
            of the total number of steps (default 0.5, 0.75: the shape of SphereFace's 16k/24k
            of 28k iterations); otherwise they are integer epoch numbers. The lr changes per
            step, as in SphereFace, so short runs (2 epochs) still get their drops.
        lr_gamma: lr factor at each milestone.
        schedule: ``"step"`` (multiply by ``lr_gamma`` at each milestone, SphereFace's shape) or
            ``"cosine"`` (half a cosine from the base lr to 0 over all steps; ``milestones`` and
            ``lr_gamma`` are then unused). Either is fitted to the run's length, since both are
            functions of the fraction of steps done.
        warmup: fraction of all steps (0 to 0.5) over which the lr rises linearly from
            ``lr / (warmup steps)`` to ``lr`` before the schedule takes over.
        seed: initialisation, shuffling and augmentation seed.
        augment: flip + small shift/scale/rotate + brightness/contrast, seeded per image.
        augment_backend: ``"torch"`` (batched on the training device; the default, about 3x
            faster than the per-image path on this machine's CPU) or ``"albumentations"``
            (per image on the CPU, what every model trained before these two settings used).
            Both draw the same distribution of transforms (``tests/test_augment.py``), not the
            same transforms.
        channels_last: run the network in the channels-last memory format on the CPU too
            (GPUs always do): 1.3-1.5x faster for the ``cpunet`` family on this machine's CPU,
            neutral for the others (``benchmarks/train_step.py``); False reproduces models
            trained on the CPU before this setting existed.
        augment_resolution: False, True (= ``(1/16, 1, 0.5)``), or ``[low, high]`` /
            ``[low, high, p]``: with probability p an image is degraded with lowres.degrade at a
            log-uniform scale in [low, high], through the evaluation's chain ``degrade_spec``.
        degrade_spec: degradation chain for ``augment_resolution`` (``lowres.degrade`` CLI
            form); None -> ``lowres.degrade.DEFAULT``, the evaluation's default.
        input_size: (H, W) network input; None -> the model's default.
        channels: network input channels (1 grey, 3 RGB); None -> the model's default.
        embed_dim: embedding size; None -> the model's default.
        model_args: further keyword arguments of the model factory (e.g. cpunet ``widths``).
        grad_clip: max global gradient norm, or None for no clipping.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        num_threads: torch CPU threads; None leaves torch's setting alone.
        amp: mixed precision on CUDA only: bfloat16 autocast on GPUs with native bfloat16
            (Ampere and later), float16 autocast + GradScaler on older ones
            (:func:`lowres.train.loop.amp_dtype`; recorded as ``autocast`` in ``model.json``).
        val_identities: identities held out of the training split (chosen by ``split_seed``,
            never trained on, disjoint from the test identities) whose clean all-vs-all pairs
            give a verification figure after every epoch: ``val_tar`` (TAR at FAR
            :data:`VAL_FAR`) and ``val_auc`` in ``log.csv``, so convergence is seen on faces
            the model has not classified. 0: no validation (the default).
        loader_workers: processes that read a streamed training set
            (:class:`~lowres.data.stream.DiskImages`) ahead of the step; None: half the CPU
            cores, 1 to 4. In-memory sets are indexed in the training process. An execution
            setting: the weights do not depend on it.
        compile: run the training step (network, head, loss) under ``torch.compile``; an
            execution setting (the compiled step computes the same function, to float
            rounding, like another device).
    """

    method: str
    model: str = "cpunet-s"
    data: str = "synth"
    fold: int = 0
    train_split: str = "fold"
    preset: str | None = None
    split_seed: int = 0
    epochs: int | None = None
    batch_size: int = 128
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (0.5, 0.75)
    lr_gamma: float = 0.1
    seed: int = 0
    augment: bool = True
    augment_resolution: Any = False
    degrade_spec: str | None = None
    input_size: tuple[int, int] | None = None
    channels: int | None = None
    embed_dim: int | None = None
    model_args: dict | None = None
    grad_clip: float | None = None
    device: str = "auto"
    num_threads: int | None = None
    amp: bool = True
    val_identities: int = 0
    schedule: str = "cosine"
    warmup: float = 0.05
    augment_backend: str = "torch"
    channels_last: bool = True
    auto_steps: int = 2100
    loader_workers: int | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        if self.lr is None:
            self.lr = default_lr(self.model, self.batch_size)
        self.milestones = tuple(self.milestones)
        if self.input_size is not None:
            self.input_size = tuple(int(v) for v in self.input_size)
        self.augment_resolution = _canonical_resolution(self.augment_resolution)
        self.validate()

    def validate(self) -> None:
        """Check value ranges (names are checked when the model/method is built)."""
        if not isinstance(self.method, str) or not self.method.strip():
            raise ConfigError("method must be a paper-notation string such as 'SF+R(0.01)'")
        if self.epochs is not None:
            check_int("epochs", self.epochs, 1)
        check_int("auto_steps", self.auto_steps, 1)
        check_int("batch_size", self.batch_size, 2)
        check_int("fold", self.fold, 0)
        for name in ("seed", "split_seed"):
            check_int(name, getattr(self, name), 0)
            if getattr(self, name) >= 1 << 63:
                raise ConfigError(f"{name} must be below 2^63, got {getattr(self, name)}")
        if self.train_split not in TRAIN_SPLITS:
            raise ConfigError(
                f"train_split must be one of {', '.join(TRAIN_SPLITS)}, got {self.train_split!r}"
            )
        if self.augment_backend not in AUGMENT_BACKENDS:
            raise ConfigError(
                f"augment_backend must be one of {', '.join(AUGMENT_BACKENDS)}, "
                f"got {self.augment_backend!r}"
            )
        if not isinstance(self.channels_last, bool):
            raise ConfigError(f"channels_last must be true or false, got {self.channels_last!r}")
        for name in ("lr", "momentum", "weight_decay", "lr_gamma"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")
        resolve_milestones(self.milestones, self.epochs or 1, 1)
        self._validate_network()
        self._validate_schedule()

    def _validate_network(self) -> None:
        """The network's settings: model_args, grad_clip, input size, channels, threads."""
        if self.model_args is not None and not isinstance(self.model_args, dict):
            raise ConfigError(f"model_args must be a dict, got {self.model_args!r}")
        if self.grad_clip is not None and not (
            isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0
        ):
            raise ConfigError(f"grad_clip must be a number > 0 or None, got {self.grad_clip!r}")
        if self.input_size is not None and (len(self.input_size) != 2 or min(self.input_size) < 8):
            raise ConfigError(f"input_size must be (H, W) with both >= 8, got {self.input_size}")
        if self.channels is not None and self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels!r}")
        if self.num_threads is not None:
            check_int("num_threads", self.num_threads, 1)
        if self.loader_workers is not None:
            check_int("loader_workers", self.loader_workers, 0)

    def _validate_schedule(self) -> None:
        """Validation identities, the schedule's name and the warm-up fraction."""
        check_int("val_identities", self.val_identities, 0)
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        if (
            isinstance(self.warmup, bool)
            or not isinstance(self.warmup, (int, float))
            or not 0 <= self.warmup <= 0.5
        ):
            raise ConfigError(
                f"warmup must be a fraction of the steps in [0, 0.5], got {self.warmup!r}"
            )

    def to_dict(self) -> dict:
        """JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a ConfigError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown training settings {unknown}; valid: {sorted(names)}")
        return cls(**values)

    def hash(self) -> str:
        """Stable 16-hex digest of the canonical JSON of everything but the execution fields
        (device, num_threads, amp, loader_workers, compile), for caching trained models."""
        values = {k: v for k, v in self.to_dict().items() if k not in _EXECUTION_FIELDS}
        # Fields added after TRAIN_FORMAT 2 enter the hash only when set, so models cached
        # before they existed keep their hash (their weights do not depend on them).
        for key, default in _LATE_FIELDS.items():
            if values.get(key) == default:
                del values[key]
        if values.get("epochs") is not None:
            values.pop("auto_steps", None)  # used only when epochs is None
        if not values.get("augment"):
            values.pop("augment_backend", None)  # used only with augmentation
        # The training code's version: bump it whenever the same config would train different
        # weights (e.g. a changed augmentation stream), so stale cached models are not reused.
        values["_format"] = TRAIN_FORMAT
        text = json.dumps(values, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _canonical_resolution(value: Any) -> Any:
    """False | [low, high, p] (the forms True and [low, high] are expanded)."""
    if value is None or value is False:
        return False
    if value is True:
        return list(DEFAULT_RESOLUTION)
    if isinstance(value, str):
        try:
            value = [float(v) for v in value.replace(",", " ").split()]
        except ValueError:
            raise ConfigError(
                f"augment_resolution {value!r} is not 'LOW HIGH [P]' numbers, e.g. '0.0625 1 0.5'"
            ) from None
    try:
        numbers = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ConfigError(
            f"augment_resolution must be a bool or [low, high(, p)], got {value!r}"
        ) from None
    if len(numbers) == 2:
        numbers.append(DEFAULT_RESOLUTION[2])
    if len(numbers) != 3:
        raise ConfigError(f"augment_resolution must be [low, high] or [low, high, p], got {value}")
    low, high, p = numbers
    if not (0 < low <= high <= 1) or not (0 < p <= 1):
        raise ConfigError(
            f"augment_resolution needs 0 < low <= high <= 1 and 0 < p <= 1, got {numbers}"
        )
    return numbers


def resolve_milestones(
    milestones: tuple[float, ...], epochs: int, steps_per_epoch: int
) -> list[int]:
    """Step numbers (optimizer steps) after which the lr drops.

    Values all strictly between 0 and 1 are fractions of the ``epochs * steps_per_epoch`` steps
    (rounded, at least 1); otherwise every value must be an integer epoch number.

    >>> resolve_milestones((0.5, 0.75), 40, 9)
    [180, 270]
    >>> resolve_milestones((10, 15), 20, 9)
    [90, 135]
    """
    values = list(milestones)
    if not values:
        return []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ConfigError(f"milestones must be positive numbers, got {values}")
    if all(0 < v < 1 for v in values):
        return sorted({max(1, round(v * epochs * steps_per_epoch)) for v in values})
    if any(float(v) != int(v) for v in values):
        raise ConfigError(
            f"milestones {values} mix fractions and epochs; give all fractions in (0, 1) "
            "or all integer epoch numbers"
        )
    return sorted({int(v) * steps_per_epoch for v in values})


MIN_STEPS_PER_EPOCH = 8
AUTO_MIN_EPOCHS, AUTO_MAX_EPOCHS, AUTO_STEPS = 12, 40, 2100
"""auto_epochs: about AUTO_STEPS optimizer steps (``TrainConfig.auto_steps``), at least 12 and
at most 40 epochs."""


def auto_epochs(steps_per_epoch: int, target_steps: int = AUTO_STEPS) -> int:
    """Epochs when none are given: enough for about ``target_steps`` optimizer steps, at least
    ``AUTO_MIN_EPOCHS`` and at most ``AUTO_MAX_EPOCHS``.

    Measured, not a fixed image count: with the default recipe (cosine, batch 128) synth's
    clean test TAR reaches 97-99% of its 48-epoch value (where it plateaus) for every method of
    the paper in 18 epochs of 118 steps (``experiments/training_length.toml`` and the default
    sweep), hence 2,100 steps; ORL's 9 steps per epoch take the 40 epochs it has always had.
    The 1,000 steps used before (12 epochs on synth) reached 93-96% of it, under 95% for four
    of the six methods.

    >>> auto_epochs(118), auto_epochs(9), auto_epochs(150), auto_epochs(118, 1000)
    (18, 40, 14, 12)
    """
    steps = max(1, int(steps_per_epoch))
    wanted = math.ceil(int(target_steps) / steps)
    return int(min(AUTO_MAX_EPOCHS, max(AUTO_MIN_EPOCHS, wanted)))


def train_batch(batch_size: int, num_images: int) -> int:
    """The batch a run uses: ``batch_size``, halved while an epoch would have fewer than
    ``MIN_STEPS_PER_EPOCH`` steps (not below 16, and never more than the set). The lr scales
    with it (linear scaling rule), so the default batch 128 trains ORL's 300 images at batch 32
    and lr 0.05, the recipe tuned there.

    >>> train_batch(128, 15_200), train_batch(128, 300), train_batch(64, 160), train_batch(32, 10)
    (128, 32, 16, 10)
    """
    bs = int(batch_size)
    while bs > 16 and num_images // bs < MIN_STEPS_PER_EPOCH:
        bs //= 2
    return max(1, min(bs, int(num_images)))


def mix_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (counter-based randomness: same inputs, same seed)."""
    text = ":".join(str(int(p)) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def loader_workers(config: TrainConfig, streamed: bool) -> int:
    """Reader processes for the training set: ``config.loader_workers``, else none for an
    in-memory set and half the CPU cores (1 to 4) for a streamed one."""
    if config.loader_workers is not None:
        return config.loader_workers
    return min(4, max(1, (os.cpu_count() or 2) // 2)) if streamed else 0
