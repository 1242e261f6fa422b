"""Data-parallel training helpers: the torchrun environment, global-batch shards, global BatchNorm.

``torchrun --nproc_per_node=N -m lowres train ...`` starts N processes with ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK`` set; :func:`lowres.train.train` reads them through
:func:`from_env`, joins the process group (NCCL on CUDA, gloo on CPU) and leaves it at the end.

lowres keeps *global-batch semantics*: ``batch_size`` is the batch of one optimizer step over
all processes, every process draws the same shuffled order, and process ``r`` takes the
contiguous slice ``[r * B / N, (r + 1) * B / N)`` of each global batch (a deterministic
DistributedSampler). Augmentation randomness is keyed by an image's position in the global
batch, the loss is a mean over the shard and DDP averages gradients over equal shards, so N
processes compute the step of one process up to float reduction order. BatchNorm is the one
layer that looks across images: its statistics are made global with
:class:`GlobalBatchNorm` (CPU/gloo; :class:`torch.nn.SyncBatchNorm` on CUDA), so the
equivalence holds for cpunet too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lowres.errors import ConfigError

__all__ = [
    "GlobalBatchNorm",
    "World",
    "all_reduce_sum",
    "convert_batchnorm",
    "from_env",
    "process_rank",
    "shard_bounds",
]


@dataclass(frozen=True)
class World:
    """Where this process stands in a data-parallel run.

    Attributes:
        size: number of processes (1: not distributed).
        rank: this process's global rank, 0..size-1.
        local_rank: rank on this machine (selects ``cuda:local_rank``).
    """

    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """True on the process that writes checkpoints, logs and progress."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={text!r} is not an integer; launch with torchrun "
            "or unset it"
        ) from None


def from_env() -> World:
    """The :class:`World` described by torchrun's ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``
    (or an already initialised process group); size 1 when neither is present."""
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        return World(dist.get_world_size(), rank, _env_int("LOCAL_RANK", rank))
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if size < 1 or not 0 <= rank < size or local < 0:
        raise ConfigError(
            f"inconsistent torchrun environment WORLD_SIZE={size} RANK={rank} "
            f"LOCAL_RANK={local}; launch with torchrun or unset these variables"
        )
    return World(size, rank, local)


def process_rank() -> int:
    """This process's rank from the environment (0 outside torchrun); usable after the
    process group is gone, e.g. to print a summary once."""
    return _env_int("RANK", 0)


def shard_bounds(batch: int, world: World) -> tuple[int, int]:
    """``(start, stop)`` of this process's slice of a global batch of ``batch`` images.

    Raises:
        ConfigError: the batch does not split into equal shards (unequal shards would weight
            images unequally when DDP averages the per-process mean gradients).

    >>> shard_bounds(32, World(2, 1, 1))
    (16, 32)
    """
    if batch % world.size:
        raise ConfigError(
            f"the global batch of {batch} images does not split evenly over {world.size} "
            f"processes; choose --batch-size divisible by {world.size} or another "
            "--nproc_per_node"
        )
    per = batch // world.size
    return world.rank * per, (world.rank + 1) * per


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum of ``t`` over all processes (a new tensor; ``t`` itself when not distributed)."""
    if not is_distributed():
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) with autograd: the gradient of a sum over processes at one process is
    the sum over processes of the gradients that arrive there."""

    @staticmethod
    def forward(ctx: Any, t: Tensor) -> Tensor:
        out = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


def _differentiable_sum(t: Tensor) -> Tensor:
    return _SumOverProcesses.apply(t)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch over all processes.

    torch's SyncBatchNorm refuses CPU tensors; this one works with any backend (gloo on CPU).
    Mean and (biased) variance are two exact passes over the global batch, each a per-channel
    sum all-reduced with autograd, so gradients flow through the statistics as in one process.
    Its ``state_dict`` is that of ``nn.BatchNorm*d``: checkpoints do not change. In eval mode, or
    outside a multi-process group, it is plain :func:`torch.nn.functional.batch_norm`.

    Args:
        see ``nn.BatchNorm2d``; build it with :func:`convert_batchnorm`.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, input: Tensor) -> Tensor:
        """Normalise (B, C, ...) with global batch statistics in training mode."""
        self._check_input_dim(input)
        sync = (
            self.training
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        )
        if not sync:
            return super().forward(input)
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.float()
        # The image count rides along with the first sum: one all-reduce instead of two.
        local = x.new_full((1,), float(x.numel() // x.shape[1]))
        sums = _differentiable_sum(torch.cat([x.sum(dims), local]))
        count = sums[-1].detach()
        mean = sums[:-1] / count
        centred = x - mean.view(shape)
        var = _differentiable_sum((centred * centred).sum(dims)) / count
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                unbiased = var.detach() * (count / (count - 1).clamp(min=1))
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return out.to(input.dtype)


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm in ``module`` use global-batch statistics, in place.

    CUDA: :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`; otherwise
    :class:`GlobalBatchNorm`. Parameters and buffers are the same tensor objects, in the same
    order, so optimizer state and checkpoints are unaffected.

    Args:
        module: a model (before it is wrapped in DistributedDataParallel).
        device: where it trains.

    Returns:
        ``module`` (or the replacement when ``module`` itself is a BatchNorm).
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, (GlobalBatchNorm, nn.SyncBatchNorm)
    ):
        new = GlobalBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        # Reuse the very tensors so anything holding them (an optimizer) stays valid.
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        new.running_mean = module.running_mean
        new.running_var = module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in list(module.named_children()):
        setattr(module, name, convert_batchnorm(child, device))
    return module
