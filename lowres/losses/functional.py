"""Pure tensor ops behind every loss in lowres: no state, no parameters, no in-place updates.

Shapes: ``B`` batch, ``D`` embedding size, ``C`` number of classes. Margins are in radians
(ArcFace) or in cosine units (CosFace). The modules in :mod:`lowres.losses.heads` and
:mod:`lowres.losses.auxiliary` store hyperparameters and call these functions; tests check that the
two agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from lowres.errors import ConfigError

__all__ = [
    "ACOS_CLAMP",
    "ADAFACE_EPS",
    "ADAFACE_NORM_RANGE",
    "adaface_batch_stats",
    "adaface_ema",
    "adaface_logits",
    "adaface_margin_scaler",
    "adaface_norms",
    "apply_center_update",
    "arcface_logits",
    "center_loss",
    "center_update",
    "class_sums",
    "cosface_logits",
    "feature_norms",
    "l2_softmax_logits",
    "magface_logits",
    "magface_magnitudes",
    "magface_margin",
    "magface_min_lambda_g",
    "magface_regulariser",
    "normalised_linear",
    "ring_loss",
    "sphereface_lambda",
    "sphereface_logits",
    "sphereface_psi",
]

#: cos(theta) is clamped to +-(1 - ACOS_CLAMP) before acos: the derivative of acos is infinite
#: at +-1, and rounding alone puts normalised dot products slightly outside [-1, 1].
ACOS_CLAMP = 1e-7

_NORM_EPS = 1e-12

#: AdaFace's ``eps`` in its official ``head.py``: cosines are clamped to +-(1 - eps), the target
#: angle is clipped to [eps, pi - eps], and eps is added to the running std it divides by.
ADAFACE_EPS = 1e-3

#: AdaFace clips feature norms to this range before reading them ("for stability").
ADAFACE_NORM_RANGE = (0.001, 100.0)


def _check_features(features: Tensor, name: str = "features") -> None:
    if features.dim() != 2:
        raise ConfigError(
            f"{name} must be 2-d (B, D), got shape {tuple(features.shape)}; flatten the "
            "embedding before the loss"
        )


def _check_labels(labels: Tensor, batch: int, num_classes: int | None = None) -> None:
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ConfigError(
            f"labels must have shape ({batch},) to match the features, got "
            f"{tuple(labels.shape)}; pass one int64 class index per feature row"
        )
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ConfigError(f"labels must be an integer tensor, got {labels.dtype}; use .long()")
    if num_classes is not None and labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ConfigError(
                f"labels must lie in 0..{num_classes - 1}, got range {lo}..{hi}; relabel the "
                "data contiguously or build the loss with more classes"
            )


def feature_norms(features: Tensor) -> Tensor:
    """L2 norm of each feature row.

    Args:
        features: (B, D) embeddings.

    Returns:
        (B,) norms, same dtype as ``features``.
    """
    return torch.linalg.vector_norm(features, dim=1)


def ring_loss(features: Tensor, radius: Tensor | float, weight: float) -> Tensor:
    """Ring loss of Zheng et al. (CVPR 2018) in the paper's form.

    ``L_R = weight / (2 B) * sum_i (||F_i||_2 - R)^2``, so ``dL/dR = -(weight/B) sum(||F|| - R)``
    and ``dL/dF_i = (weight/B) (1 - R/||F_i||) F_i`` (moves a feature's length, never its
    direction). Several public implementations drop the 1/2 (their weight is lambda/2 in this
    form); lowres keeps the paper's 1/2 so that ``SM+R(0.01)`` means the paper's lambda = 0.01.

    Args:
        features: (B, D) embeddings, B >= 1.
        radius: scalar target norm R (a 0-d tensor for a learned R, or a float).
        weight: lambda >= 0.

    Returns:
        0-d tensor.

    Example:
        >>> ring_loss(torch.tensor([[3.0, 4.0]]), 4.0, weight=2.0)
        tensor(1.)
    """
    _check_features(features)
    if features.shape[0] == 0:
        raise ConfigError("ring_loss got an empty batch; pass at least one feature row")
    norms = feature_norms(features)
    return weight / (2.0 * features.shape[0]) * (norms - radius).pow(2).sum()


def center_loss(features: Tensor, labels: Tensor, centers: Tensor, weight: float) -> Tensor:
    """Center loss of Wen et al. (ECCV 2016): ``weight / (2 B) * sum_i ||x_i - c_{y_i}||^2``.

    The paper writes the sum over the mini-batch; its reference Caffe layer (whose published
    weights 0.003-0.008 lowres adopts) divides by the batch size B, as here, so the weight does
    not depend on the batch size. Gradients flow to ``features`` only when ``centers`` is a
    buffer (the centers move by :func:`center_update`, not by the optimizer).

    Args:
        features: (B, D) embeddings.
        labels: (B,) integer class indices in 0..C-1.
        centers: (C, D) class centers.
        weight: lambda_c >= 0.

    Returns:
        0-d tensor.
    """
    _check_features(features)
    _check_labels(labels, features.shape[0], centers.shape[0])
    if features.shape[0] == 0:
        raise ConfigError("center_loss got an empty batch; pass at least one feature row")
    diff = features - centers.index_select(0, labels.long())
    return weight / (2.0 * features.shape[0]) * diff.pow(2).sum()


def center_update(
    features: Tensor,
    labels: Tensor,
    centers: Tensor,
    alpha: float,
    *,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """New centers after one step of Wen et al.'s rule (returns a new tensor).

    ``delta_c_j = sum_{i: y_i = j} (c_j - x_i) / (1 + n_j)`` and ``c_j <- c_j - alpha delta_c_j``,
    where ``n_j`` counts the batch rows of class j. Classes absent from the batch keep their
    center. Features are detached: centers never receive gradients.

    Args:
        features: (B, D) embeddings of the batch.
        labels: (B,) integer class indices.
        centers: (C, D) current centers.
        alpha: center learning rate in [0, 1].
        reduce: optional sum over processes applied to the (C, D + 1) tensor of
            per-class feature sums and counts (e.g. an all-reduce under DDP), so every rank
            applies the same update from the global batch.

    Returns:
        (C, D) updated centers, dtype of ``centers``.
    """
    _check_features(features)
    _check_labels(labels, features.shape[0], centers.shape[0])
    stats = class_sums(features, labels, centers.shape[0]).to(centers.dtype)
    if reduce is not None:
        stats = reduce(stats)
    return apply_center_update(centers, stats, alpha)


def class_sums(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Per-class feature sums with the count appended: (C, D + 1), detached.

    Args:
        features: (B, D) embeddings.
        labels: (B,) integer class indices.
        num_classes: C.

    Returns:
        (C, D + 1) tensor; column D holds n_j.
    """
    x = features.detach()
    ones = torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)
    out = torch.zeros(num_classes, x.shape[1] + 1, dtype=x.dtype, device=x.device)
    return out.index_add_(0, labels.long(), torch.cat([x, ones], dim=1))


def apply_center_update(centers: Tensor, stats: Tensor, alpha: float) -> Tensor:
    """Wen et al.'s update from accumulated :func:`class_sums` statistics (new tensor).

    Args:
        centers: (C, D) current centers.
        stats: (C, D + 1) per-class feature sums and counts.
        alpha: center learning rate.

    Returns:
        (C, D) updated centers.
    """
    sums, counts = stats[:, :-1], stats[:, -1:]
    delta = (counts * centers - sums) / (1.0 + counts)
    return centers - alpha * delta


def normalised_linear(features: Tensor, weight: Tensor) -> Tensor:
    """Cosine between every feature and every class weight: ``F^ @ W^T`` with rows normalised.

    Args:
        features: (B, D).
        weight: (C, D) class weights.

    Returns:
        (B, C) cosines in [-1, 1] (up to rounding).
    """
    x = F.normalize(features, dim=1, eps=_NORM_EPS)
    return x @ F.normalize(weight, dim=1, eps=_NORM_EPS).t()


def l2_softmax_logits(
    features: Tensor, weight: Tensor, bias: Tensor | None, alpha: Tensor | float
) -> Tensor:
    """L2-constrained softmax logits (Ranjan et al. 2017): ``alpha * F^ @ W^T + b``.

    The feature is normalised and scaled by ``alpha``; the classifier after it is an ordinary
    linear layer (weights not normalised, with bias), as in the L2-softmax paper.

    Args:
        features: (B, D).
        weight: (C, D) classifier weights.
        bias: (C,) or None.
        alpha: scale, > 0.

    Returns:
        (B, C) logits.
    """
    return F.linear(alpha * F.normalize(features, dim=1, eps=_NORM_EPS), weight, bias)


def _chebyshev_cos_multiple(cos_theta: Tensor, m: int) -> Tensor:
    # cos(m theta) = T_m(cos theta): a polynomial, so its gradient is finite everywhere,
    # unlike cos(m * acos(x)) whose derivative blows up at x = +-1.
    t_prev, t_cur = torch.ones_like(cos_theta), cos_theta
    if m == 0:
        return t_prev
    for _ in range(m - 1):
        t_prev, t_cur = t_cur, 2.0 * cos_theta * t_cur - t_prev
    return t_cur


def _check_margin_m(m: int) -> int:
    if isinstance(m, bool) or int(m) != m or m < 1:
        raise ConfigError(f"SphereFace margin m must be an integer >= 1, got {m!r}; e.g. SF(4)")
    return int(m)


def sphereface_psi(cos_theta: Tensor, m: int) -> Tensor:
    """SphereFace's monotone angular margin ``psi(theta) = (-1)^k cos(m theta) - 2k``.

    ``k = floor(m theta / pi)``, so psi equals ``cos(m theta)`` on ``[0, pi/m]`` and decreases
    monotonically from 1 to ``1 - 2m`` on ``[0, pi]``. ``cos(m theta)`` is the Chebyshev
    polynomial ``T_m(cos theta)`` (gradient-friendly, exact for integer m); ``k`` is piecewise
    constant and computed without gradient from ``acos`` of the input clamped to
    ``+-(1 - ACOS_CLAMP)``.

    Args:
        cos_theta: any-shape tensor of cosines in [-1, 1].
        m: integer margin >= 1 (SphereFace uses 4).

    Returns:
        Tensor shaped like ``cos_theta``.
    """
    m = _check_margin_m(m)
    cos_m_theta = _chebyshev_cos_multiple(cos_theta, m)
    with torch.no_grad():
        theta = torch.acos(cos_theta.clamp(-1.0 + ACOS_CLAMP, 1.0 - ACOS_CLAMP))
        k = torch.floor(m * theta / math.pi).clamp(0, m - 1)
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
    return sign * cos_m_theta - 2.0 * k


def sphereface_lambda(
    iteration: int | Tensor,
    *,
    base: float = 1000.0,
    gamma: float = 0.12,
    power: float = 1.0,
    lambda_min: float = 5.0,
) -> float:
    """SphereFace's annealing weight ``max(lambda_min, base * (1 + gamma * iter)^-power)``.

    Defaults are the original A-Softmax settings: ``max(5, 1000 / (1 + 0.12 iter))``.

    Args:
        iteration: number of optimizer steps taken so far (>= 0).

    Returns:
        lambda as a Python float.
    """
    it = int(iteration)
    if it < 0:
        raise ConfigError(f"SphereFace iteration must be >= 0, got {it}; reset the head's state")
    return max(lambda_min, base * (1.0 + gamma * it) ** (-power))


def sphereface_logits(
    features: Tensor, weight: Tensor, labels: Tensor, m: int, lam: float
) -> Tensor:
    """A-Softmax training logits (Liu et al. 2017), annealed as in the original code.

    Non-target logits are ``||x|| cos(theta_j)``; the target logit is
    ``||x|| (lam cos(theta_y) + psi(theta_y)) / (1 + lam)``. Class weights are normalised and
    there is no bias.

    Args:
        features: (B, D).
        weight: (C, D) class weights (normalised inside).
        labels: (B,) class indices.
        m: integer margin.
        lam: blend weight lambda_sf >= 0 (large: plain softmax, 0: full margin).

    Returns:
        (B, C) logits.
    """
    _check_features(features)
    _check_labels(labels, features.shape[0], weight.shape[0])
    cos = normalised_linear(features, weight)
    norms = feature_norms(features).unsqueeze(1)
    cos_y = cos.gather(1, labels.long().unsqueeze(1))
    target = (lam * cos_y + sphereface_psi(cos_y, m)) / (1.0 + lam)
    onehot = F.one_hot(labels.long(), weight.shape[0]).to(cos.dtype)
    return norms * (cos + onehot * (target - cos_y))


def cosface_logits(features: Tensor, weight: Tensor, labels: Tensor, s: float, m: float) -> Tensor:
    """CosFace / LMCL logits (Wang et al. 2018): ``s (cos theta_j - m [j = y])``.

    Args:
        features: (B, D).
        weight: (C, D) class weights (normalised inside).
        labels: (B,) class indices.
        s: scale > 0.
        m: additive cosine margin >= 0.

    Returns:
        (B, C) logits.
    """
    _check_features(features)
    _check_labels(labels, features.shape[0], weight.shape[0])
    cos = normalised_linear(features, weight)
    onehot = F.one_hot(labels.long(), weight.shape[0]).to(cos.dtype)
    return s * (cos - m * onehot)


def arcface_logits(
    features: Tensor,
    weight: Tensor,
    labels: Tensor,
    s: float,
    m: float,
    *,
    easy_margin: bool = False,
) -> Tensor:
    """ArcFace logits (Deng et al. 2019): target ``s cos(theta_y + m)``, others ``s cos theta_j``.

    ``cos(theta + m)`` is only monotone for ``theta + m <= pi``. With ``easy_margin`` the margin
    applies only where ``cos theta > 0``; otherwise (the InsightFace default) where
    ``theta > pi - m`` the target logit becomes ``cos theta - m sin m`` instead, which keeps it
    decreasing in theta.

    Args:
        features: (B, D).
        weight: (C, D) class weights (normalised inside).
        labels: (B,) class indices.
        s: scale > 0.
        m: additive angular margin in radians, 0 <= m < pi/2.
        easy_margin: see above.

    Returns:
        (B, C) logits.
    """
    _check_features(features)
    _check_labels(labels, features.shape[0], weight.shape[0])
    cos = normalised_linear(features, weight)
    cos_y = cos.gather(1, labels.long().unsqueeze(1))
    # clamp keeps sqrt's gradient finite when cos_y rounds to +-1.
    sin_y = torch.sqrt((1.0 - cos_y.pow(2)).clamp_min(ACOS_CLAMP))
    phi = cos_y * math.cos(m) - sin_y * math.sin(m)
    if easy_margin:
        phi = torch.where(cos_y > 0, phi, cos_y)
    else:
        th, mm = math.cos(math.pi - m), math.sin(math.pi - m) * m
        phi = torch.where(cos_y > th, phi, cos_y - mm)
    onehot = F.one_hot(labels.long(), weight.shape[0]).to(cos.dtype)
    return s * (cos + onehot * (phi - cos_y))


def _target_logits(cos: Tensor, labels: Tensor, target: Tensor) -> Tensor:
    # (B, C) cosines with each row's label column replaced by target (B, 1); exact, no rounding
    # through cos + onehot * (target - cos_y).
    onehot = F.one_hot(labels.long(), cos.shape[1]).bool()
    return torch.where(onehot, target, cos)


def adaface_norms(features: Tensor) -> Tensor:
    """The feature norms AdaFace's margin reads: ``||x||`` detached, clipped to
    :data:`ADAFACE_NORM_RANGE` (the official head detaches them: no gradient reaches a
    feature's length through its margin).

    Args:
        features: (B, D) embeddings.

    Returns:
        (B,) norms without gradient.
    """
    return feature_norms(features).detach().clamp(*ADAFACE_NORM_RANGE)


def adaface_batch_stats(
    norms: Tensor, *, reduce: Callable[[Tensor], Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """Mean and unbiased standard deviation of a batch of norms (``torch.std``'s default, as in
    AdaFace's official head), in two exact passes.

    Args:
        norms: (B,) norms (:func:`adaface_norms`).
        reduce: optional sum over processes (e.g. an all-reduce under DDP) applied to each
            pass's sums, so every rank gets the statistics of the global batch.

    Returns:
        ``(mean, std)``, 0-d tensors without gradient; std is NaN for a batch of one (n - 1 = 0).
    """
    with torch.no_grad():
        first = torch.stack([norms.sum(), norms.new_tensor(float(norms.numel()))])
        if reduce is not None:
            first = reduce(first)
        count = first[1]
        mean = first[0] / count
        squares = (norms - mean).pow(2).sum()
        if reduce is not None:
            squares = reduce(squares)
        return mean, (squares / (count - 1.0)).sqrt()


def adaface_ema(running: Tensor, batch: Tensor, t_alpha: float) -> Tensor:
    """AdaFace's running statistic: ``batch * t_alpha + (1 - t_alpha) * running``.

    Where ``batch`` is not finite (a batch of one has no unbiased std) the running value is
    kept; the official head would store the NaN and poison every later margin.

    Args:
        running: the stored statistic.
        batch: this batch's statistic (:func:`adaface_batch_stats`).
        t_alpha: momentum in (0, 1] (AdaFace: 0.01).

    Returns:
        The new running value (a new tensor, dtype of ``running``).
    """
    batch = batch.to(running.dtype)
    new = batch * t_alpha + (1 - t_alpha) * running
    return torch.where(torch.isfinite(batch), new, running)


def adaface_margin_scaler(norms: Tensor, mean: Tensor, std: Tensor, h: float) -> Tensor:
    """AdaFace's image-quality proxy ``clip((||x|| - mean) / (std + eps) * h, -1, 1)``.

    With h = 0.333 about 68% of a batch lies in [-0.333, 0.333]; norms more than 3 std from
    the mean saturate at +-1.

    Args:
        norms: (B,) clipped, detached norms (:func:`adaface_norms`).
        mean: running mean of the norms.
        std: running std of the norms.
        h: concentration, > 0.

    Returns:
        (B,) scaler in [-1, 1].
    """
    return ((norms - mean) / (std + ADAFACE_EPS) * h).clamp(-1.0, 1.0)


def adaface_logits(
    features: Tensor,
    weight: Tensor,
    labels: Tensor,
    s: float,
    m: float,
    h: float,
    mean: Tensor,
    std: Tensor,
) -> Tensor:
    """AdaFace logits (Kim et al., CVPR 2022), transcribed from the official ``head.py``.

    Cosines are clamped to ``+-(1 - eps)`` (:data:`ADAFACE_EPS`) for every class. With the
    scaler ``z = `` :func:`adaface_margin_scaler` of the row's norm, the target logit is
    ``s (cos(clip(theta_y - m z, eps, pi - eps)) - (m + m z))``: an angular margin
    ``g_angle = -m z`` and an additive one ``g_add = m + m z``. A row of low norm (z = -1, low
    image quality) gets ArcFace's margin ``cos(theta + m)``, an average one (z = 0) CosFace's
    ``cos theta - m``, a high-norm one (z = 1) ``cos(theta - m) - 2m``. Other logits are
    ``s cos theta_j``;
    the official code also sends them through ``cos(clip(acos(c), eps, pi - eps))``, which is
    ``c`` itself because the clamp keeps acos(c) inside [eps, pi - eps].

    Args:
        features: (B, D).
        weight: (C, D) class weights (normalised inside).
        labels: (B,) class indices.
        s: scale > 0.
        m: margin >= 0 (radians and cosine units at once).
        h: concentration of the scaler, > 0.
        mean, std: the running norm statistics the scaler reads (already updated with this
            batch in training, as the official head does).

    Returns:
        (B, C) logits.
    """
    _check_features(features)
    _check_labels(labels, features.shape[0], weight.shape[0])
    eps = ADAFACE_EPS
    cos = normalised_linear(features, weight).clamp(-1.0 + eps, 1.0 - eps)
    scaler = adaface_margin_scaler(adaface_norms(features), mean, std, h).unsqueeze(1)
    theta_y = torch.acos(cos.gather(1, labels.long().unsqueeze(1)))
    g_angle = m * scaler * -1.0
    g_add = m + m * scaler
    target = torch.cos((theta_y + g_angle).clamp(eps, math.pi - eps)) - g_add
    return s * _target_logits(cos, labels, target)


def magface_magnitudes(features: Tensor, l_a: float, u_a: float) -> Tensor:
    """MagFace's magnitude ``a = clip(||x||, l_a, u_a)``, with gradient (zero outside the range,
    where the clip holds it: both the margin and the regulariser then stop acting on it).

    Args:
        features: (B, D).
        l_a, u_a: the magnitude range, 0 < l_a < u_a (MagFace: 10, 110).

    Returns:
        (B,) magnitudes.
    """
    return feature_norms(features).clamp(l_a, u_a)


def magface_margin(a: Tensor, l_a: float, u_a: float, l_m: float, u_m: float) -> Tensor:
    """MagFace's magnitude-aware margin ``m(a) = (u_m - l_m) / (u_a - l_a) (a - l_a) + l_m``.

    Linear from ``l_m`` at ``a = l_a`` to ``u_m`` at ``a = u_a``; ``a`` comes clipped from
    :func:`magface_magnitudes`, so the margin stays in [l_m, u_m].

    Args:
        a: (B,) magnitudes.
        l_a, u_a: the magnitude range.
        l_m, u_m: the margins at its ends (MagFace: 0.45, 0.8 rad).

    Returns:
        (B,) margins in radians.
    """
    return (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m


def magface_regulariser(a: Tensor, u_a: float) -> Tensor:
    """MagFace's magnitude regulariser ``g(a) = 1/a + a/u_a^2``, averaged over the batch (as the
    official ``MagLoss``; the loss adds it times lambda_g). Minimal at ``a = u_a``, so it
    pushes magnitudes up inside [l_a, u_a].

    Args:
        a: (B,) magnitudes (:func:`magface_magnitudes`).
        u_a: upper end of the magnitude range.

    Returns:
        0-d tensor.
    """
    return torch.mean(1.0 / (u_a**2) * a + 1.0 / a)


def magface_min_lambda_g(s: float, l_a: float, u_a: float, l_m: float, u_m: float) -> float:
    """The smallest lambda_g for which MagFace's theory holds (a unique optimal magnitude per
    class): ``s k u_a^2 l_a^2 / (u_a^2 - l_a^2)`` with ``k = (u_m - l_m) / (u_a - l_a)``.

    The official trainer only prints it (red when lambda_g is below). With the published
    settings (s 64, a in [10, 110], m in [0.45, 0.8]) it is 22.6, below their lambda_g 35.

    Returns:
        the bound as a float.
    """
    k = (u_m - l_m) / (u_a - l_a)
    return s * k * u_a**2 * l_a**2 / (u_a**2 - l_a**2)


def magface_logits(
    features: Tensor,
    weight: Tensor,
    labels: Tensor,
    s: float,
    margin: Tensor,
    *,
    easy_margin: bool = True,
) -> Tensor:
    """MagFace logits (Meng et al., CVPR 2021): target ``s cos(theta_y + m(a_i))``, others
    ``s cos theta_j``, transcribed from the official ``MagLinear``.

    The margin is per row (:func:`magface_margin`) and keeps its gradient to the magnitude.
    ``easy_margin`` (the official ``MagLinear``'s default, which its builder never changes)
    applies the margin only where ``cos theta_y > 0``; without it, past ``theta = pi - m`` the
    target becomes ``cos theta - m sin(pi - m)`` as in ArcFace. Cosines are clamped to [-1, 1];
    ``sin theta_y`` is ``sqrt(max(1 - cos^2, ACOS_CLAMP))`` (the official code has no floor and
    gets an infinite gradient at cos = +-1).

    Args:
        features: (B, D).
        weight: (C, D) class weights (normalised inside).
        labels: (B,) class indices.
        s: scale > 0.
        margin: (B,) per-row angular margins in radians.
        easy_margin: see above.

    Returns:
        (B, C) logits.
    """
    _check_features(features)
    _check_labels(labels, features.shape[0], weight.shape[0])
    cos = normalised_linear(features, weight).clamp(-1.0, 1.0)
    cos_y = cos.gather(1, labels.long().unsqueeze(1))
    sin_y = torch.sqrt((1.0 - cos_y.pow(2)).clamp_min(ACOS_CLAMP))
    m = margin.to(cos.dtype).unsqueeze(1)
    phi = cos_y * torch.cos(m) - sin_y * torch.sin(m)
    if easy_margin:
        phi = torch.where(cos_y > 0, phi, cos_y)
    else:
        phi = torch.where(cos_y > torch.cos(math.pi - m), phi, cos_y - torch.sin(math.pi - m) * m)
    return s * _target_logits(cos, labels, phi)
