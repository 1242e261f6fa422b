"""``cpunet``: a small ResNet-style face network that trains in minutes on 2 CPU cores.

A stride-4 stem (3x3 stride-2 conv + BN + ReLU, 2x2 max-pool), four basic residual blocks of
32-64-128-256 channels (the last three with stride 2), then a Linear layer from the flattened
map to the embedding (flattening keeps where a feature is on the face, which global pooling
would throw away). About 1.3 M parameters; about 590 training img/s at 64x64 on 2 cores
(measured before lowres existed, on the project's 2-core machines).

The embedding is the plain output of that Linear layer: no BatchNorm/activation after it. A
final BatchNorm (common in face nets) rescales every dimension to a running unit variance,
which sets the feature norm by itself and would hide the norm behaviour that Ring loss acts on
and that lowres measures.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lowres.errors import ConfigError
from lowres.models.base import FaceModel, register

__all__ = ["CPUNet"]


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(out)) + self.shortcut(x))


class CPUNet(FaceModel):
    """Small CPU face net.

    Args:
        embed_dim: D (default 128).
        input_size: (H, W), default (56, 48) (half the SphereFace crop; at least 8x8).
        in_channels: 1 (grey, default) or 3.
        widths: stage widths, default (32, 64, 128, 256).
    """

    def __init__(
        self,
        embed_dim: int = 128,
        input_size: tuple[int, int] = (56, 48),
        in_channels: int = 1,
        widths: tuple[int, int, int, int] = (32, 64, 128, 256),
    ) -> None:
        super().__init__(embed_dim, input_size, in_channels)
        if min(self.input_size) < 8:
            raise ConfigError(f"cpunet needs an input of at least 8x8, got {self.input_size}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 2, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        blocks, prev = [], widths[0]
        for i, width in enumerate(widths):
            blocks.append(_BasicBlock(prev, width, 1 if i == 0 else 2))
            prev = width
        self.blocks = nn.Sequential(*blocks)
        h, w = (math.ceil(v / 2) // 2 for v in self.input_size)
        for _ in widths[1:]:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        self.fc = nn.Linear(prev * h * w, self.embed_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def embed(self, x: Tensor) -> Tensor:
        """(B, C, H, W) normalised images -> (B, embed_dim) features."""
        self.check_input(x)
        return self.fc(torch.flatten(self.blocks(self.stem(x)), 1))


@register("cpunet")
def cpunet(
    *,
    embed_dim: int = 128,
    input_size: tuple[int, int] = (56, 48),
    in_channels: int = 1,
    widths: tuple[int, int, int, int] = (32, 64, 128, 256),
) -> CPUNet:
    """Small fast CPU net: 56x48 grey -> 128-d by default (``widths``: its four stage widths)."""
    if len(widths) != 4 or any(int(w) != w or w < 1 for w in widths):
        raise ConfigError(f"cpunet widths must be four positive integers, got {list(widths)}")
    return CPUNet(
        embed_dim=embed_dim,
        input_size=input_size,
        in_channels=in_channels,
        widths=tuple(int(w) for w in widths),
    )


@register("cpunet-s")
def cpunet_s(
    *, embed_dim: int = 128, input_size: tuple[int, int] = (56, 48), in_channels: int = 1
) -> CPUNet:
    """``cpunet`` at half the width (stages 16, 32, 64, 128; 0.37M parameters): 3.4x the
    training throughput on one CPU core, so the default recipe reaches its plateau within the
    10-minute default job (the training-length study in the README)."""
    return CPUNet(
        embed_dim=embed_dim,
        input_size=input_size,
        in_channels=in_channels,
        widths=(16, 32, 64, 128),
    )
