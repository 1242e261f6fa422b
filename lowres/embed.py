"""Batched inference: decode once, degrade each batch once, run every model on the same pixels.

::

    uint8 (N, C, H, W) on the device (moved once)
        -> batch float [0, 1] -> degrade(scale, spec) ONCE
        -> for each model: adapt (channels, size, normalisation) -> embed (+ flip TTA)
        -> Embeddings(features float32 (N, D'), norms float32 (N,))

``adapt`` is the single normalisation used by training and evaluation alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lowres import degrade as _degrade
from lowres.errors import ConfigError, DataError

__all__ = ["Embeddings", "InputAdapter", "adapt", "embed_many", "pick_device"]

_CHANNELS = ("grey", "rgb", "bgr")
_FLIPS = ("none", "sum", "concat")
# ITU-R BT.601 luma, the weights of OpenCV's RGB2GRAY and Pillow's "L" conversion.
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class InputAdapter:
    """How one model wants its pixels.

    Attributes:
        channels: ``"grey"`` (1 channel), ``"rgb"`` or ``"bgr"`` (3 channels).
        size: (H, W) model input size; images of another size are resized with antialiased
            bilinear.
        mean, std: normalisation on the 0..255 scale, x = (p - mean) / std (SphereFace:
            127.5, 128).
        flip: test-time augmentation with the horizontal mirror: ``"none"``, ``"sum"``
            (f(x) + f(flip x), D features) or ``"concat"`` ([f(x), f(flip x)], 2D features).
    """

    channels: str
    size: tuple[int, int]
    mean: float = 127.5
    std: float = 128.0
    flip: str = "none"

    def __post_init__(self) -> None:
        if self.channels not in _CHANNELS:
            raise ConfigError(
                f"unknown channels {self.channels!r}; use one of {', '.join(_CHANNELS)}"
            )
        if self.flip not in _FLIPS:
            raise ConfigError(f"unknown flip {self.flip!r}; use one of {', '.join(_FLIPS)}")
        try:
            h, w = (int(v) for v in self.size)
            ok = (h, w) == tuple(self.size) and h >= 1 and w >= 1
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"size must be two positive integers (H, W), got {self.size!r}")
        object.__setattr__(self, "size", (h, w))
        if not float(self.std) > 0:
            raise ConfigError(f"std must be > 0, got {self.std!r}")

    @property
    def in_channels(self) -> int:
        """Channels the model receives: 1 for grey, else 3."""
        return 1 if self.channels == "grey" else 3

    @classmethod
    def for_model(cls, model: nn.Module, *, channels: str | None = None, flip: str = "none"):
        """Adapter from a FaceModel's ``in_channels`` and ``input_size`` (grey or RGB)."""
        if channels is None:
            channels = "grey" if getattr(model, "in_channels", 3) == 1 else "rgb"
        size = getattr(model, "input_size", None)
        if size is None:
            raise ConfigError(f"{type(model).__name__} has no input_size; build InputAdapter(...)")
        return cls(channels=channels, size=tuple(size), flip=flip)


@dataclass(frozen=True)
class Embeddings:
    """Features of N images for one model.

    Attributes:
        features: float32 (N, D'); D' = 2D with ``flip="concat"``.
        norms: float32 (N,), L2 norm of the un-flipped embedding f(x).
        flags: per-image booleans a model reports about its inputs (name -> bool (N,)), e.g.
            ``no_face`` from a detector that found no face; empty for most models.
    """

    features: torch.Tensor
    norms: torch.Tensor
    flags: dict[str, torch.Tensor] = field(default_factory=dict)


def grey(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB float -> (B, 1, H, W) luma (ITU-R BT.601 weights, any scale)."""
    luma = torch.tensor(_LUMA, dtype=images.dtype, device=images.device)
    return torch.einsum("bchw,c->bhw", images, luma).unsqueeze(1)


def adapt(images: torch.Tensor, adapter: InputAdapter) -> torch.Tensor:
    """Turn float [0, 1] RGB/grey images into a model's normalised input.

    Args:
        images: (B, C, H, W) float in [0, 1], C = 1 (grey) or 3 (RGB order).
        adapter: the model's InputAdapter.

    Returns:
        (B, adapter.in_channels, *adapter.size) float, ``(255 * x - mean) / std``.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ConfigError(f"images must be (B, 1 or 3, H, W), got {tuple(images.shape)}")
    if adapter.channels == "grey":
        if images.shape[1] == 3:
            images = grey(images)
    elif images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    elif adapter.channels == "bgr":
        images = images.flip(1)
    if tuple(images.shape[-2:]) != adapter.size:
        images = _degrade.resample(images, adapter.size, "bilinear")
    return (images * 255.0 - adapter.mean) / adapter.std


def pick_device(name: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` -> CUDA if available else CPU; ``"cpu"``; ``"cuda"``/``"cuda:N"``.

    Raises:
        ConfigError: an unknown name, or CUDA asked for but not available.
    """
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available; use cpu or auto")
    return device


def _features(
    model: nn.Module, x: torch.Tensor, flip: str, amp: bool, clean: torch.Tensor | None = None
) -> tuple:
    # One forward over [x, flip(x)]: a single larger batch uses the device better than two.
    batch = torch.cat([x, x.flip(-1)]) if flip != "none" else x
    if amp:
        batch = batch.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
        if clean is None:
            out = model.embed(batch)
        else:
            pair = torch.cat([clean, clean.flip(-1)]) if flip != "none" else clean
            out = model.embed(batch, clean=pair)
    out = out.float()
    if out.ndim != 2 or out.shape[0] != batch.shape[0]:
        raise ConfigError(
            f"{type(model).__name__}.embed returned {tuple(out.shape)} for a batch of "
            f"{batch.shape[0]}; embed must return (B, D)"
        )
    plain = out[: x.shape[0]]
    norms = plain.norm(dim=1)
    if flip == "sum":
        return plain + out[x.shape[0] :], norms
    if flip == "concat":
        return torch.cat([plain, out[x.shape[0] :]], dim=1), norms
    return plain, norms


def _check_embed_args(images: Any, models: Any, batch_size: Any) -> None:
    """:func:`embed_many`'s inputs: a uint8 (N, 1|3, H, W) tensor, a positive batch size and a
    non-empty dict name -> (module with ``.embed``, InputAdapter)."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        got = (
            f"{images.dtype} {tuple(images.shape)}"
            if isinstance(images, torch.Tensor)
            else type(images).__name__
        )
        raise DataError(f"images must be a uint8 (N, C, H, W) tensor decoded once, got {got}")
    if images.shape[1] not in (1, 3):
        raise DataError(f"images must have 1 (grey) or 3 (RGB) channels, got {images.shape[1]}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(models, dict) or not models:
        raise ConfigError("models must be a non-empty dict name -> (module, InputAdapter)")
    for name, entry in models.items():
        if (
            not isinstance(entry, tuple)
            or len(entry) != 2
            or not callable(getattr(entry[0], "embed", None))
            or not isinstance(entry[1], InputAdapter)
        ):
            raise ConfigError(
                f"models[{name!r}] must be (module with .embed, InputAdapter), got {entry!r:.80}"
            )


def embed_many(
    images: torch.Tensor,
    models: dict[str, tuple[nn.Module, InputAdapter]],
    scale: float = 1.0,
    spec: _degrade.DegradeSpec | str = _degrade.DEFAULT,
    *,
    size_px: int | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> dict[str, Embeddings]:
    """Embed N images with every model, degrading each batch once for all of them.

    Models are moved to ``device`` in place and run in eval mode under ``inference_mode``
    (their training flag is restored afterwards); on CUDA with fp16 autocast and
    channels_last. Image i's noise depends only on (seed, i), not on ``batch_size``.

    Two optional model attributes: ``wants_clean = True`` makes the call
    ``model.embed(x, clean=c)`` with ``c`` the same images undegraded, through the same adapter
    (a recognizer that aligns on landmarks found on the clean image); after each call,
    ``model.last_flags`` (name -> (B,) bools) is collected into :attr:`Embeddings.flags`.

    Args:
        images: uint8 (N, C, H, W), C in {1, 3} (RGB order), on any device.
        models: name -> (module with ``.embed``, InputAdapter).
        scale: fraction of the side in (0, 1]; 1 with an extra-free spec gives clean images.
        spec: degradation chain (DegradeSpec or its string form).
        size_px: face width in pixels; when given it replaces ``scale``.
        batch_size: images per batch.
        device: see ``pick_device``.
        seed: degradation noise seed.

    Returns:
        name -> Embeddings with CPU float32 tensors, features (N, D') and norms (N,).

    Raises:
        DataError: images not a uint8 (N, 1|3, H, W) tensor.
        ConfigError: bad scale/size/spec/device/batch size/models.
    """
    _check_embed_args(images, models, batch_size)
    spec = _degrade.parse_degrade(spec)
    if size_px is not None:
        scale = None
    _degrade.target_size(images.shape[2], images.shape[3], scale, size_px)  # fail before work
    device = pick_device(device)
    cuda = device.type == "cuda"

    if images.device != device:
        # Only host memory can be pinned; images already on a GPU are just moved (or kept).
        on_host = images.device.type == "cpu"
        if cuda and on_host:
            images = images.pin_memory().to(device, non_blocking=True)
        else:
            images = images.to(device)
    was_training = {}
    for name, (model, _) in models.items():
        was_training[name] = model.training
        model.to(device).eval()
        if cuda:
            model.to(memory_format=torch.channels_last)

    feats: dict[str, list[torch.Tensor]] = {name: [] for name in models}
    norms: dict[str, list[torch.Tensor]] = {name: [] for name in models}
    flags: dict[str, dict[str, list[torch.Tensor]]] = {name: {} for name in models}
    try:
        with torch.inference_mode():
            for start in range(0, images.shape[0], batch_size):
                # One fused uint8 -> float32 pass, bit-identical to .float().div(255).
                clean = images[start : start + batch_size] / 255.0
                batch = _degrade.degrade(
                    clean, scale, spec, size_px=size_px, seed=seed, index_offset=start
                )
                for name, (model, adapter) in models.items():
                    ref = adapt(clean, adapter) if getattr(model, "wants_clean", False) else None
                    f, n = _features(model, adapt(batch, adapter), adapter.flip, cuda, ref)
                    feats[name].append(f)
                    norms[name].append(n)
                    for key, mask in (getattr(model, "last_flags", None) or {}).items():
                        flags[name].setdefault(key, []).append(
                            torch.as_tensor(mask).bool()[: len(batch)]
                        )
    finally:
        for name, (model, _) in models.items():
            model.train(was_training[name])
    return {
        name: Embeddings(
            features=torch.cat(feats[name]).cpu() if feats[name] else torch.empty(0, 0),
            norms=torch.cat(norms[name]).cpu() if norms[name] else torch.empty(0),
            flags={k: torch.cat(v).cpu() for k, v in flags[name].items()},
        )
        for name in models
    }
