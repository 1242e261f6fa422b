"""FaceModel base class and the model registry (kept apart from ``__init__`` to avoid cycles)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor, nn

from lowres.errors import ConfigError

__all__ = ["FaceModel", "create", "list_models", "register"]


def _check_size(input_size) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in input_size)
        ok = (h, w) == tuple(input_size) and h >= 1 and w >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"input_size must be two positive integers (H, W), got {input_size!r}")
    return h, w


class FaceModel(nn.Module):
    """A face embedding network: normalised images (B, C, H, W) -> features (B, D).

    Inputs follow the SphereFace convention ``(p - 127.5) / 128`` on 0..255 pixels. ``forward``
    is ``embed``: the features that the loss head sees and that verification compares.

    Attributes:
        embed_dim: D.
        input_size: (H, W) the network is built for (its FC layer fixes it).
        in_channels: C (1 grey, 3 RGB).
    """

    embed_dim: int
    input_size: tuple[int, int]
    in_channels: int

    def __init__(self, embed_dim: int, input_size, in_channels: int) -> None:
        super().__init__()
        if isinstance(embed_dim, bool) or int(embed_dim) != embed_dim or embed_dim < 1:
            raise ConfigError(f"embed_dim must be a positive integer, got {embed_dim!r}")
        if in_channels not in (1, 3):
            raise ConfigError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels!r}")
        self.embed_dim = int(embed_dim)
        self.input_size = _check_size(input_size)
        self.in_channels = int(in_channels)

    def check_input(self, x: Tensor) -> None:
        """Raise ConfigError unless ``x`` is (B, in_channels, *input_size)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != self.input_size:
            raise ConfigError(
                f"{type(self).__name__} expects (B, {self.in_channels}, {self.input_size[0]}, "
                f"{self.input_size[1]}) input, got {tuple(x.shape)}; resize the images or "
                "create the model with matching input_size/in_channels"
            )

    def embed(self, x: Tensor) -> Tensor:
        """Features of a batch: (B, C, H, W) float -> (B, D)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.embed(x)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, input_size={self.input_size}, "
            f"in_channels={self.in_channels}"
        )


_REGISTRY: dict[str, Callable[..., FaceModel]] = {}


def register(name: str) -> Callable[[Callable[..., FaceModel]], Callable[..., FaceModel]]:
    """Decorator: register a factory ``f(**kwargs) -> FaceModel`` under ``name``."""

    def wrap(factory: Callable[..., FaceModel]) -> Callable[..., FaceModel]:
        if name in _REGISTRY:
            raise ConfigError(f"model name {name!r} is registered twice; pick another name")
        _REGISTRY[name] = factory
        return factory

    return wrap


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def create(name: str, *, seed: int | None = None, **kwargs) -> FaceModel:
    """Build a registered model.

    Args:
        name: e.g. ``"cpunet"``, ``"sphere20"``, ``"lenetpp"``.
        seed: if given, initial weights come from this seed without touching the global RNG;
            otherwise from the global RNG.
        **kwargs: overrides the factory accepts (all take ``in_channels``, ``input_size``,
            ``embed_dim``).

    Raises:
        ConfigError: unknown name (lists the valid ones) or an argument the model does not take.
    """
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    params = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ConfigError(
            f"model {name!r} takes no argument(s) {', '.join(unknown)}; it takes "
            f"{', '.join(params)}"
        )
    if seed is None:
        return factory(**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(**kwargs)
