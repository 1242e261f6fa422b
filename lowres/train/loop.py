"""The training loop: one backbone + one method loss (paper notation), SGD with warm-up and a
cosine (or step) schedule, checkpointed every epoch and resumable to the exact step.

Flow of one step::

    uint8 batch (CPU) -> device -> flip, small affine, brightness/contrast (batched, kornia's
    warp; or per image with albumentations on the CPU before the move) -> float [0, 1]
    -> optional random-resolution degradation (lowres.degrade, the evaluation's chain)
    -> lowres.embed.adapt (resize + normalise exactly as at evaluation) -> model
    -> MethodLoss (float32) -> SGD step -> MethodLoss.after_step()

Determinism: all randomness is counter-based. The model is initialised after
``torch.manual_seed(seed)``; the shuffling permutation of epoch ``e`` comes from a
``torch.Generator`` seeded with ``mix(seed, e)`` and the augmentation of image ``i`` of batch
``b`` from ``mix(mix(seed, e, b), i)``. The same seed therefore gives bit-identical weights on
CPU, and a run can stop after any step and resume to exactly the weights of an uninterrupted
run. On CUDA the same draws are made, but cuDNN's convolution backward and the atomic adds of
``index_add_`` (center loss) are not deterministic kernels, and AMP rounds differently: two CUDA
runs of one seed, or a resumed one, agree statistically, not bit for bit.

Data parallel (``torchrun --nproc_per_node=N -m lowres train ...``, see
:mod:`lowres.distributed`): ``batch_size`` stays the global batch of one step. Every process
draws the same order and takes its contiguous 1/N of each global batch; augmentation and
random-resolution draws are keyed by the image's position in the global batch, BatchNorm uses
global-batch statistics, DDP averages the gradients of the model and the loss parameters
(head weights, R) together, and centers move by all-reduced sums. N processes therefore train
the single-process model up to float reduction order (measured max |diff| in
``tests/test_ddp.py``). Only rank 0 writes checkpoints, the log and progress; the saved state
is the same on every rank, so a run can resume with another number of processes.

Checkpoints (see :mod:`lowres.checkpoint`) are written at the end of every epoch, and when
``max_steps`` stops a run mid-epoch, into ``out_dir``: ``model.safetensors``, ``model.json``,
``state.pt``, and the per-epoch log ``log.csv``.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from lowres import distributed as ddp
from lowres import models
from lowres.checkpoint import (
    SIDECAR_FILE,
    STATE_FILE,
    load_checkpoint,
    read_state,
    verify_weights,
    write_checkpoint,
)
from lowres.data.stream import WORKER_MMAP_THRESHOLD, DiskImages, batch_stream
from lowres.embed import InputAdapter, adapt, grey, pick_device
from lowres.errors import ConfigError, TrainingError
from lowres.files import check_writable
from lowres.methods import build_loss, parse_method
from lowres.provenance import MODEL_LIBRARIES, versions
from lowres.train.augment import (
    apply_augment,
    augment_batch,
    batch_augment_params,
    build_augmentation,
    degrade_chain,
    random_resolution,
)
from lowres.train.config import (
    TrainConfig,
    auto_epochs,
    check_int,
    loader_workers,
    mix_seed,
    resolve_milestones,
    train_batch,
)
from lowres.train.data import (
    CLEAN_EVAL_IMAGES,
    clean_batches,
    feature_norms,
    hold_out_identities,
    load_split,
    norm_cv,
    validation_metrics,
)
from lowres.train.logbook import LOG_FILE, EpochStats, PendingSums, Progress, write_log
from lowres.train.schedule import make_scheduler, restore_scheduler, scheduler_state

log = logging.getLogger("lowres.train")


STATE_VERSION = 1


def augment_for_net(
    batch: Tensor,
    seed: int,
    *,
    index_offset: int,
    adapter: InputAdapter,
    then_adapt: bool,
    in_pieces: bool = False,
) -> Tensor:
    """The batched augmentation of a training batch for a net fed through ``adapter``, then
    the adapter itself when ``then_adapt`` (a loader worker's share of a CPU step).

    An RGB batch for a grey net is turned grey first: the flip, the warp and the brightness /
    contrast are linear in the pixel values, so they commute with the luma sum, and the warp
    (most of the cost) runs on a third of the values (measured on 128 112x112 RGB images, one
    thread: 49 ms augmented in RGB, 29 ms grey first; benchmarks/train_pipeline.py gives the
    whole path). The only difference from augmenting in RGB is the clamp to 0..255 after
    brightness / contrast, taken on the grey value rather than on each channel, and float
    rounding. Grey sources (the builtins) are augmented exactly as before.

    ``in_pieces`` (loader workers) works through the batch a few images at a time. A worker
    fixes glibc's mmap threshold (:func:`lowres.data.stream.bounded_heap`), so every buffer
    above it is fresh pages, and on the project's machine a fresh page costs more than the
    arithmetic done on it: 128 RGB 112x112 images took 79 ms augmented whole in a worker and
    25 ms in pieces whose float images and warp grid stay below the threshold (29 ms whole
    with glibc's default heap; one thread). The transforms are drawn once for the batch and
    every image is augmented on its own, so the pieces give the whole batch's tensor bit for
    bit (tested): the weights do not depend on whether a worker or the trainer augments.
    """
    params = batch_augment_params(batch, seed, index_offset)
    per_image = 4 * batch.shape[-2] * batch.shape[-1] * max(2, batch.shape[1])
    piece = max(1, WORKER_MMAP_THRESHOLD // per_image) if in_pieces else batch.shape[0]
    parts = []
    for start in range(0, max(1, batch.shape[0]), piece):
        x = batch[start : start + piece]
        if adapter.channels == "grey" and x.shape[1] == 3:
            x = grey(x.float())
        x = apply_augment(x, {k: v[start : start + piece] for k, v in params.items()})
        parts.append(adapt(x, adapter) if then_adapt else x)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _pick_device(name: str, world: ddp.World) -> torch.device:
    """The configured device; under torchrun on CUDA, ``cuda:LOCAL_RANK`` (one GPU each)."""

    device = pick_device(name)
    if not world.distributed or device.type != "cuda":
        return device
    if device.index is not None:
        raise ConfigError(
            f"device {name!r} names one GPU, but under torchrun each process uses "
            "cuda:LOCAL_RANK; pass --device cuda (or auto)"
        )
    if world.local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"LOCAL_RANK {world.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
            "start at most one process per GPU"
        )
    device = torch.device("cuda", world.local_rank)
    torch.cuda.set_device(device)
    return device


def _leave_group() -> None:
    """Destroy the process group :func:`_join_group` made, after collecting what still holds it
    (DDP's reference cycles): left to interpreter exit, a rank aborted ("terminate called
    without an active exception", no Python frame) in 5 of 100 two-process CPU runs on the
    project's machine; with the collection, 0 of 100."""
    gc.collect()
    dist.destroy_process_group()


def _join_group(world: ddp.World, device: torch.device) -> bool:
    """Initialise the process group for a torchrun launch (NCCL on CUDA, gloo on CPU).

    Returns:
        True when this call created the group (and train() must destroy it).
    """
    if not world.distributed or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    available = dist.is_available() and (
        dist.is_nccl_available() if backend == "nccl" else dist.is_gloo_available()
    )
    if not available:
        raise ConfigError(
            f"torchrun started {world.size} processes but this torch has no {backend} backend; "
            "install a torch build with torch.distributed or train in one process"
        )
    if backend == "nccl":
        dist.init_process_group(backend, device_id=device)
    else:
        dist.init_process_group(backend)
    return True


class _Step(nn.Module):
    """Model and loss as one module, so DistributedDataParallel averages the gradients of the
    backbone and of every loss parameter (head weights, R) in one set of buckets."""

    def __init__(
        self, model: nn.Module, loss: nn.Module, dtype: torch.dtype | None, device_type: str
    ) -> None:
        super().__init__()
        self.model, self.loss = model, loss
        self.dtype, self.device_type = dtype, device_type

    def forward(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Any]:
        """(features (B, D), LossOutput) of a normalised batch (B, C, H, W)."""
        with torch.autocast(
            device_type=self.device_type,
            dtype=self.dtype or torch.float16,
            enabled=self.dtype is not None,
        ):
            features = self.model(x)
        return features, self.loss(features.float(), labels)


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The network's autocast dtype in training: None (float32) on the CPU or with ``amp``
    off; bfloat16 on GPUs with native bfloat16 (Ampere and later: float32's exponent range, so
    no loss scaling and no GradScaler sync); float16 with a GradScaler on older GPUs. The loss
    always runs in float32.

    >>> amp_dtype(torch.device("cpu"), True) is None
    True
    """
    if device.type != "cuda" or not amp:
        return None
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native else torch.float16


@torch.no_grad()
def _step_sums(features: Tensor, result: Any, labels: Tensor) -> tuple[Tensor, list[str]]:
    """One step's logging sums over the global batch (all-reduced under DDP), float64 on the
    device: ``[loss sum, part sums (sorted names), correct, images, norm sum, norm sq]`` and
    the part names (read later by :class:`~lowres.train.logbook.PendingSums`)."""
    batch = labels.numel()
    keys = sorted(result.parts)
    norms = torch.linalg.vector_norm(features.detach().float(), dim=1).double()
    values = [result.loss.detach().double() * batch]
    values += [result.parts[k].double() * batch for k in keys]
    values += [
        (result.logits.argmax(dim=1) == labels).sum().double(),
        norms.new_tensor(float(batch)),
        norms.sum(),
        (norms * norms).sum(),
    ]
    return ddp.all_reduce_sum(torch.stack(values)), keys


def _model_kwargs(config: TrainConfig) -> dict:
    kwargs: dict[str, Any] = {}
    if config.channels is not None:
        kwargs["in_channels"] = config.channels
    if config.input_size is not None:
        kwargs["input_size"] = tuple(config.input_size)
    if config.embed_dim is not None:
        kwargs["embed_dim"] = config.embed_dim
    kwargs.update(config.model_args or {})
    return kwargs


def _build(config: TrainConfig, num_classes: int) -> tuple[nn.Module, nn.Module, Any, dict]:
    """Create model + loss on CPU (after the caller seeded torch); returns the model kwargs
    recorded in the sidecar (the model's resolved input size, channels and embedding size)."""

    spec = parse_method(config.method)
    model = models.create(config.model, **_model_kwargs(config))
    loss = build_loss(spec, int(model.embed_dim), int(num_classes))
    kwargs = json.loads(json.dumps(_model_kwargs(config)))
    kwargs.update(
        in_channels=int(model.in_channels),
        input_size=[int(v) for v in model.input_size],
        embed_dim=int(model.embed_dim),
    )
    return model, loss, spec, kwargs


def optimizer_step(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> bool:
    """One optimizer step through AMP's GradScaler; False when the scaler skipped it.

    Under fp16 autocast (CUDA) the scaler skips a step whose gradients hold inf/NaN and lowers
    its scale; then the lr schedule, SphereFace's annealing and the centers must not move
    either (the caller checks this result). With the scaler disabled (CPU, or ``amp=False``)
    this is ``optimizer.step()`` and always True.
    """
    if not scaler.is_enabled():
        optimizer.step()
        return True
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= before


def check_names(config: TrainConfig) -> None:
    """Fail on an unknown method or model before any data is loaded (a sweep calls it for
    every model before it writes anything)."""

    parse_method(config.method)
    names = models.list_models()
    if config.model not in names:
        raise ConfigError(f"unknown model {config.model!r}; choose one of {', '.join(names)}")


def _adapter_for(model: nn.Module) -> Any:

    return InputAdapter.for_model(model)


def _param_groups(
    model: nn.Module, loss: nn.Module, config: TrainConfig, lr: float | None = None
) -> list[dict]:
    lr = config.lr if lr is None else lr
    groups = [{"params": list(model.parameters()), "weight_decay": config.weight_decay, "lr": lr}]
    groups.extend(loss.param_groups(lr, config.weight_decay))
    seen: set[int] = set()
    for group in groups:
        for param in group["params"]:
            if id(param) in seen:
                raise TrainingError(
                    "a parameter appears in two optimizer groups; MethodLoss.param_groups must "
                    "list each loss parameter once"
                )
            seen.add(id(param))
    missing = [n for n, p in loss.named_parameters() if id(p) not in seen]
    if missing:
        raise TrainingError(
            f"loss parameters {missing} are not in MethodLoss.param_groups, so they would never "
            "train; list them there"
        )
    return groups


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool | str = True,
    max_steps: int | None = None,
) -> Path:
    """Train ``config`` and write its checkpoint into ``out_dir``.

    Under torchrun (``WORLD_SIZE`` > 1 in the environment) every process calls this; it joins
    the process group (NCCL on CUDA, gloo on CPU), trains its shard of each global batch with
    DistributedDataParallel, and leaves the group at the end. Only rank 0 writes ``out_dir``.

    Args:
        config: what to train (``batch_size`` is the global batch over all processes).
        out_dir: checkpoint folder (only this folder is written).
        resume: continue from ``out_dir/state.pt`` if present (exactly where it stopped, with
            any number of processes); a finished run is returned as is. Without it, an
            ``out_dir`` that already holds a checkpoint, or any other file, is refused.
        progress: True, ``"lines"`` (no bar) or False, on stderr of rank 0 only (see
            :class:`lowres.train.logbook.Progress`).
        max_steps: stop after this many optimizer steps in total (counting steps before a
            resume), writing a resumable checkpoint; None trains all epochs.

    Returns:
        The checkpoint folder (``model.safetensors`` + ``model.json`` + ``state.pt`` +
        ``log.csv``).

    Raises:
        ConfigError: unknown method/model/dataset, a resume with other settings, or a global
            batch that does not split evenly over the processes.
        CheckpointError: the checkpoint to resume is inconsistent or unsafe.
        TrainingError: the loss became NaN/inf (the last good checkpoint is kept).
    """
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"train() needs a TrainConfig, got {type(config).__name__}")
    if max_steps is not None:
        check_int("max_steps", max_steps, 1)
    check_names(config)
    world = ddp.from_env()
    out = Path(out_dir)
    state_path, side_path = out / STATE_FILE, out / SIDECAR_FILE

    check_writable(out, "--out")
    state: dict | None = None
    if not resume and out.is_dir() and not (side_path.exists() or state_path.exists()):
        if any(out.iterdir()):
            # A sweep folder or someone's files: checkpoint files would be mixed into them.
            raise ConfigError(
                f"{out} is not empty and holds no checkpoint; choose an empty or new --out "
                "(or pass --resume to continue a run interrupted before its first checkpoint)"
            )
    if side_path.exists() or state_path.exists():
        if not resume:
            raise ConfigError(
                f"{out} already holds a checkpoint; pass --resume to continue it or choose "
                "another --out"
            )
        state = read_state(state_path)
        sidecar, _ = verify_weights(out)
        if state.get("config_hash") != config.hash():
            raise ConfigError(
                f"{out} was trained with other settings (config {state.get('config_hash')} != "
                f"{config.hash()}); resume with the same settings or choose another --out"
            )
        if sidecar.get("iteration") != state.get("iteration"):
            raise ConfigError(
                f"{out}: state.pt (step {state.get('iteration')}) and model.json (step "
                f"{sidecar.get('iteration')}) disagree, the last write was interrupted; "
                "delete the folder and re-train"
            )
        if state.get("finished"):
            if world.main:
                log.info("%s is already trained; nothing to do", out)
            return out

    # Checked before joining the group: a rank that fails alone would leave the others waiting.
    ddp.shard_bounds(config.batch_size, world)
    device = _pick_device(config.device, world)
    created_group = _join_group(world, device)
    threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    fresh = not out.exists()
    try:
        return _train(config, out, state, world, device, progress=progress, max_steps=max_steps)
    except OSError:
        # A full disk (or a folder removed meanwhile) mid-run: a folder this run made holds
        # nothing worth resuming from, so it goes; an earlier run's checkpoints stay.
        if fresh and world.main:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        # The caller's thread count comes back: a sweep embeds with it after training.
        torch.set_num_threads(threads)
        if created_group:
            _leave_group()


# The training loop is the one documented exception to the 100-line and complexity-15 rules
# (ruff C901 is waived here): it is one pass of resume-exact state (epoch, step, iteration, RNG,
# stats) that every branch reads and writes, and splitting it into functions would thread that
# state through a dozen arguments without making one step easier to follow.
def _train(  # noqa: C901
    config: TrainConfig,
    out: Path,
    state: dict | None,
    world: ddp.World,
    device: torch.device,
    *,
    progress: bool | str,
    max_steps: int | None,
) -> Path:
    """The loop of :func:`train`, after the checks and inside the process group."""

    cuda = device.type == "cuda"
    autocast = amp_dtype(device, config.amp)
    use_amp = autocast == torch.float16  # loss scaling: float16 only

    train_set, test_set = load_split(config)
    train_set, val_set = hold_out_identities(train_set, config.val_identities, config.split_seed)
    num_classes = int(train_set.num_identities)
    n = train_set.images.shape[0]
    bs = train_batch(config.batch_size, n)
    lr_scale = bs / config.batch_size  # linear scaling when a small set lowers the batch
    shard_start, shard_stop = ddp.shard_bounds(bs, world)
    torch.manual_seed(config.seed)
    model, loss_fn, spec, model_kwargs = _build(config, num_classes)
    adapter = _adapter_for(model)
    if state is not None:
        # Verifies sha256, keys and shapes, then loads into these very modules.
        load_checkpoint(out, build=lambda _side: (model, loss_fn, spec))
    if world.distributed:
        # Per-process statistics would normalise each shard on its own: another model than the
        # single-process one. Global statistics keep N processes equal to one.
        model = ddp.convert_batchnorm(model, device)
    model.train()
    loss_fn.train()
    model.to(device)
    loss_fn.to(device)
    channels_last = cuda or config.channels_last
    if channels_last:
        model.to(memory_format=torch.channels_last)
    step_module = _Step(model, loss_fn, autocast, device.type)
    runner: nn.Module = step_module
    if world.distributed:
        # Buffers (BatchNorm running stats, centers, R's flag) are equal on every rank by
        # construction, so DDP need not broadcast them each step.
        runner = DistributedDataParallel(
            step_module, device_ids=[device.index] if cuda else None, forward_sync_buffers=False
        )
    if config.compile:
        runner = torch.compile(runner)

    optimizer = torch.optim.SGD(
        _param_groups(model, loss_fn, config, config.lr * lr_scale),
        lr=config.lr * lr_scale,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = n // bs
    epochs = config.epochs
    if epochs is None:
        epochs = auto_epochs(steps_per_epoch, config.auto_steps)
    milestones = resolve_milestones(config.milestones, epochs, steps_per_epoch)
    scheduler = make_scheduler(optimizer, config, milestones, epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    per_image = config.augment and config.augment_backend == "albumentations"
    batched = config.augment and config.augment_backend == "torch"
    pipeline = build_augmentation() if per_image else None
    resolution = config.augment_resolution
    degrade_spec = degrade_chain(config) if resolution else None

    # uint8 at rest: per-image augmentation on the CPU, then moved; batched augmentation
    # after the move, on the device; without augmentation an in-memory set moves once. A set
    # too large for memory (DiskImages) is read batch by batch, ahead of the step, by loader
    # workers.
    images = train_set.images
    streamed = isinstance(images, DiskImages)
    if not config.augment and not streamed:
        images = images.to(device)
    workers = loader_workers(config, streamed)
    # On a CPU with loader workers, the batched augmentation (and, without resolution
    # augmentation, the input adapter) runs in the workers, overlapping the step (the same
    # seeds, so the same tensors; a 112x112 RGB batch also crosses to the trainer already at
    # the net's size); on a GPU it runs on the device.
    adapt_in_workers = not resolution
    augment_in_workers = (
        functools.partial(
            augment_for_net,
            index_offset=shard_start,
            adapter=adapter,
            then_adapt=adapt_in_workers,
            in_pieces=True,
        )
        if batched and device.type == "cpu" and workers > 0
        else None
    )
    labels = train_set.labels.to(device)

    epoch, step_in_epoch, iteration = 0, 0, 0
    rows: list[dict] = []
    epoch_stats = EpochStats()
    wall = 0.0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        restore_scheduler(scheduler, state["scheduler"])
        if use_amp and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        epoch, step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        iteration = int(state["iteration"])
        rows = list(state["rows"])
        epoch_stats = EpochStats(state["epoch_stats"])
        wall = float(state.get("wall_seconds", 0.0))
        # Every rank seeded and drew alike, so rank 0's RNG state is every rank's.
        torch.set_rng_state(state["rng"]["torch"])
        if cuda and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)

    name = f"{config.method} (fold {config.fold}, seed {config.seed})"
    bar = Progress(progress if world.main else False, epochs, steps_per_epoch, name)
    base_sidecar = _base_sidecar(
        config,
        (spec, model_kwargs, adapter),
        (train_set, test_set, val_set),
        {
            "epochs": epochs,
            "steps_per_epoch": steps_per_epoch,
            "batch_size_used": bs,
            "lr_used": config.lr * lr_scale,
            "milestone_steps": milestones,
        },
    )

    def save(finished: bool) -> None:
        if world.main:
            metrics = _metrics(
                rows, wall, model, loss_fn, train_set, test_set, adapter, device, finished
            )
            sidecar = dict(base_sidecar)
            sidecar.update(
                epochs_completed=epoch,
                iteration=iteration,
                complete=finished,
                device=str(device),
                autocast=None if autocast is None else str(autocast).removeprefix("torch."),
                world_size=world.size,
                metrics=metrics,
            )
            train_state = {
                "version": STATE_VERSION,
                "config": config.to_dict(),
                "config_hash": config.hash(),
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "iteration": iteration,
                "finished": finished,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler_state(scheduler),
                "scaler": scaler.state_dict() if use_amp else {},
                "rng": _rng_state(device),
                "rows": rows,
                "epoch_stats": epoch_stats.to_dict(),
                "wall_seconds": wall,
                "world_size": world.size,
            }
            write_checkpoint(out, model, loss_fn, sidecar, train_state)
            write_log(out / LOG_FILE, rows)
        if world.distributed:
            # No rank runs ahead of (or returns before) a checkpoint that is still being written.
            dist.barrier()

    last_good = (
        f"{out} (epoch {epoch}, step {iteration})"
        if state is not None
        else "nowhere (it failed before the first checkpoint)"
    )
    stopped = False
    pending = PendingSums()
    while epoch < epochs and not stopped:
        order = torch.randperm(
            n, generator=torch.Generator().manual_seed(mix_seed(config.seed, epoch))
        )
        steps = range(step_in_epoch, steps_per_epoch)
        if max_steps is not None:
            steps = steps[: max(0, max_steps - iteration)]
        index_batches = [order[s * bs + shard_start : s * bs + shard_stop] for s in steps]
        seeds = [mix_seed(config.seed, epoch, s) for s in steps]
        source = batch_stream(
            images,
            index_batches,
            workers=workers,
            pin_memory=cuda and images.device != device,
            transform=augment_in_workers,
            seeds=seeds,
        )
        t0 = time.perf_counter()
        for index, batch_seed, batch in zip(index_batches, seeds, source, strict=True):
            if pipeline is not None:
                x8 = augment_batch(batch, pipeline, batch_seed, index_offset=shard_start)
                x = x8.to(device, non_blocking=True).float().div_(255.0)
            elif augment_in_workers is not None:
                x = batch  # augmented by a loader worker, beside the previous step
            elif batched:
                x8 = batch.to(device, non_blocking=True)
                x = augment_for_net(
                    x8, batch_seed, index_offset=shard_start, adapter=adapter, then_adapt=False
                )
            else:
                x = batch.to(device, non_blocking=True).float().div_(255.0)
            y = labels[index.to(device)]
            if resolution:
                gen = torch.Generator().manual_seed(mix_seed(config.seed, epoch, step_in_epoch, 1))
                x = random_resolution(
                    x, *resolution, degrade_spec, gen, batch_size=bs, index_offset=shard_start
                )
            if augment_in_workers is None or not adapt_in_workers:
                x = adapt(x, adapter)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            features, result = runner(x, y)
            total = result.loss
            # Sums over the global batch, kept on the device and read every SYNC_EVERY steps:
            # every rank sees the same loss, so a NaN on one shard stops all of them together.
            sums, keys = _step_sums(features, result, y)
            due = pending.add(sums, keys, epoch + 1, iteration + 1)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            if config.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(
                    [p for g in optimizer.param_groups for p in g["params"]], config.grad_clip
                )
            if optimizer_step(scaler, optimizer):
                scheduler.step()
                loss_fn.after_step()
            else:
                loss_fn.skip_step()
            iteration += 1
            step_in_epoch += 1

            if due:
                pending.flush(epoch_stats, last_good, config.lr)
            now = time.perf_counter()
            seconds, t0 = now - t0, now  # the wait for the next batch counts too
            epoch_stats.seconds += seconds
            wall += seconds
            bar.update(
                epoch + 1,
                step_in_epoch,
                epoch_stats.loss / max(1, epoch_stats.count),
                epoch_stats.correct / max(1, epoch_stats.count),
                epoch_stats.count / max(1e-9, epoch_stats.seconds),
            )
        pending.flush(epoch_stats, last_good, config.lr)
        if step_in_epoch < steps_per_epoch:  # max_steps reached inside the epoch
            stopped = True
            break
        lr_now = optimizer.param_groups[0]["lr"]
        epoch += 1
        row = epoch_stats.row(epoch, iteration, lr_now, loss_fn.stats())
        if val_set is not None and world.main:
            row.update(validation_metrics(model, val_set, adapter, device))
        rows.append(row)
        bar.epoch_done(row)
        epoch_stats = EpochStats()
        step_in_epoch = 0
        save(epoch >= epochs)
        last_good = f"{out} (epoch {epoch}, step {iteration})"

    bar.close()
    if stopped:
        save(False)
    return out


def _base_sidecar(config: TrainConfig, built: tuple, sets: tuple, schedule: dict) -> dict:
    """The checkpoint sidecar's fixed part: method, network, input adapter, data and schedule
    (``built``: spec, model kwargs, adapter; ``sets``: train, test, validation or None;
    ``schedule``: epochs, steps_per_epoch, batch_size_used, lr_used, milestone_steps)."""
    spec, model_kwargs, adapter = built
    train_set, test_set, val_set = sets
    num_classes = int(train_set.num_identities)
    return {
        "method": str(spec),
        "model": config.model,
        "model_kwargs": model_kwargs,
        "embed_dim": model_kwargs["embed_dim"],
        "num_classes": num_classes,
        "input_size": model_kwargs["input_size"],
        "channels": model_kwargs["in_channels"],
        "normalisation": {"mean": adapter.mean, "std": adapter.std, "scale": "0..255"},
        "adapter": json.loads(json.dumps(dataclasses.asdict(adapter))),
        "data": {
            "name": config.data,
            "dataset": train_set.name,
            "fold": config.fold,
            "preset": config.preset,
            "split_seed": config.split_seed,
            "manifest": json.loads(json.dumps(train_set.meta, default=str)),
            "train_images": int(train_set.images.shape[0]),
            "train_identities": num_classes,
            "test_identities": int(test_set.num_identities),
            "val_identities": 0 if val_set is None else int(val_set.num_identities),
            "image_size": [int(v) for v in train_set.images.shape[-2:]],
        },
        "seed": config.seed,
        "config": config.to_dict(),
        "config_hash": config.hash(),
        **schedule,
        "versions": versions(MODEL_LIBRARIES, lowres_first=True),
    }


def _metrics(
    rows: list[dict],
    wall: float,
    model: nn.Module,
    loss_fn: nn.Module,
    train_set: Any,
    test_set: Any,
    adapter: Any,
    device: torch.device,
    finished: bool,
) -> dict:
    """Sidecar metrics. Once training finished: held-out clean-image norm spread, and accuracy
    (head's plain logits, eval mode) and norm spread on clean training images."""
    metrics: dict[str, Any] = {"wall_seconds": wall}
    metrics.update({k: float(v) for k, v in loss_fn.stats().items()})
    if rows:
        last = rows[-1]
        metrics.update({k: last[k] for k in ("val_tar", "val_auc") if k in last})
        metrics.update(
            train_acc=last["train_acc"],
            loss=last["loss"],
            train_norm_mean=last["norm_mean"],
            train_norm_std=last["norm_std"],
            train_norm_cv=last["norm_std"] / last["norm_mean"] if last["norm_mean"] else None,
        )
    if finished and test_set.images.shape[0] > 1:
        norms = feature_norms(model, test_set.images, adapter, device)
        metrics.update(
            test_norm_mean=float(norms.double().mean()),
            test_norm_std=float(norms.double().std(unbiased=False)),
            test_norm_cv=norm_cv(norms),
        )
    if finished:
        # Batch by batch: the logits are (images x classes), 60 MB at once for 2,000 images of
        # a 7,500-identity set; the head's plain logits are per image, as in loss_fn's output.
        n = train_set.images.shape[0]
        index = torch.linspace(0, n - 1, min(n, CLEAN_EVAL_IMAGES)).round().long().unique()
        labels = train_set.labels[index].to(device)
        hits, norms, start = [], [], 0
        for feats in clean_batches(model, train_set.images, adapter, device, index=index):
            with torch.no_grad(), torch.autocast(device.type, enabled=False):
                logits = loss_fn.head.plain_logits(feats)
            hits.append(logits.argmax(1) == labels[start : start + feats.shape[0]])
            norms.append(torch.linalg.vector_norm(feats, dim=1).cpu())
            start += feats.shape[0]
        metrics.update(
            train_clean_acc=float(torch.cat(hits).double().mean()),
            train_clean_norm_cv=norm_cv(torch.cat(norms)),
            train_clean_images=int(index.numel()),
        )
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in metrics.items()
    }
