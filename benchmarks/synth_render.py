"""Render 10,000 synthetic faces at 112x96 and print images/s and the total time.

Acceptance (issue 3): under 30 s on the 2-core CPU. The load average is printed beside the
numbers because the dev machines are shared: compare runs only at similar load.

    python benchmarks/synth_render.py [--n 10000] [--channels 1 3] [--size 112 96]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from lowres.data.synthetic import render_faces


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--images-per-identity", type=int, default=8)
    ap.add_argument("--size", type=int, nargs=2, default=[112, 96])
    ap.add_argument("--channels", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    m = args.images_per_identity
    ids = torch.arange(args.n, dtype=torch.int64) // m
    samples = torch.arange(args.n, dtype=torch.int64) % m
    render_faces(ids[:64], samples[:64], size=tuple(args.size))  # warm-up
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    for c in args.channels:
        t0, c0 = time.perf_counter(), time.process_time()
        out = render_faces(ids, samples, size=tuple(args.size), channels=c)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(
            f"{args.n} faces {c}x{args.size[0]}x{args.size[1]}: {dt:.2f} s total, "
            f"{args.n / dt:.0f} images/s, {cpu:.1f} CPU-s ({out.numel() / 2**20:.0f} MiB uint8)"
        )


if __name__ == "__main__":
    main()
