"""lowres's dlib path vs raw dlib calls on the same ORL images (descriptors per second).

    python benchmarks/dlib_path.py [--images 80] [--repeats 3] [--size-px 0]

Both start from the same uint8 grey ORL images (``--size-px`` > 0: degraded to that face width
first, by lowres's chain, outside the timing). Raw: per image, RGB copy, HOG detection
(upsample 1), 5 landmarks, ``compute_face_descriptor(img, shape, 0, 0.25)``. lowres: the
``dlib`` reference model through :func:`lowres.embed.embed_many` (uint8 -> float -> adapter ->
uint8 -> the same dlib calls, chips cut by ``get_face_chip``, descriptors in one batched call).
Repeats are interleaved; the median is reported, with lowres's overhead against raw dlib.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from lowres import degrade as D
from lowres import external as E
from lowres.data import load_dataset
from lowres.embed import embed_many


def raw(images: np.ndarray) -> np.ndarray:
    import dlib

    from lowres.reference.dlib import LANDMARKS, WEIGHTS, model_folder

    folder = model_folder()
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(folder / LANDMARKS))
    net = dlib.face_recognition_model_v1(str(folder / WEIGHTS))
    out = []
    for img in images:
        rgb = np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
        boxes = det(rgb, 1)
        box = boxes[0] if boxes else dlib.rectangle(0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1)
        out.append(np.asarray(net.compute_face_descriptor(rgb, sp(rgb, box), 0, 0.25)))
    return np.asarray(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size-px", type=int, default=0)
    args = parser.parse_args()
    images = load_dataset("orl").images[: args.images]
    if args.size_px:
        pixels = D.degrade(images.float() / 255.0, None, D.DEFAULT, size_px=args.size_px)
        images = (pixels * 255.0).round().clamp(0, 255).to(torch.uint8)
    u8 = images[:, 0].numpy()
    spec = E.parse_external(f"dlib(size={images.shape[2]}x{images.shape[3]})")
    model = E.load_spec(spec)
    times: dict[str, list[float]] = {"raw dlib": [], "lowres": []}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        want = raw(u8)
        times["raw dlib"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        got = embed_many(images, {"dlib": (model, spec.adapter)}, batch_size=32)["dlib"]
        times["lowres"].append(time.perf_counter() - t0)
    diff = float(np.abs(got.features.numpy() - want).max())
    med = {k: statistics.median(v) for k, v in times.items()}
    n = images.shape[0]
    print(
        f"{n} ORL images, {'clean' if not args.size_px else f'{args.size_px} px'}, "
        f"{torch.get_num_threads()} torch threads, median of {args.repeats}"
    )
    for name, sec in med.items():
        print(f"  {name:9s} {n / sec:7.1f} descriptors/s")
    print(
        f"  lowres / raw time: {med['lowres'] / med['raw dlib']:.3f} "
        f"(overhead {100 * (med['lowres'] / med['raw dlib'] - 1):+.1f}%), max |diff| {diff:.2g}"
    )


if __name__ == "__main__":
    main()
