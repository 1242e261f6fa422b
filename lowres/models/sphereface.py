"""SphereFace-style residual face networks (Liu et al. 2017): sphere4/10/20/36/64.

Four stages of 64-128-256-512 channels. Each stage is a stride-2 3x3 conv + PReLU followed by
residual units ``x + PReLU(conv(PReLU(conv(x))))`` (no batch norm, as in the original), then a
fully connected layer from the flattened 7x6 map (at 112x96) to the 512-d embedding. Units per
stage follow the original: sphere20 (1,2,4,1), sphere36 (2,4,8,2), sphere64 (3,8,16,3),
sphere10 (0,1,2,0), sphere4 (0,0,0,0); depth = 4 convs + 2 per unit (+ FC).

Initialisation follows the original prototxt: stride-2 convs and the FC are Xavier, residual
convs Gaussian with std 0.01 (each unit starts close to identity, which is what lets the
BN-free deep nets train), biases zero, PReLU slopes 0.25.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lowres.models.base import FaceModel, register

__all__ = ["SPHERE_UNITS", "SphereNet"]

SPHERE_UNITS: dict[int, tuple[int, int, int, int]] = {
    4: (0, 0, 0, 0),
    10: (0, 1, 2, 0),
    20: (1, 2, 4, 1),
    36: (2, 4, 8, 2),
    64: (3, 8, 16, 3),
}


class _ResidualUnit(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.act1 = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.act2 = nn.PReLU(channels)
        for conv in (self.conv1, self.conv2):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.act2(self.conv2(self.act1(self.conv1(x))))


class SphereNet(FaceModel):
    """SphereFace residual network.

    Args:
        units: residual units per stage (4 ints).
        embed_dim: D (512 in SphereFace).
        input_size: (H, W), default (112, 96).
        in_channels: 3 (RGB) or 1 (grey).
        channels: stage widths, default (64, 128, 256, 512).
    """

    def __init__(
        self,
        units: tuple[int, int, int, int],
        embed_dim: int = 512,
        input_size: tuple[int, int] = (112, 96),
        in_channels: int = 3,
        channels: tuple[int, int, int, int] = (64, 128, 256, 512),
    ) -> None:
        super().__init__(embed_dim, input_size, in_channels)
        self.units = tuple(units)
        stages: list[nn.Module] = []
        prev = in_channels
        for width, count in zip(channels, self.units, strict=True):
            down = nn.Conv2d(prev, width, 3, 2, 1)
            nn.init.xavier_uniform_(down.weight)
            nn.init.zeros_(down.bias)
            stages += [down, nn.PReLU(width)]
            stages += [_ResidualUnit(width) for _ in range(count)]
            prev = width
        self.body = nn.Sequential(*stages)
        h, w = self.input_size
        for _ in channels:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        self.fc = nn.Linear(prev * h * w, self.embed_dim)
        nn.init.xavier_uniform_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def embed(self, x: Tensor) -> Tensor:
        """(B, C, H, W) normalised images -> (B, embed_dim) features."""
        self.check_input(x)
        return self.fc(torch.flatten(self.body(x), 1))


def _factory(depth: int):
    units = SPHERE_UNITS[depth]

    def make(
        *,
        embed_dim: int = 512,
        input_size: tuple[int, int] = (112, 96),
        in_channels: int = 3,
        channels: tuple[int, int, int, int] = (64, 128, 256, 512),
    ) -> SphereNet:
        return SphereNet(
            units,
            embed_dim=embed_dim,
            input_size=input_size,
            in_channels=in_channels,
            channels=tuple(channels),
        )

    make.__name__ = f"sphere{depth}"
    make.__doc__ = f"SphereFace-{depth}: residual units {units}, 512-d, 112x96 RGB by default."
    return make


for _depth in SPHERE_UNITS:
    register(f"sphere{_depth}")(_factory(_depth))
