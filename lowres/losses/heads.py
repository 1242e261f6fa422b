"""Classifier heads: the primary loss of each method (SM, l2-SM, SF, CosFace, ArcFace, AdaFace,
MagFace).

Every head owns its class weights, computes in float32 even under ``torch.autocast`` (class
weights and margins in bf16/fp16 lose the small angular differences the margins act on), and
returns a :class:`HeadOutput`:

* ``loss``: cross-entropy on the *training* logits (with the head's margin, if any), plus the
  head's :meth:`Head.extra_loss` where it has one (MagFace's magnitude regulariser);
* ``logits``: the *plain* logits without margin, used for accuracy in logs: SM ``W x + b``,
  l2-SM ``alpha W x^ + b``, SF ``||x|| cos theta``, CosFace/ArcFace/AdaFace/MagFace
  ``s cos theta``. Their argmax is the class the head would predict at test time; a margin
  only exists when the label is known.

AdaFace and MagFace are the two heads whose margin follows the feature norm: AdaFace's through
running statistics of the norms (buffers in ``state_dict``), MagFace's through the norm itself
plus a regulariser on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lowres.distributed import all_reduce_sum
from lowres.errors import ConfigError
from lowres.losses import functional as LF

__all__ = [
    "AdaFaceHead",
    "ArcFaceHead",
    "CosFaceHead",
    "Head",
    "HeadOutput",
    "L2SoftmaxHead",
    "MagFaceHead",
    "SoftmaxHead",
    "SphereFaceHead",
]


class HeadOutput(NamedTuple):
    """What a head returns: ``loss`` 0-d float32, ``logits`` (B, C) float32 without margin."""

    loss: Tensor
    logits: Tensor


def _check_sizes(embed_dim: int, num_classes: int) -> None:
    if int(embed_dim) != embed_dim or embed_dim < 1:
        raise ConfigError(f"embed_dim must be a positive integer, got {embed_dim!r}")
    if int(num_classes) != num_classes or num_classes < 2:
        raise ConfigError(
            f"num_classes must be an integer >= 2 for a classifier head, got {num_classes!r}; "
            "train on at least two identities"
        )


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def _number(what: str, value: object, bad: Callable[[str], Exception]) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise bad(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise bad(f"{what} must be a finite number, got {value!r}")
    return number


def _config_error(why: str) -> ConfigError:
    return ConfigError(why)


class Head(nn.Module):
    """Base class: a classifier over (B, D) features with a float32 loss and plain logits.

    Subclasses implement :meth:`train_logits` (what the cross-entropy sees) and
    :meth:`plain_logits` (margin-free, for accuracy); both compute in the features' dtype,
    which :meth:`forward` raises to at least float32.
    """

    NAME: ClassVar[str] = ""
    """The head's name in the paper's notation (parsed case-insensitively)."""
    FORMS: ClassVar[tuple[str, ...]] = ()
    """How the head may be written, for the one-line help of a bad method name."""

    embed_dim: int
    num_classes: int

    @classmethod
    def check_args(cls, args: list, bad: Callable[[str], Exception], positive: Callable) -> list:
        """The arguments written after the head's name, checked and canonical (``bad(why)``
        makes the error to raise; ``positive(what, value)`` checks a number > 0). Default: no
        arguments."""
        if args:
            raise bad(f"{cls.NAME} takes no arguments")
        return args

    @classmethod
    def from_notation(cls, embed_dim: int, num_classes: int, args: Sequence, **options) -> Head:
        """The head for ``NAME(args)``; ``options`` are :func:`lowres.methods.build_loss`'s
        keyword settings (most heads take none)."""
        return cls(embed_dim, num_classes, *args)

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        _check_sizes(embed_dim, num_classes)
        self.embed_dim = int(embed_dim)
        self.num_classes = int(num_classes)

    def train_logits(self, features: Tensor, labels: Tensor) -> Tensor:
        """Logits with the margin applied to each row's label: (B, D), (B,) -> (B, C)."""
        raise NotImplementedError

    def plain_logits(self, features: Tensor) -> Tensor:
        """Logits without margin: (B, D) -> (B, C)."""
        raise NotImplementedError

    def extra_loss(self, features: Tensor, labels: Tensor) -> Tensor | None:
        """A term the head adds to its cross-entropy (MagFace's magnitude regulariser), or None.

        Computed in the same dtype as :meth:`train_logits`; the default None leaves the loss
        the bare cross-entropy, bit for bit.

        Args:
            features: (B, D) embeddings, at least float32.
            labels: (B,) integer class indices.

        Returns:
            0-d tensor, or None.
        """
        return None

    def after_step(self) -> None:
        """Called once after every optimizer step (SphereFace advances its annealing)."""

    def stats(self) -> dict[str, float]:
        """Scalars worth logging (e.g. ``lambda_sf``)."""
        return {}

    def _check_input(self, features: Tensor) -> None:
        if features.dim() != 2 or features.shape[1] != self.embed_dim:
            raise ConfigError(
                f"{type(self).__name__} expects features of shape (B, {self.embed_dim}), got "
                f"{tuple(features.shape)}; match the head's embed_dim to the model's"
            )

    def forward(self, features: Tensor, labels: Tensor) -> HeadOutput:
        """Cross-entropy loss (plus :meth:`extra_loss`) and plain logits, in float32.

        Args:
            features: (B, D) embeddings, any float dtype.
            labels: (B,) integer class indices in 0..C-1.

        Returns:
            :class:`HeadOutput` (loss 0-d, logits (B, C)), float32.
        """
        self._check_input(features)
        LF._check_labels(labels, features.shape[0], self.num_classes)
        with torch.autocast(device_type=features.device.type, enabled=False):
            # float32 at least; a float64 head (tests) stays float64
            x = features.to(torch.promote_types(features.dtype, torch.float32))
            train = self.train_logits(x, labels)
            plain = self.plain_logits(x)
            loss = F.cross_entropy(train, labels.long())
            extra = self.extra_loss(x, labels)
            if extra is not None:
                loss = loss + extra
        return HeadOutput(loss, plain)


class SoftmaxHead(Head):
    """``SM``: a linear classifier with bias and plain softmax cross-entropy.

    Initialised like ``nn.Linear`` (Kaiming-uniform weights, uniform bias).
    """

    NAME, FORMS = "SM", ("SM",)

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__(embed_dim, num_classes)
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        self.bias = nn.Parameter(torch.empty(num_classes))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(embed_dim)
        nn.init.uniform_(self.bias, -bound, bound)

    def train_logits(self, features: Tensor, labels: Tensor) -> Tensor:
        return self.plain_logits(features)

    def plain_logits(self, features: Tensor) -> Tensor:
        return F.linear(features, self.weight.to(features.dtype), self.bias.to(features.dtype))

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_classes={self.num_classes}"


class L2SoftmaxHead(Head):
    """``l2-SM(alpha)``: features normalised and scaled by alpha, then a linear layer with bias.

    Args:
        embed_dim: D.
        num_classes: C.
        alpha: feature scale (the paper used 30, 20, 10).
        learnable: make alpha an ``nn.Parameter`` (Ranjan et al.'s variant); it is then put in
            the undecayed parameter group by :class:`lowres.losses.MethodLoss`.
    """

    NAME, FORMS = "l2-SM", ("l2-SM(alpha)",)

    @classmethod
    def check_args(cls, args: list, bad: Callable[[str], Exception], positive: Callable) -> list:
        if len(args) != 1:
            raise bad("l2-SM needs exactly one alpha, e.g. l2-SM(30)")
        return [positive("l2-SM alpha", args[0])]

    @classmethod
    def from_notation(cls, embed_dim: int, num_classes: int, args: Sequence, **options) -> Head:
        learnable = options.get("l2_learnable", False)
        return cls(embed_dim, num_classes, alpha=args[0], learnable=learnable)

    def __init__(
        self, embed_dim: int, num_classes: int, alpha: float = 30.0, learnable: bool = False
    ) -> None:
        super().__init__(embed_dim, num_classes)
        alpha = _check_positive("l2-SM alpha", alpha)
        self.learnable = bool(learnable)
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        self.bias = nn.Parameter(torch.empty(num_classes))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(embed_dim)
        nn.init.uniform_(self.bias, -bound, bound)
        if self.learnable:
            self.alpha = nn.Parameter(torch.tensor(alpha))
        else:
            self.register_buffer("alpha", torch.tensor(alpha))

    def train_logits(self, features: Tensor, labels: Tensor) -> Tensor:
        return self.plain_logits(features)

    def plain_logits(self, features: Tensor) -> Tensor:
        dtype = features.dtype
        return LF.l2_softmax_logits(
            features, self.weight.to(dtype), self.bias.to(dtype), self.alpha.to(dtype)
        )

    def stats(self) -> dict[str, float]:
        return {"alpha": float(self.alpha.detach())} if self.learnable else {}

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_classes={self.num_classes}, "
            f"alpha={float(self.alpha):g}, learnable={self.learnable}"
        )


class _NormalisedHead(Head):
    """Shared storage for heads with normalised class weights and no bias (Xavier init), and
    the ``(s,m)`` arguments of the margin heads (``MARGIN_LIMIT``: m's open upper bound)."""

    MARGIN_LIMIT: ClassVar[float] = 1.0

    @classmethod
    def check_args(cls, args: list, bad: Callable[[str], Exception], positive: Callable) -> list:
        if not args:
            return args
        if len(args) != 2:
            raise bad(f"{cls.NAME} takes (s,m), e.g. {cls.NAME}(64,0.5)")
        s = positive(f"{cls.NAME} scale s", args[0])
        m = float(args[1])
        limit = cls.MARGIN_LIMIT
        if not 0.0 <= m < limit:
            raise bad(f"{cls.NAME} margin m must be in [0, {limit:.4g}), got {m!r}")
        return [s, m]

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__(embed_dim, num_classes)
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        nn.init.xavier_uniform_(self.weight)


class SphereFaceHead(_NormalisedHead):
    """``SF``: A-Softmax (Liu et al. 2017) with the original annealing.

    Target logit ``||x|| (lambda cos theta_y + psi(theta_y)) / (1 + lambda)`` with
    ``lambda = max(lambda_min, base / (1 + gamma * iteration)^power)``; other logits
    ``||x|| cos theta_j``. ``iteration`` is an int64 buffer (so it is saved in ``state_dict`` and
    checkpoints and resumes exactly) advanced by :meth:`after_step`, once per optimizer step.

    Args:
        embed_dim: D.
        num_classes: C.
        m: integer angular margin (SphereFace: 4).
        base, gamma, power, lambda_min: annealing schedule (original: 1000, 0.12, 1, 5).
    """

    NAME, FORMS = "SF", ("SF", "SF(m)")

    @classmethod
    def check_args(cls, args: list, bad: Callable[[str], Exception], positive: Callable) -> list:
        if not args:
            return args
        if len(args) != 1 or isinstance(args[0], bool) or float(args[0]) != int(args[0]):
            raise bad("SF takes one integer margin, e.g. SF(4)")
        if int(args[0]) < 1:
            raise bad(f"SF margin must be >= 1, got {args[0]}")
        return [int(args[0])]

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        m: int = 4,
        *,
        base: float = 1000.0,
        gamma: float = 0.12,
        power: float = 1.0,
        lambda_min: float = 5.0,
    ) -> None:
        super().__init__(embed_dim, num_classes)
        self.m = LF._check_margin_m(m)
        if lambda_min < 0 or base < 0 or gamma < 0 or power < 0:
            raise ConfigError(
                "SphereFace annealing needs base, gamma, power, lambda_min >= 0, got "
                f"{base}, {gamma}, {power}, {lambda_min}"
            )
        self.base, self.gamma, self.power, self.lambda_min = base, gamma, power, lambda_min
        self.register_buffer("iteration", torch.zeros((), dtype=torch.int64))

    @property
    def lambda_sf(self) -> float:
        """Current blend weight lambda (large early: close to plain softmax)."""
        return LF.sphereface_lambda(
            self.iteration,
            base=self.base,
            gamma=self.gamma,
            power=self.power,
            lambda_min=self.lambda_min,
        )

    def train_logits(self, features: Tensor, labels: Tensor) -> Tensor:
        weight = self.weight.to(features.dtype)
        return LF.sphereface_logits(features, weight, labels, self.m, self.lambda_sf)

    def plain_logits(self, features: Tensor) -> Tensor:
        norms = LF.feature_norms(features).unsqueeze(1)
        return norms * LF.normalised_linear(features, self.weight.to(features.dtype))

    def after_step(self) -> None:
        if self.training:
            self.iteration.add_(1)

    def stats(self) -> dict[str, float]:
        return {"lambda_sf": self.lambda_sf}

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_classes={self.num_classes}, m={self.m}, "
            f"lambda=max({self.lambda_min:g}, {self.base:g}/(1+{self.gamma:g}*it)^{self.power:g})"
        )


class CosFaceHead(_NormalisedHead):
    """``CosFace(s,m)``: large-margin cosine loss, target logit ``s (cos theta_y - m)``.

    Defaults are the CosFace paper's s = 64, m = 0.35.
    """

    NAME, FORMS, MARGIN_LIMIT = "CosFace", ("CosFace", "CosFace(s,m)"), 1.0

    def __init__(self, embed_dim: int, num_classes: int, s: float = 64.0, m: float = 0.35) -> None:
        super().__init__(embed_dim, num_classes)
        self.s = _check_positive("CosFace scale s", s)
        m = float(m)
        if not 0.0 <= m < 1.0:
            raise ConfigError(f"CosFace margin m must be in [0, 1), got {m!r}; e.g. 0.35")
        self.m = m

    def train_logits(self, features: Tensor, labels: Tensor) -> Tensor:
        return LF.cosface_logits(features, self.weight.to(features.dtype), labels, self.s, self.m)

    def plain_logits(self, features: Tensor) -> Tensor:
        return self.s * LF.normalised_linear(features, self.weight.to(features.dtype))

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_classes={self.num_classes}, s={self.s:g}, "
            f"m={self.m:g}"
        )


class ArcFaceHead(_NormalisedHead):
    """``ArcFace(s,m)``: additive angular margin, target logit ``s cos(theta_y + m)``.

    Defaults are InsightFace's s = 64, m = 0.5 rad, ``easy_margin=False`` (past
    ``theta = pi - m`` the target logit falls back to ``cos theta - m sin m``; see
    :func:`lowres.losses.functional.arcface_logits`).
    """

    NAME, FORMS, MARGIN_LIMIT = "ArcFace", ("ArcFace", "ArcFace(s,m)"), math.pi / 2

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        s: float = 64.0,
        m: float = 0.5,
        easy_margin: bool = False,
    ) -> None:
        super().__init__(embed_dim, num_classes)
        self.s = _check_positive("ArcFace scale s", s)
        m = float(m)
        if not 0.0 <= m < math.pi / 2:
            raise ConfigError(
                f"ArcFace margin m must be in [0, pi/2) radians, got {m!r}; e.g. ArcFace(64,0.5)"
            )
        self.m = m
        self.easy_margin = bool(easy_margin)

    def train_logits(self, features: Tensor, labels: Tensor) -> Tensor:
        weight = self.weight.to(features.dtype)
        return LF.arcface_logits(
            features, weight, labels, self.s, self.m, easy_margin=self.easy_margin
        )

    def plain_logits(self, features: Tensor) -> Tensor:
        return self.s * LF.normalised_linear(features, self.weight.to(features.dtype))

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_classes={self.num_classes}, s={self.s:g}, "
            f"m={self.m:g}, easy_margin={self.easy_margin}"
        )


_ADAFACE_FORM = "AdaFace takes (m,h) or (m,h,s), e.g. AdaFace(0.4,0.333)"


def _adaface_settings(
    m: object, h: object, s: object, bad: Callable[[str], Exception]
) -> tuple[float, float, float]:
    m = _number("AdaFace margin m", m, bad)
    if not 0.0 <= m < math.pi / 2:
        raise bad(f"AdaFace margin m must be in [0, pi/2) radians, got {m!r}; {_ADAFACE_FORM}")
    h = _number("AdaFace h", h, bad)
    if h <= 0:
        raise bad(
            f"AdaFace h (how far the margin follows the norm) must be > 0, got {h!r}; "
            f"{_ADAFACE_FORM}"
        )
    s = _number("AdaFace scale s", s, bad)
    if s <= 0:
        raise bad(f"AdaFace scale s must be > 0, got {s!r}; e.g. AdaFace(0.4,0.333,64)")
    return m, h, s


class AdaFaceHead(_NormalisedHead):
    """``AdaFace(m,h)``: quality-adaptive margin (Kim, Jain, Liu, CVPR 2022).

    The feature norm is the image-quality proxy: ``z = clip((||x|| - mu) / (sigma + eps) h,
    -1, 1)`` with ``||x||`` detached and clipped to [0.001, 100], and the target logit is
    ``s (cos(clip(theta_y - m z, eps, pi - eps)) - m - m z)`` (ArcFace's margin for the lowest
    norms, CosFace's for average ones); see :func:`lowres.losses.functional.adaface_logits`.
    ``mu`` and ``sigma`` are running averages of the batches' mean and (unbiased) std of the
    clipped norms, ``mu <- t_alpha mean + (1 - t_alpha) mu``, updated *before* the margin is
    computed, in training mode only, over the global batch under DDP. They are the buffers
    ``batch_mean`` (starts at 20) and ``batch_std`` (starts at 100), saved in ``state_dict``
    and checkpoints. Everything follows the official ``head.py``, except that a batch whose
    statistic is not finite (one image: no unbiased std) leaves the running value as it was.

    Notation: ``AdaFace`` (the defaults), ``AdaFace(m,h)``, ``AdaFace(m,h,s)``.

    Args:
        embed_dim: D.
        num_classes: C.
        m: margin, 0 <= m < pi/2 (paper and official scripts: 0.4).
        h: concentration of the scaler, > 0 (0.333: about 68% of norms give |z| < 0.333).
        s: scale (64).
        t_alpha: momentum of the running statistics in (0, 1] (the official config: 0.01).
    """

    NAME, FORMS = "AdaFace", ("AdaFace", "AdaFace(m,h)", "AdaFace(m,h,s)")
    DEFAULTS: ClassVar[tuple[float, float, float]] = (0.4, 0.333, 64.0)

    @classmethod
    def check_args(cls, args: list, bad: Callable[[str], Exception], positive: Callable) -> list:
        if not args:
            return args
        if len(args) not in (2, 3):
            raise bad(_ADAFACE_FORM)
        m, h, s = _adaface_settings(*(list(args) + list(cls.DEFAULTS[len(args) :])), bad)
        return [m, h, s][: len(args)]

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        m: float = 0.4,
        h: float = 0.333,
        s: float = 64.0,
        *,
        t_alpha: float = 0.01,
    ) -> None:
        super().__init__(embed_dim, num_classes)
        self.m, self.h, self.s = _adaface_settings(m, h, s, _config_error)
        t_alpha = float(t_alpha)
        if not 0.0 < t_alpha <= 1.0:
            raise ConfigError(f"AdaFace t_alpha must be in (0, 1], got {t_alpha!r}; e.g. 0.01")
        self.t_alpha = t_alpha
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))

    @torch.no_grad()
    def _update_statistics(self, features: Tensor) -> None:
        mean, std = LF.adaface_batch_stats(LF.adaface_norms(features), reduce=all_reduce_sum)
        self.batch_mean.copy_(LF.adaface_ema(self.batch_mean, mean, self.t_alpha))
        self.batch_std.copy_(LF.adaface_ema(self.batch_std, std, self.t_alpha))

    def train_logits(self, features: Tensor, labels: Tensor) -> Tensor:
        """The margin logits; in training mode the running statistics first take this batch."""
        if self.training:
            self._update_statistics(features)
        dtype = features.dtype
        return LF.adaface_logits(
            features,
            self.weight.to(dtype),
            labels,
            self.s,
            self.m,
            self.h,
            self.batch_mean.to(dtype),
            self.batch_std.to(dtype),
        )

    def plain_logits(self, features: Tensor) -> Tensor:
        return self.s * LF.normalised_linear(features, self.weight.to(features.dtype))

    def stats(self) -> dict[str, float]:
        return {
            "adaface_norm_mean": float(self.batch_mean),
            "adaface_norm_std": float(self.batch_std),
        }

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_classes={self.num_classes}, m={self.m:g}, "
            f"h={self.h:g}, s={self.s:g}, t_alpha={self.t_alpha:g}"
        )


_MAGFACE_FORM = "MagFace takes (l_a,u_a,l_m,u_m,lambda_g) or (l_a,u_a,l_m,u_m,lambda_g,s)"
_MAGFACE_EXAMPLE = "e.g. MagFace(10,110,0.45,0.8,35)"


def _magface_settings(values: Sequence, bad: Callable[[str], Exception]) -> list[float]:
    names = ("lower magnitude l_a", "upper magnitude u_a", "lower margin l_m", "upper margin u_m")
    l_a, u_a, l_m, u_m, lambda_g, s = (
        _number(f"MagFace {what}", value, bad)
        for what, value in zip((*names, "lambda_g", "scale s"), values, strict=True)
    )
    if l_a <= 0 or u_a <= l_a:
        raise bad(
            f"MagFace needs 0 < l_a < u_a (the range of feature norms the margin spans), got "
            f"l_a={l_a!r}, u_a={u_a!r}; {_MAGFACE_EXAMPLE}"
        )
    if l_m < 0 or u_m < l_m or u_m >= math.pi / 2:
        raise bad(
            f"MagFace needs margins 0 <= l_m <= u_m < pi/2 radians, got l_m={l_m!r}, "
            f"u_m={u_m!r}; {_MAGFACE_EXAMPLE}"
        )
    if lambda_g < 0:
        raise bad(f"MagFace lambda_g must be >= 0, got {lambda_g!r}; {_MAGFACE_EXAMPLE}")
    if s <= 0:
        raise bad(f"MagFace scale s must be > 0, got {s!r}; e.g. MagFace(10,110,0.45,0.8,35,64)")
    return [l_a, u_a, l_m, u_m, lambda_g, s]


class MagFaceHead(_NormalisedHead):
    """``MagFace(l_a,u_a,l_m,u_m,lambda_g)``: magnitude-aware margin (Meng et al., CVPR 2021).

    The magnitude ``a = clip(||x||, l_a, u_a)`` sets the row's margin
    ``m(a) = (u_m - l_m) / (u_a - l_a) (a - l_a) + l_m``; the target logit is
    ``s cos(theta_y + m(a))`` with the official ``easy_margin`` (no margin where
    ``cos theta_y <= 0``), and the loss adds ``lambda_g mean_i (1/a_i + a_i / u_a^2)``
    (:meth:`extra_loss`), which pushes magnitudes towards u_a while the margin pushes them
    down. As in the official code ``a`` keeps its gradient through the margin and the
    regulariser, and both stop acting on a norm the clip holds at l_a or u_a. See
    :func:`lowres.losses.functional.magface_logits`.

    Defaults are the published ones (paper and the official ``run.sh``): a in [10, 110],
    m in [0.45, 0.8] rad, lambda_g 35, s 64, chosen for a 512-d iResNet. **On a small net**
    the range need not fit, and only norms inside [l_a, u_a] feel either term: cpunet-s (128-d,
    no final BatchNorm) starts at norms of about 6, below l_a, where MagFace is ArcFace(64,0.45)
    with easy_margin; margin heads at s = 64 then inflate its norms within a few epochs
    (ArcFace on ORL: a mean of about 250 by epoch 4). Measured with cpunet-s, 250-300 steps
    (ORL, three seeds; synth ``--preset cpu``, one): with the defaults the mean norm ended at
    16-32, the bulk inside the range (a tail above u_a, which nothing pulls back); with a range
    narrowed to the initial norms, ``MagFace(2,30,0.45,0.8,35)``, they rose past u_a (a mean of
    200-330 in epochs 4-7 on ORL) and ended at 36-126. So keep u_a above the norms the net
    reaches (``norm_mean`` and ``norm_std`` in its ``log.csv``) rather than fitting the range
    to the norms at the start, and keep lambda_g above
    :func:`lowres.losses.functional.magface_min_lambda_g` (the paper's condition for a unique
    optimal magnitude; 22.6 for the defaults).

    Notation: ``MagFace`` (the defaults), ``MagFace(l_a,u_a,l_m,u_m,lambda_g)``,
    ``MagFace(l_a,u_a,l_m,u_m,lambda_g,s)``.

    Args:
        embed_dim: D.
        num_classes: C.
        l_a, u_a: magnitude range, 0 < l_a < u_a.
        l_m, u_m: margins (radians) at l_a and u_a, 0 <= l_m <= u_m < pi/2.
        lambda_g: weight of the magnitude regulariser, >= 0.
        s: scale > 0.
        easy_margin: the official ``MagLinear`` default True; False uses ArcFace's
            ``cos theta - m sin(pi - m)`` past ``theta = pi - m``.
    """

    NAME = "MagFace"
    FORMS = ("MagFace", "MagFace(l_a,u_a,l_m,u_m,lambda_g)", "MagFace(l_a,u_a,l_m,u_m,lambda_g,s)")
    DEFAULTS: ClassVar[tuple[float, ...]] = (10.0, 110.0, 0.45, 0.8, 35.0, 64.0)

    @classmethod
    def check_args(cls, args: list, bad: Callable[[str], Exception], positive: Callable) -> list:
        if not args:
            return args
        if len(args) not in (5, 6):
            raise bad(f"{_MAGFACE_FORM}, {_MAGFACE_EXAMPLE}")
        return _magface_settings(list(args) + list(cls.DEFAULTS[len(args) :]), bad)[: len(args)]

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_m: float = 0.45,
        u_m: float = 0.8,
        lambda_g: float = 35.0,
        s: float = 64.0,
        *,
        easy_margin: bool = True,
    ) -> None:
        super().__init__(embed_dim, num_classes)
        settings = _magface_settings((l_a, u_a, l_m, u_m, lambda_g, s), _config_error)
        self.l_a, self.u_a, self.l_m, self.u_m, self.lambda_g, self.s = settings
        self.easy_margin = bool(easy_margin)

    def margins(self, features: Tensor) -> Tensor:
        """Each row's margin m(a) in radians: (B, D) -> (B,)."""
        a = LF.magface_magnitudes(features, self.l_a, self.u_a)
        return LF.magface_margin(a, self.l_a, self.u_a, self.l_m, self.u_m)

    def train_logits(self, features: Tensor, labels: Tensor) -> Tensor:
        weight = self.weight.to(features.dtype)
        margin = self.margins(features)
        return LF.magface_logits(
            features, weight, labels, self.s, margin, easy_margin=self.easy_margin
        )

    def plain_logits(self, features: Tensor) -> Tensor:
        return self.s * LF.normalised_linear(features, self.weight.to(features.dtype))

    def extra_loss(self, features: Tensor, labels: Tensor) -> Tensor:
        """``lambda_g`` times the batch mean of ``g(a) = 1/a + a/u_a^2``."""
        a = LF.magface_magnitudes(features, self.l_a, self.u_a)
        return self.lambda_g * LF.magface_regulariser(a, self.u_a)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_classes={self.num_classes}, "
            f"a=[{self.l_a:g}, {self.u_a:g}], m=[{self.l_m:g}, {self.u_m:g}], "
            f"lambda_g={self.lambda_g:g}, s={self.s:g}, easy_margin={self.easy_margin}"
        )
