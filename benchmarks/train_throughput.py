"""Training and inference throughput (images/s) of the CPU default net and SphereFace-20.

Training step = forward + SM head loss + backward + SGD (momentum) step; inference = forward
under ``torch.inference_mode``. Each is measured after one warm-up step, in the default (NCHW)
layout and in channels_last, for ``--seconds`` each, and printed side by side. Machines are
shared: check the load average and rerun when the numbers look off.

    python benchmarks/train_throughput.py [--seconds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch

from lowres.methods import build_loss
from lowres.models import create

CASES = [("cpunet", 64), ("sphere20", 8)]  # (model, batch size)


def _rate(step, batch: int, seconds: float, warmup: int = 1) -> float:
    for _ in range(warmup):
        step()
    done, start = 0, time.perf_counter()
    while True:
        step()
        done += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def measure(name: str, batch: int, channels_last: bool, seconds: float) -> tuple[float, float]:
    """(train img/s, inference img/s) for one model and layout."""
    model = create(name, seed=0)
    loss_fn = build_loss("SM", model.embed_dim, 100, seed=0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, model.in_channels, *model.input_size, generator=g)
    x = x.contiguous(memory_format=fmt)
    y = torch.randint(0, 100, (batch,), generator=g)
    params = [{"params": list(model.parameters())}, *loss_fn.param_groups(0.01, 5e-4)]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).loss.backward()
        opt.step()

    def infer_step() -> None:
        with torch.inference_mode():
            model(x)

    model.train()
    train = _rate(train_step, batch, seconds)
    model.eval()
    infer = _rate(infer_step, batch, seconds)
    return train, infer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    header = (
        f"{'model':<9} {'input':<8} {'batch':>5} | {'train NCHW':>10} {'train CL':>9} {'x':>5} | "
        f"{'infer NCHW':>10} {'infer CL':>9} {'x':>5}"
    )
    print(header)
    print("-" * len(header))
    for name, batch in CASES:
        size = create(name).input_size
        t0, i0 = measure(name, batch, False, args.seconds)
        t1, i1 = measure(name, batch, True, args.seconds)
        print(
            f"{name:<9} {f'{size[0]}x{size[1]}':<8} {batch:>5} | {t0:>10.1f} {t1:>9.1f} "
            f"{t1 / t0:>5.2f} | {i0:>10.1f} {i1:>9.1f} {i1 / i0:>5.2f}"
        )
    print("img/s; x = channels_last / default layout")


if __name__ == "__main__":
    main()
