"""Streaming closed-set search vs a naive full score matrix: wall time, peak memory, equal ranks.

    nice -n 10 python benchmarks/identification.py [--probes 3000] [--ids 1000] \
        [--naive-distractors 100000] [--distractors 1000000] [--dim 128]

Each measurement runs in its own subprocess, which builds the same seeded float32 data
(gallery: 2 images per identity, centre + N(0, I); probes centre + N(0, noise^2 I); distractors
N(0, I)),
resets the peak-RSS mark (``/proc/self/clear_refs``), times the search alone and reads VmHWM:
"peak MB" is the search's high-water mark above the resident size it started from (the data).
The naive side materialises the probes x (gallery + distractors) float32 score matrix, so it
runs at the smaller distractor count only; the streaming side runs at both, and the ranks at
the smaller count must be identical.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lowres.identification import closed_set_search


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _data(args, n_distractors: int):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.ids, args.dim), dtype=np.float32)
    gallery_y = np.repeat(np.arange(args.ids), 2)
    gallery = centres[gallery_y] + rng.standard_normal((gallery_y.size, args.dim), np.float32)
    probe_y = rng.integers(0, args.ids, args.probes)
    noise = rng.standard_normal((args.probes, args.dim), np.float32)
    probes = centres[probe_y] + np.float32(args.noise) * noise
    distractors = np.random.default_rng(1).standard_normal((n_distractors, args.dim), np.float32)
    return gallery, gallery_y, probes, probe_y, distractors


def _naive_ranks(gallery, gallery_y, probes, probe_y, distractors) -> np.ndarray:
    """The whole (P, G + M) score matrix at once; identity score = max of its 2 images.

    Comparisons and counts in numpy, as the streaming search does on CPU (torch's CPU sum of a
    bool matrix would first widen it to int64)."""
    assert np.array_equal(gallery_y, np.repeat(np.arange(gallery_y.size // 2), 2))
    p = torch.nn.functional.normalize(torch.from_numpy(probes), dim=1)
    cand = np.concatenate([gallery, distractors])
    cand = torch.nn.functional.normalize(torch.from_numpy(cand), dim=1)
    scores = (p @ cand.T).numpy()
    n_gal = gallery.shape[0]
    per_id = scores[:, :n_gal].reshape(len(p), -1, 2).max(axis=2)
    true = per_id[np.arange(len(p)), probe_y][:, None]
    # the own identity is counted once by >= (it equals the true score): rank = count
    return np.count_nonzero(per_id >= true, axis=1) + np.count_nonzero(
        scores[:, n_gal:] >= true, axis=1
    )


def _worker(args) -> None:
    data = _data(args, args.worker_distractors)
    # Warm up on a slice first, so library code paged in by the first call is not "peak memory".
    small = (data[0], data[1], data[2][:64], data[3][:64], data[4][:1000])
    if args.worker == "naive":
        _naive_ranks(*small)
    else:
        closed_set_search(*small[:4], distractors=small[4], block=args.block)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    rss0 = _status_kb("VmRSS")
    start = time.perf_counter()
    if args.worker == "naive":
        ranks = _naive_ranks(*data)
    else:
        gallery, gallery_y, probes, probe_y, distractors = data
        ranks = closed_set_search(
            gallery, gallery_y, probes, probe_y, distractors=distractors, block=args.block
        ).ranks
    seconds = time.perf_counter() - start
    peak = (_status_kb("VmHWM") - rss0) / 1024
    np.save(args.out, ranks)
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "rank1": float(np.mean(ranks == 1))}))


def _run(args, method: str, n_distractors: int, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--worker-distractors", str(n_distractors)]
    cmd += ["--out", str(out), "--probes", str(args.probes), "--ids", str(args.ids)]
    cmd += ["--dim", str(args.dim), "--block", str(args.block), "--noise", str(args.noise)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=3000)
    parser.add_argument("--ids", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--naive-distractors", type=int, default=100_000)
    parser.add_argument("--distractors", type=int, default=1_000_000)
    parser.add_argument("--block", type=int, default=65536)
    parser.add_argument("--noise", type=float, default=1.6, help="probe noise std (difficulty)")
    parser.add_argument("--worker", choices=("naive", "streaming"))
    parser.add_argument("--worker-distractors", type=int)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    print(
        f"{args.probes} probes, {args.ids} identities x 2 gallery images, {args.dim}-d float32, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, block {args.block}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for method, n in (
            ("naive", args.naive_distractors),
            ("streaming", args.naive_distractors),
            ("streaming", args.distractors),
        ):
            out = Path(tmp) / f"{method}_{n}.npy"
            rows.append((method, n, _run(args, method, n, out), np.load(out)))
        print(f"{'method':<10} {'distractors':>11} {'seconds':>8} {'peak MB':>8} {'rank-1':>7}")
        for method, n, res, _ in rows:
            print(
                f"{method:<10} {n:>11,} {res['seconds']:>8.1f} {res['peak_mb']:>8.0f} "
                f"{res['rank1']:>7.4f}"
            )
        naive, stream = rows[0][2], rows[1][2]
        same = np.array_equal(rows[0][3], rows[1][3])
        print(
            f"at {args.naive_distractors:,} distractors: naive / streaming time "
            f"{naive['seconds'] / stream['seconds']:.2f}x, peak memory "
            f"{naive['peak_mb'] / max(stream['peak_mb'], 1e-9):.1f}x; ranks identical: {same}"
        )
        full_gb = args.probes * (2 * args.ids + args.distractors) * 4 / 1e9
        print(
            f"at {args.distractors:,}: the naive matrix would need {full_gb:.1f} GB; streaming "
            f"peak {rows[2][2]['peak_mb']:.0f} MB in {rows[2][2]['seconds']:.1f} s"
        )


if __name__ == "__main__":
    main()
