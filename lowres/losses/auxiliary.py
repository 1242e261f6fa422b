"""Auxiliary feature losses added to a head: Ring loss (``+R``) and Center loss (``+CL``).

Both are DDP-friendly: R is an ordinary ``nn.Parameter`` (gradients are all-reduced by DDP like
any weight), and the centers are buffers moved by Wen et al.'s rule from per-class sums that
are all-reduced when ``torch.distributed`` is initialised, so every rank applies the same update.
Both compute in float32 under autocast.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lowres.distributed import all_reduce_sum, is_distributed
from lowres.errors import ConfigError
from lowres.losses import functional as LF

__all__ = ["CenterLoss", "Regulariser", "RingLoss"]


class Regulariser(nn.Module):
    """A penalty on the embedding that any head can take: its term adds to the head's loss.

    A subclass names itself in the paper's notation (``NAME``: ``+R(...)``, ``+CL``), the
    submodule slot and log key it fills in :class:`lowres.losses.MethodLoss` (``SLOT``: also its
    ``state_dict`` prefix), and how its weight is written (``WEIGHT_REQUIRED``, ``FORMS``,
    ``EXAMPLE``). :meth:`from_notation` builds it from the weight written in the method name.
    """

    NAME: ClassVar[str] = ""
    SLOT: ClassVar[str] = ""
    FORMS: ClassVar[tuple[str, ...]] = ()
    WEIGHT_REQUIRED: ClassVar[bool] = True
    EXAMPLE: ClassVar[str] = ""

    @classmethod
    def from_notation(
        cls, weight: float | None, embed_dim: int, num_classes: int, **options: Any
    ) -> Regulariser:
        """The regulariser for ``+NAME(weight)`` (``weight`` None: written without one);
        ``options`` are :func:`lowres.methods.build_loss`'s keyword settings."""
        raise NotImplementedError

    def penalty(self, features: Tensor, labels: Tensor) -> Tensor:
        """The 0-d float32 term of a batch (differentiable)."""
        raise NotImplementedError

    def check_head(self, head: nn.Module) -> None:
        """Fail when the regulariser cannot go with ``head`` (sizes that differ)."""

    def param_groups(self, lr: float) -> list[dict]:
        """Optimizer groups of the regulariser's own parameters (none by default)."""
        return []

    def after_step(self) -> None:
        """Called once after every optimizer step."""

    def discard_step(self) -> None:
        """Called instead of :meth:`after_step` when the optimizer skipped its update."""

    def stats(self) -> dict[str, float]:
        """Scalars worth logging."""
        return {}


class RingLoss(Regulariser):
    """Ring loss ``weight / (2B) sum (||F|| - R)^2`` with a learned radius R.

    Args:
        weight: lambda (the paper: 0.01, 0.001, 0.0001 with SM; 0.03 ... 0.0001 with SF).
        init: ``"batch"`` (default) sets R, without gradient, to the mean feature norm of the
            first training batch (averaged over ranks under DDP); a float sets R to that value.
            The paper does not state its init; the common PyTorch implementation uses the first
            batch, which avoids the slow correction of a bad constant (R moves at rate
            lr * lambda) and the NaNs reported for R = 1.
        lr_mult: learning-rate multiplier for R, used by
            :meth:`lowres.losses.MethodLoss.param_groups` (R never gets weight decay, which
            would pull it towards 0 and the features with it).

    ``radius`` (0-d Parameter) and ``initialised`` (bool buffer) are in ``state_dict``, so a
    resumed run neither re-initialises R nor loses it. Until initialised, an eval-mode call uses
    the batch mean without storing it.
    """

    NAME, SLOT, FORMS, WEIGHT_REQUIRED, EXAMPLE = "R", "ring", ("R(lambda)",), True, "+R(0.01)"

    @classmethod
    def from_notation(
        cls, weight: float | None, embed_dim: int, num_classes: int, **options: Any
    ) -> RingLoss:
        return cls(
            weight,
            init=options.get("ring_init", "batch"),
            lr_mult=options.get("ring_lr_mult", 1.0),
        )

    def __init__(self, weight: float, init: str | float = "batch", lr_mult: float = 1.0) -> None:
        super().__init__()
        weight = float(weight)
        if not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"Ring loss weight must be a finite number >= 0, got {weight!r}")
        lr_mult = float(lr_mult)
        if not math.isfinite(lr_mult) or lr_mult < 0:
            raise ConfigError(f"Ring loss lr_mult must be a finite number >= 0, got {lr_mult!r}")
        if isinstance(init, str):
            if init != "batch":
                raise ConfigError(
                    f"Ring loss init must be 'batch' or a positive number, got {init!r}"
                )
            start, initialised = 0.0, False
        else:
            start = float(init)
            if not math.isfinite(start) or start <= 0:
                raise ConfigError(
                    f"Ring loss init radius must be a finite number > 0 or 'batch', got {init!r}"
                )
            initialised = True
        self.weight = weight
        self.init = init
        self.lr_mult = lr_mult
        self.radius = nn.Parameter(torch.tensor(start, dtype=torch.float32))
        self.register_buffer("initialised", torch.tensor(initialised))
        # Python mirror of the buffer so that, once R is set, forward never syncs a GPU to read it.
        self._seen_initialised = False
        self.register_load_state_dict_post_hook(RingLoss._forget_initialised)

    @staticmethod
    def _forget_initialised(module: RingLoss, incompatible_keys) -> None:
        module._seen_initialised = False

    def forward(self, features: Tensor) -> Tensor:
        """Ring loss of a batch.

        Args:
            features: (B, D) embeddings, any float dtype.

        Returns:
            0-d float32 loss.
        """
        with torch.autocast(device_type=features.device.type, enabled=False):
            x = features.float()
            radius: Tensor = self.radius
            if not self._seen_initialised:
                self._seen_initialised = bool(self.initialised)
            if not self._seen_initialised:
                with torch.no_grad():
                    mean = LF.feature_norms(x).mean()
                    if is_distributed():
                        mean = all_reduce_sum(mean) / dist.get_world_size()
                if self.training:
                    with torch.no_grad():
                        self.radius.copy_(mean)
                        self.initialised.fill_(True)
                    self._seen_initialised = True
                else:
                    radius = mean
            return LF.ring_loss(x, radius, self.weight)

    def penalty(self, features: Tensor, labels: Tensor) -> Tensor:
        return self(features)

    def param_groups(self, lr: float) -> list[dict]:
        """R: no weight decay (it would pull R, and the features, towards 0), lr * lr_mult."""
        return [
            {
                "params": [self.radius],
                "lr": lr * self.lr_mult,
                "weight_decay": 0.0,
                "name": "ring_radius",
            }
        ]

    def stats(self) -> dict[str, float]:
        return {"R": float(self.radius.detach())}

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, init={self.init!r}, lr_mult={self.lr_mult:g}"


class CenterLoss(Regulariser):
    """Center loss ``weight / (2B) sum ||x_i - c_{y_i}||^2`` with Wen et al.'s center update.

    Centers are a (C, D) float32 buffer (saved in ``state_dict``), initialised to zero as in
    Wen et al.'s MNIST setup and moved only by the update rule
    ``c_j <- c_j - alpha sum_{y_i=j}(c_j - x_i) / (1 + n_j)``: never by the optimizer. Each
    training-mode :meth:`forward` accumulates the batch's per-class sums; :meth:`after_step`
    (call it once after each optimizer step) applies them, so the loss and the update both use
    the centers of the step, as in the reference implementation.

    Args:
        num_classes: C.
        dim: D.
        weight: lambda_c (published 0.003-0.008; default 0.003).
        alpha: center learning rate in [0, 1] (default 0.5).
    """

    NAME, SLOT, FORMS = "CL", "center", ("CL", "CL(lambda_c)")
    WEIGHT_REQUIRED, EXAMPLE = False, "+CL or +CL(0.003)"

    @classmethod
    def from_notation(
        cls, weight: float | None, embed_dim: int, num_classes: int, **options: Any
    ) -> CenterLoss:
        default = options.get("center_weight", 0.003)
        return cls(
            num_classes,
            embed_dim,
            weight=default if weight is None else weight,
            alpha=options.get("center_alpha", 0.5),
        )

    def __init__(
        self, num_classes: int, dim: int, weight: float = 0.003, alpha: float = 0.5
    ) -> None:
        super().__init__()
        if int(num_classes) != num_classes or num_classes < 1 or int(dim) != dim or dim < 1:
            raise ConfigError(
                "CenterLoss needs positive integer num_classes and dim, got "
                f"{num_classes!r}, {dim!r}"
            )
        weight, alpha = float(weight), float(alpha)
        if not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"Center loss weight must be a finite number >= 0, got {weight!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(
                f"Center loss alpha must be in [0, 1] (Wen et al.: 0.5), got {alpha!r}"
            )
        self.num_classes, self.dim = int(num_classes), int(dim)
        self.weight, self.alpha = weight, alpha
        self.register_buffer("centers", torch.zeros(self.num_classes, self.dim))
        self._pending: Tensor | None = None

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """Center loss of a batch; in training mode also records the pending center update.

        Args:
            features: (B, D) embeddings, any float dtype.
            labels: (B,) integer class indices.

        Returns:
            0-d float32 loss.
        """
        with torch.autocast(device_type=features.device.type, enabled=False):
            x = features.float()
            loss = LF.center_loss(x, labels, self.centers, self.weight)
            if self.training:
                stats = LF.class_sums(x, labels, self.num_classes)
                self._pending = stats if self._pending is None else self._pending + stats
            return loss

    def penalty(self, features: Tensor, labels: Tensor) -> Tensor:
        return self(features, labels)

    def check_head(self, head: nn.Module) -> None:
        if self.dim != head.embed_dim or self.num_classes != head.num_classes:
            raise ConfigError(
                f"CenterLoss is ({self.num_classes}, {self.dim}) but the head is "
                f"({head.num_classes}, {head.embed_dim}); build both for the same data and model"
            )

    @torch.no_grad()
    def after_step(self) -> None:
        """Apply the accumulated center update (all-reduced under DDP) and clear it."""
        if self._pending is None:
            return
        stats = all_reduce_sum(self._pending)
        self.centers.copy_(LF.apply_center_update(self.centers, stats, self.alpha))
        self._pending = None

    def discard_step(self) -> None:
        """Drop the pending update: the optimizer skipped this step (AMP found inf/NaN
        gradients), so the centers do not move either."""
        self._pending = None

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, dim={self.dim}, weight={self.weight:g}, "
            f"alpha={self.alpha:g}"
        )
