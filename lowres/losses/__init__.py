"""Losses: a head (SM, l2-SM, SF, CosFace, ArcFace, AdaFace, MagFace) plus optional embedding
regularisers (Ring loss, Center loss), which any head can take.

:class:`MethodLoss` bundles them for the trainer: it owns every learnable loss parameter, says
how to optimise them (:meth:`MethodLoss.param_groups`), and needs :meth:`MethodLoss.after_step`
once after each optimizer step. Build one from a method name with
:func:`lowres.methods.build_loss`.

**Adding a loss** is one file and one registry line: a :class:`Head` subclass (its ``NAME``,
``FORMS``, :meth:`Head.check_args` and logits) or a :class:`Regulariser` subclass (its
``NAME``, ``SLOT`` and :meth:`Regulariser.penalty`), listed in :data:`HEADS` or
:data:`REGULARISERS` below; the notation parser, the help line and ``build_loss`` read them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from lowres.errors import ConfigError
from lowres.losses import functional
from lowres.losses.auxiliary import CenterLoss, Regulariser, RingLoss
from lowres.losses.heads import (
    AdaFaceHead,
    ArcFaceHead,
    CosFaceHead,
    Head,
    HeadOutput,
    L2SoftmaxHead,
    MagFaceHead,
    SoftmaxHead,
    SphereFaceHead,
)

__all__ = [
    "HEADS",
    "REGULARISERS",
    "AdaFaceHead",
    "ArcFaceHead",
    "CenterLoss",
    "CosFaceHead",
    "Head",
    "HeadOutput",
    "L2SoftmaxHead",
    "LossOutput",
    "MagFaceHead",
    "MethodLoss",
    "Regulariser",
    "RingLoss",
    "SoftmaxHead",
    "SphereFaceHead",
    "functional",
]


HEADS: dict[str, type[Head]] = {
    head.NAME: head
    for head in (
        SoftmaxHead,
        SphereFaceHead,
        L2SoftmaxHead,
        CosFaceHead,
        ArcFaceHead,
        AdaFaceHead,
        MagFaceHead,
    )
}
"""Every head by its name in the paper's notation (in the order the help line lists them)."""

REGULARISERS: dict[str, type[Regulariser]] = {reg.NAME: reg for reg in (RingLoss, CenterLoss)}
"""Every embedding regulariser by its notation name; a method's terms are built, summed and
stored in this order whatever order its name writes them in."""


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
    """Head plus optional embedding regularisers: everything learnable on the loss side.

    Args:
        head: the classifier head (primary loss).
        ring: optional :class:`RingLoss`.
        center: optional :class:`CenterLoss`.
        name: method name for ``repr`` and logs (e.g. ``"SF+R(0.01)"``).
        regularisers: further :class:`Regulariser` s, after ``ring`` and ``center``.

    Each regulariser is the submodule named by its ``SLOT`` (``ring``, ``center``: their
    ``state_dict`` prefixes), and ``loss.ring`` / ``loss.center`` are None without one.
    """

    def __init__(
        self,
        head: Head,
        ring: RingLoss | None = None,
        center: CenterLoss | None = None,
        name: str = "",
        regularisers: tuple[Regulariser, ...] = (),
    ) -> None:
        super().__init__()
        self.head = head
        regs = [r for r in (ring, center, *regularisers) if r is not None]
        for reg in regs:
            if reg.SLOT in self._modules:
                raise ConfigError(f"two {type(reg).__name__} terms in one method; keep one")
            reg.check_head(head)
            # Registered directly: the slot is also a read-only property of this class.
            self._modules[reg.SLOT] = reg
        self._slots = tuple(reg.SLOT for reg in regs)
        self.name = name

    @property
    def ring(self) -> RingLoss | None:
        """The Ring loss term, or None."""
        return self._modules.get("ring")

    @property
    def center(self) -> CenterLoss | None:
        """The Center loss term, or None."""
        return self._modules.get("center")

    def regularisers(self) -> list[Regulariser]:
        """The regularisers in the order their terms are added."""
        return [self._modules[slot] for slot in self._slots]

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
        for reg in self.regularisers():
            term = reg.penalty(features, labels)
            parts[reg.SLOT] = term.detach()
            loss = loss + term
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
        for reg in self.regularisers():
            groups += reg.param_groups(lr)
        return [g for g in groups if g["params"]]

    @torch.no_grad()
    def after_step(self) -> None:
        """Call once after every optimizer step: SF annealing advances, centers move."""
        self.head.after_step()
        for reg in self.regularisers():
            reg.after_step()

    def skip_step(self) -> None:
        """Call instead of :meth:`after_step` when the optimizer skipped the update (AMP's
        GradScaler found inf/NaN gradients): annealing and centers stay where they were."""
        for reg in self.regularisers():
            reg.discard_step()

    def stats(self) -> dict[str, float]:
        """Loggable scalars: ``R`` with Ring loss, ``lambda_sf`` with SF, ``alpha`` if learned,
        AdaFace's running norm statistics."""
        out = dict(self.head.stats())
        for reg in self.regularisers():
            out.update(reg.stats())
        return out

    def extra_repr(self) -> str:
        return f"name={self.name!r}" if self.name else ""
