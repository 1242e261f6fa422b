"""Overhead of degradation inside batched inference: degrade+embed vs embed alone.

    python benchmarks/embed.py [--device cpu|cuda] [--model cpunet] [--n 1024]
                               [--batch-size 256] [--repeats 3] [--threads N]

Images are pre-decoded uint8 tensors (N, 3, 112, 96). "embed alone" is ``embed_many`` at scale 1
with the extra-free DEFAULT chain (degradation returns its input untouched), so both rows pay
the same uint8->float, adapter and model costs and the difference is the degradation. Uses
``lowres.models.create(--model)`` when lowres.models exists, else a small conv net defined here.
Repeats are interleaved; the median is reported (the target is an overhead under 10%).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from lowres.embed import InputAdapter, embed_many, pick_device

SCALE = 1 / 8


class _SmallNet(nn.Module):
    """Fallback when lowres.models is missing: 4 stride-2 conv stages, 112x96 RGB -> 128-d."""

    in_channels, input_size = 3, (112, 96)

    def __init__(self) -> None:
        super().__init__()
        layers, c = [], 3
        for width in (32, 64, 128, 256):
            layers += [nn.Conv2d(c, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            c = width
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 128))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _model(name: str) -> nn.Module:
    try:
        from lowres.models import create
    except ImportError:
        return _SmallNet()
    return create(name, seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="cpunet")
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    model = _model(args.model)
    adapter = InputAdapter.for_model(model)
    models = {args.model: (model, adapter)}
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.n, 3, 112, 96), generator=g, dtype=torch.uint8)
    images = images.to(device)

    runs = {
        "embed alone (scale 1, no extras)": dict(scale=1.0, spec="bicubic>bicubic"),
        "degrade bicubic>bicubic + embed": dict(scale=SCALE, spec="bicubic>bicubic"),
        "degrade area+blur1+noise0.02+jpeg30": dict(
            scale=SCALE, spec="area+blur1+noise0.02+jpeg30>bicubic"
        ),
    }
    if device.type == "cuda":
        runs["degrade area+blur1+noise0.02+kjpeg30"] = dict(
            scale=SCALE, spec="area+blur1+noise0.02+kjpeg30>bicubic"
        )

    def once(kwargs):
        embed_many(images, models, batch_size=args.batch_size, device=device, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()

    for kwargs in runs.values():
        once(kwargs)  # warm-up
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, kwargs in runs.items():
            start = time.perf_counter()
            once(kwargs)
            times[name].append(time.perf_counter() - start)

    print(
        f"device={device} threads={torch.get_num_threads()} model={args.model} "
        f"({type(model).__name__}, input {adapter.channels} {adapter.size}) n={args.n} "
        f"batch={args.batch_size} scale={SCALE:g}, median of {args.repeats}"
    )
    print(f"{'run':40s} {'img/s':>9s} {'ms/img':>8s} {'overhead':>9s}")
    base = statistics.median(times["embed alone (scale 1, no extras)"])
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:40s} {args.n / t:9.0f} {1e3 * t / args.n:8.3f} {100 * (t / base - 1):8.1f}%")


if __name__ == "__main__":
    main()
