"""``lenetpp``: LeNet++ from the Center loss paper (Wen et al. 2016), for 2-d MNIST features.

Three stages of two 5x5 convs (32, 64, 128 channels, padding 2) with PReLU, each followed by
2x2 max-pooling, then a Linear layer to a 2-d embedding (28 -> 14 -> 7 -> 3, 128*3*3 inputs).
Wen et al. apply a PReLU to the 2-d layer in place; lowres keeps the embedding a plain Linear
output so features can occupy all four quadrants and their norm is not clipped, which is what
the Ring loss figure (features on a ring vs spread radially) needs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lowres.errors import ConfigError
from lowres.models.base import FaceModel, register

__all__ = ["LeNetPP"]


class LeNetPP(FaceModel):
    """LeNet++.

    Args:
        embed_dim: D (default 2).
        input_size: (H, W), default (28, 28); at least 8x8.
        in_channels: 1 (default) or 3.
    """

    def __init__(
        self, embed_dim: int = 2, input_size: tuple[int, int] = (28, 28), in_channels: int = 1
    ) -> None:
        super().__init__(embed_dim, input_size, in_channels)
        if min(self.input_size) < 8:
            raise ConfigError(f"lenetpp needs an input of at least 8x8, got {self.input_size}")
        layers: list[nn.Module] = []
        prev = in_channels
        for width in (32, 64, 128):
            layers += [nn.Conv2d(prev, width, 5, 1, 2), nn.PReLU(width)]
            layers += [nn.Conv2d(width, width, 5, 1, 2), nn.PReLU(width), nn.MaxPool2d(2)]
            prev = width
        self.body = nn.Sequential(*layers)
        h, w = (v // 8 for v in self.input_size)
        self.fc = nn.Linear(prev * h * w, self.embed_dim)

    def embed(self, x: Tensor) -> Tensor:
        """(B, C, H, W) normalised images -> (B, embed_dim) features."""
        self.check_input(x)
        return self.fc(torch.flatten(self.body(x), 1))


@register("lenetpp")
def lenetpp(
    *, embed_dim: int = 2, input_size: tuple[int, int] = (28, 28), in_channels: int = 1
) -> LeNetPP:
    """LeNet++: 28x28 grey -> 2-d by default."""
    return LeNetPP(embed_dim=embed_dim, input_size=input_size, in_channels=in_channels)
