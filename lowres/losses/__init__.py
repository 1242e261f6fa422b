"""Losses: a head (SM, l2-SM, SF, CosFace, ArcFace) plus optional Ring / Center loss.

:class:`MethodLoss` bundles them for the trainer: it owns every learnable loss parameter, says
how to optimise them (:meth:`MethodLoss.param_groups`), and needs :meth:`MethodLoss.after_step`
once after each optimizer step. Build one from a method name with
:func:`lowres.methods.build_loss`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from lowres.errors import ConfigError
from lowres.losses import functional
from lowres.losses.auxiliary import CenterLoss, RingLoss
from lowres.losses.heads import (
    ArcFaceHead,
    CosFaceHead,
    Head,
    HeadOutput,
    L2SoftmaxHead,
    SoftmaxHead,
    SphereFaceHead,
)

__all__ = [
    "ArcFaceHead",
    "CenterLoss",
    "CosFaceHead",
    "Head",
    "HeadOutput",
    "L2SoftmaxHead",
    "LossOutput",
    "MethodLoss",
    "RingLoss",
    "SoftmaxHead",
    "SphereFaceHead",
    "functional",
]


class LossOutput(NamedTuple):
    """Result of :meth:`MethodLoss.forward`.

    Attributes:
        loss: 0-d float32 total loss (head + aux), differentiable.
        parts: detached 0-d float32 tensors for logging: ``"head"`` always, ``"ring"`` and
            ``"center"`` when present. ``loss == sum(parts.values())`` up to rounding.
        logits: (B, C) float32 plain logits without margin (for accuracy; see
            :mod:`lowres.losses.heads`).
    """

    loss: Tensor
    parts: dict[str, Tensor]
    logits: Tensor


class MethodLoss(nn.Module):
    """Head plus optional Ring and Center loss: everything learnable on the loss side.

    Args:
        head: the classifier head (primary loss).
        ring: optional :class:`RingLoss`.
        center: optional :class:`CenterLoss`.
        name: method name for ``repr`` and logs (e.g. ``"SF+R(0.01)"``).
    """

    def __init__(
        self,
        head: Head,
        ring: RingLoss | None = None,
        center: CenterLoss | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        if center is not None and (
            center.dim != head.embed_dim or center.num_classes != head.num_classes
        ):
            raise ConfigError(
                f"CenterLoss is ({center.num_classes}, {center.dim}) but the head is "
                f"({head.num_classes}, {head.embed_dim}); build both for the same data and model"
            )
        self.head = head
        self.ring = ring
        self.center = center
        self.name = name

    @property
    def embed_dim(self) -> int:
        return self.head.embed_dim

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def forward(self, features: Tensor, labels: Tensor) -> LossOutput:
        """Total loss, its parts and plain logits, in float32 even under autocast.

        Args:
            features: (B, D) embeddings from the model.
            labels: (B,) integer class indices in 0..C-1.

        Returns:
            :class:`LossOutput`.
        """
        out = self.head(features, labels)
        loss = out.loss
        parts = {"head": out.loss.detach()}
        if self.ring is not None:
            ring = self.ring(features)
            parts["ring"] = ring.detach()
            loss = loss + ring
        if self.center is not None:
            center = self.center(features, labels)
            parts["center"] = center.detach()
            loss = loss + center
        return LossOutput(loss, parts, out.logits)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Optimizer parameter groups for the loss side (add the model's groups yourself).

        Head weights (and biases) get ``weight_decay``; scalars such as a learnable l2-SM alpha
        get none; the Ring radius R gets no weight decay and ``lr * ring.lr_mult``. Empty groups
        are left out. Each group carries a ``"name"`` key for logs.

        Args:
            lr: base learning rate.
            weight_decay: the model's weight decay.

        Returns:
            list of dicts for ``torch.optim`` (``params``, ``lr``, ``weight_decay``, ``name``).
        """
        decayed = [p for p in self.head.parameters() if p.requires_grad and p.dim() > 0]
        undecayed = [p for p in self.head.parameters() if p.requires_grad and p.dim() == 0]
        groups = [
            {"params": decayed, "lr": lr, "weight_decay": weight_decay, "name": "head"},
            {"params": undecayed, "lr": lr, "weight_decay": 0.0, "name": "head_scalars"},
        ]
        if self.ring is not None:
            groups.append(
                {
                    "params": [self.ring.radius],
                    "lr": lr * self.ring.lr_mult,
                    "weight_decay": 0.0,
                    "name": "ring_radius",
                }
            )
        return [g for g in groups if g["params"]]

    @torch.no_grad()
    def after_step(self) -> None:
        """Call once after every optimizer step: SF annealing advances, centers move."""
        self.head.after_step()
        if self.center is not None:
            self.center.after_step()

    def skip_step(self) -> None:
        """Call instead of :meth:`after_step` when the optimizer skipped the update (AMP's
        GradScaler found inf/NaN gradients): annealing and centers stay where they were."""
        if self.center is not None:
            self.center.discard_step()

    def stats(self) -> dict[str, float]:
        """Loggable scalars: ``R`` with Ring loss, ``lambda_sf`` with SF, ``alpha`` if learned."""
        out = dict(self.head.stats())
        if self.ring is not None:
            out["R"] = float(self.ring.radius.detach())
        return out

    def extra_repr(self) -> str:
        return f"name={self.name!r}" if self.name else ""
