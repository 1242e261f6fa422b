"""Raw-pixel baseline on the synth test split: can cosine similarity of pixels verify faces?

Held-out identities, all-vs-all pairs (i < j), clean gallery image i vs degraded probe image j:
S = G_clean @ P_deg^T. Each image is mean-centred (its own mean pixel subtracted) and
L2-normalised before the dot product. Degradation: area downsample to round(side * s), bicubic
upsample back. TAR@FAR=1e-2 is exact: the threshold is the smallest score that accepts at most
1% of impostor pairs (accept iff score >= threshold). AUC from sklearn.

    python benchmarks/synth_pixels.py [--preset cpu] [--size 112 96] [--knob difficulty=1.5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from lowres.data.synthetic import DEFAULT_KNOBS, down_up, make_split


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> tuple[float, float]:
    """(TAR, achieved FAR) at the threshold that accepts at most ``far`` of the impostors."""
    imp = np.sort(impostor)[::-1]
    k = int(np.floor(far * len(imp)))
    threshold = np.nextafter(imp[k], np.inf)  # strictly above the (k+1)-th largest impostor
    return float((genuine >= threshold).mean()), float((impostor >= threshold).mean())


def unit(images: torch.Tensor) -> torch.Tensor:
    x = images.flatten(1).double()
    x = x - x.mean(1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--size", type=int, nargs=2, default=None, help="H W (default: preset's)")
    ap.add_argument("--channels", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.125])
    ap.add_argument("--knob", action="append", default=[], help="name=value, repeatable")
    args = ap.parse_args()
    knobs = DEFAULT_KNOBS.with_(**{k: float(v) for k, v in (s.split("=") for s in args.knob)})
    t0 = time.perf_counter()
    split = make_split(
        "test",
        args.preset,
        args.seed,
        args.fold,
        size=tuple(args.size) if args.size else None,
        channels=args.channels,
        knobs=knobs,
    )
    labels = split.labels.numpy()
    n, c, h, w = split.images.shape
    iu, ju = np.triu_indices(n, k=1)
    same = labels[iu] == labels[ju]
    print(
        f"synth test split: preset={args.preset} {split.labels.max() + 1} identities, {n} images, "
        f"{c}x{h}x{w}; {same.sum()} genuine / {(~same).sum()} impostor pairs "
        f"(rendered in {time.perf_counter() - t0:.1f} s); knobs changed: {args.knob or 'none'}"
    )
    print("raw pixels, mean-centred cosine, clean gallery vs degraded probe")
    print(f"{'scale':>7} {'probe':>9} {'TAR@1e-2':>9} {'FAR':>8} {'AUC':>7}")
    gallery = unit(split.images)
    for s in args.scales:
        probe = unit(down_up(split.images, s))
        scores = (gallery @ probe.T).numpy()[iu, ju]
        tar, far = tar_at_far(scores[same], scores[~same], 1e-2)
        auc = roc_auc_score(same, scores)
        size = f"{max(1, round(h * s))}x{max(1, round(w * s))}"
        print(f"{s:>7.4g} {size:>9} {tar:>9.3f} {far:>8.4f} {auc:>7.3f}")


if __name__ == "__main__":
    main()
