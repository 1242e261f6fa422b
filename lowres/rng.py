"""Counter-based randomness: exact 32-bit integer hashing on int64 tensors.

A random number is a pure function of (seed, stream, index), so the same numbers come out on
every device, batch size and shard; degradation noise and the synthetic faces both draw from it.
"""

from __future__ import annotations

import torch

M32 = 0xFFFFFFFF
"""2^32 - 1: the mask of a 32-bit word."""


def mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2^32`` for int64 ``0 <= x < 2^32`` without int64 overflow (``c`` split
    into 16-bit halves).

    >>> int(mul32(torch.tensor([0xFFFFFFFF]), 0xFFFFFFFF)) == (0xFFFFFFFF**2) % 2**32
    True
    """
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & M32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """ "lowbias32" (C. Wellons): a full-avalanche 32-bit integer hash of int64 values in
    ``[0, 2^32)``, elementwise.

    >>> hash32(torch.tensor([0, 1])).tolist()
    [0, 1753845952]
    """
    x = x ^ (x >> 16)
    x = mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = mul32(x, 0x846CA68B)
    return x ^ (x >> 16)
