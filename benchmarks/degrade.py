"""Batched degradation chain vs per-image albumentations / bare OpenCV (images/s, one run).

    python benchmarks/degrade.py [--device cpu|cuda] [--batch 256] [--repeats 7] [--threads N]
        [--channels 3] [--size 112x96]

Both paths start from decoded uint8 images: the batched chain from a (B, C, H, W) tensor on
the device (conversion to float included), the per-image path from a list of HWC uint8 arrays,
which is what albumentations consumes. The bare OpenCV rows call cv2 directly on each image
(no albumentations overhead), once ending in uint8 and once converted to float32 in [0, 1], the
form the batched chain returns and a network consumes. Speed-ups are against albumentations
(the path a training pipeline runs per image). Repeats are interleaved and the median is
reported, so load from other processes hits all paths alike.
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


def _faces(n: int, channels: int) -> np.ndarray:
    """Smooth random images (B, H, W, C) uint8 with face-like spatial statistics."""
    rng = np.random.default_rng(0)
    out = np.empty((n, H, W, channels), np.uint8)
    for i in range(n):
        img = rng.random((H, W, channels)).astype(np.float32)
        img = cv2.GaussianBlur(img, (0, 0), 2.0).reshape(H, W, channels)
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


def _opencv(chain: str, channels: int):
    """The same chain as bare OpenCV calls on one uint8 image (no albumentations around them);
    the noise is drawn with numpy, the JPEG step is cv2.imencode/imdecode."""
    h, w = target_size(H, W, SCALE)
    rng = np.random.default_rng(0)
    shape = (H, W) if channels == 1 else (H, W, channels)

    def run(img: np.ndarray) -> np.ndarray:
        x = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        if chain != "area>bicubic":
            x = cv2.GaussianBlur(x, (7, 7), 1.0)
            x = np.clip(x + rng.normal(0.0, 0.02 * 255, x.shape), 0, 255).astype(np.uint8)
            _, buf = cv2.imencode(".jpg", x, [cv2.IMWRITE_JPEG_QUALITY, 30])
            x = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        return cv2.resize(x, (W, H), interpolation=cv2.INTER_CUBIC).reshape(shape)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--size", default="112x96", help="HxW of the faces")
    args = parser.parse_args()
    # OpenCV's own thread pool (2 threads here) keeps spinning after each call and takes the
    # cores from torch's threads in the batched path that runs next: measured on this machine,
    # 256 grey 112x92 faces area>bicubic 30,513 img/s batched with it, 83,860 without; the
    # per-image path works on one small image at a time and gets faster too (61k -> 67k).
    cv2.setNumThreads(1)
    global H, W
    H, W = (int(v) for v in args.size.lower().split("x"))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    faces = _faces(args.batch, args.channels)
    per_image = list(faces)
    batch_u8 = torch.from_numpy(faces).permute(0, 3, 1, 2).contiguous().to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    chains = ["area>bicubic", "area+blur1+noise0.02+jpeg30>bicubic"]
    if device.type == "cuda":
        chains.append("area+blur1+noise0.02+kjpeg30>bicubic")
    print(
        f"device={device} threads={torch.get_num_threads()} "
        f"batch={args.batch}x{args.channels}x{H}x{W} "
        f"-> {target_size(H, W, SCALE)} and back, median of {args.repeats}"
    )
    print(f"{'chain':40s} {'path':34s} {'img/s':>10s} {'ms/img':>8s} {'speed-up':>9s}")
    for chain in chains:
        transform = _albumentations(chain.replace("kjpeg", "jpeg"))

        def batched(chain=chain):
            out = degrade(batch_u8, SCALE, chain)  # uint8 in: converted chunk by chunk
            sync()
            return out

        def albu(transform=transform):
            return [transform(image=img)["image"] for img in per_image]

        bare = _opencv(chain.replace("kjpeg", "jpeg"), args.channels)

        def opencv(bare=bare):
            return [bare(img) for img in per_image]

        def opencv_float(bare=bare):
            return [bare(img).astype(np.float32) / 255.0 for img in per_image]

        def reference(chain=chain):
            return [
                degrade_reference(img, SCALE, chain, index=i) for i, img in enumerate(per_image)
            ]

        paths = {
            f"lowres batched ({device.type})": batched,
            "albumentations per image (cpu)": albu,
            "bare cv2 per image, uint8 (cpu)": opencv,
            "bare cv2 per image, to float (cpu)": opencv_float,
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
