"""Batched degradation chain vs the per-image albumentations/OpenCV path (images/s, one run).

    python benchmarks/degrade.py [--device cpu|cuda] [--batch 256] [--repeats 7] [--threads N]

Both paths start from decoded uint8 images: the batched chain from a (B, 3, 112, 96) tensor on
the device (conversion to float included), the per-image path from a list of HWC uint8 arrays,
which is what albumentations consumes. Repeats are interleaved and the median is reported, so
load from other processes hits both paths alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2
import numpy as np
import torch

from lowres.degrade import degrade, degrade_reference, target_size
from lowres.embed import pick_device

SCALE = 1 / 8
H, W = 112, 96


def _faces(n: int) -> np.ndarray:
    """Smooth random RGB images (B, H, W, 3) uint8 with face-like spatial statistics."""
    rng = np.random.default_rng(0)
    out = np.empty((n, H, W, 3), np.uint8)
    for i in range(n):
        img = cv2.GaussianBlur(rng.random((H, W, 3)).astype(np.float32), (0, 0), 2.0)
        img = (img - img.min()) / (img.max() - img.min())
        out[i] = np.rint(img * 255)
    return out


def _albumentations(spec_name: str) -> A.BasicTransform:
    h, w = target_size(H, W, SCALE)
    if spec_name == "area>bicubic":
        return A.Downscale(
            scale_range=(SCALE, SCALE),
            interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_CUBIC},
            p=1.0,
        )
    return A.Compose(
        [
            A.Resize(h, w, interpolation=cv2.INTER_AREA),
            A.GaussianBlur(blur_limit=(7, 7), sigma_limit=(1.0, 1.0), p=1.0),
            A.GaussNoise(std_range=(0.02, 0.02), p=1.0),
            A.ImageCompression(quality_range=(30, 30), p=1.0),
            A.Resize(H, W, interpolation=cv2.INTER_CUBIC),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    faces = _faces(args.batch)
    per_image = list(faces)
    batch_u8 = torch.from_numpy(faces).permute(0, 3, 1, 2).contiguous().to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    chains = ["area>bicubic", "area+blur1+noise0.02+jpeg30>bicubic"]
    if device.type == "cuda":
        chains.append("area+blur1+noise0.02+kjpeg30>bicubic")
    print(
        f"device={device} threads={torch.get_num_threads()} batch={args.batch}x3x{H}x{W} "
        f"-> {target_size(H, W, SCALE)} and back, median of {args.repeats}"
    )
    print(f"{'chain':40s} {'path':34s} {'img/s':>10s} {'ms/img':>8s} {'speed-up':>9s}")
    for chain in chains:
        transform = _albumentations(chain.replace("kjpeg", "jpeg"))

        def batched(chain=chain):
            out = degrade(batch_u8 / 255.0, SCALE, chain)
            sync()
            return out

        def albu(transform=transform):
            return [transform(image=img)["image"] for img in per_image]

        def reference(chain=chain):
            return [
                degrade_reference(img, SCALE, chain, index=i) for i, img in enumerate(per_image)
            ]

        paths = {
            f"lowres batched ({device.type})": batched,
            "albumentations per image (cpu)": albu,
            "lowres degrade_reference (cpu)": reference,
        }
        times = {name: [] for name in paths}
        for fn in paths.values():
            fn()  # warm-up: matrix caches, CUDA context, libjpeg
        for _ in range(args.repeats):
            for name, fn in paths.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        base = statistics.median(times["albumentations per image (cpu)"])
        for name, ts in times.items():
            t = statistics.median(ts)
            print(
                f"{chain:40s} {name:34s} {args.batch / t:10.0f} {1e3 * t / args.batch:8.3f} "
                f"{base / t:8.1f}x"
            )


if __name__ == "__main__":
    main()
