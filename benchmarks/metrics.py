"""All-vs-all TAR@FAR: streaming ``all_vs_all_verification`` vs materialised scores.

Three paths on the same clustered embeddings (default 2000 identities x 10 images, 512-d, so
~200M pairs), each run in its own subprocess so that its peak memory is its own:

* ``streaming``    lowres.metrics.all_vs_all_verification (blocked, top-k of impostors)
* ``materialised`` every score stored (float32), then lowres.metrics.tar_at_far per FAR
* ``sklearn``      every score stored (float32), then sklearn.metrics.roc_curve and the best
                   ROC point with FPR <= target

Peak memory is ``ru_maxrss`` minus the resident size just before the timed section (host) and
``torch.cuda.max_memory_allocated`` (device). The materialised paths compute the similarity
blocks on the same block grid as the streaming path, so all three see bitwise-equal scores and
must report identical thresholds and TARs (checked and printed).

Usage: ``python benchmarks/metrics.py [--device cuda] [--n-ids 2000 --per-id 10 --dim 512]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch


def _embeddings(n_ids: int, per_id: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clustered unit-free embeddings: identity centre + isotropic noise (sigma 2 per axis).

    Sigma 2 puts genuine cosines near 0.2 and impostors near 0 with similar spreads, so TAR
    runs from ~0.4 at FAR 1e-6 to ~0.99 at 1e-2 instead of saturating.
    """
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_ids, dim, generator=g)
    labels = torch.arange(n_ids).repeat_interleave(per_id)
    feats = centres[labels] + 2.0 * torch.randn(labels.numel(), dim, generator=g)
    return feats, labels


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _materialise(feats: torch.Tensor, labels: torch.Tensor, block: int):
    """All i<j scores (float32) and same-identity flags, on the streaming path's block grid."""
    f = feats / torch.linalg.vector_norm(feats, dim=1, keepdim=True)
    n = f.shape[0]
    n_pairs = n * (n - 1) // 2
    scores = np.empty(n_pairs, dtype=np.float32)
    same = np.empty(n_pairs, dtype=bool)
    pos = 0
    for r0 in range(0, n, block):
        for c0 in range(r0, n, block):
            sim = f[r0 : r0 + block] @ f[c0 : c0 + block].T
            eq = labels[r0 : r0 + block, None] == labels[None, c0 : c0 + block]
            if c0 == r0:
                keep = torch.ones_like(eq).triu_(diagonal=1)
                sim, eq = sim[keep], eq[keep]
            sim, eq = sim.reshape(-1).cpu().numpy(), eq.reshape(-1).cpu().numpy()
            scores[pos : pos + sim.size] = sim
            same[pos : pos + sim.size] = eq
            pos += sim.size
    assert pos == n_pairs  # internal bookkeeping, not user input
    return scores, same


def _run_path(args: argparse.Namespace) -> dict:
    from lowres.metrics import all_vs_all_verification, tar_at_far

    device = torch.device(args.device)
    feats, labels = _embeddings(args.n_ids, args.per_id, args.dim, args.seed)
    feats, labels = feats.to(device), labels.to(device)
    if args.path == "sklearn":
        from sklearn.metrics import roc_curve
    if device.type == "cuda":  # warm up the kernels outside the timed section
        (feats[:64] @ feats[:64].T).sum().item()
        torch.cuda.reset_peak_memory_stats(device)
    base = _rss_mb()
    t0 = time.perf_counter()
    out: dict = {}
    if args.path == "streaming":
        res = all_vs_all_verification(feats, labels, args.fars, block=args.block)
        for far, r in res.tar_at_far.items():
            out[repr(far)] = (r.tar, r.threshold, r.far_achieved)
        n_imp = res.n_impostor
    else:
        scores, same = _materialise(feats, labels, args.block)
        n_imp = int((~same).sum())
        if args.path == "materialised":
            for far in args.fars:
                r = tar_at_far(scores, same, far)
                out[repr(far)] = (r.tar, r.threshold, r.far_achieved)
        else:
            fpr, tpr, thr = roc_curve(same, scores)
            for far in args.fars:
                ok = np.flatnonzero(fpr <= far)
                best = ok[np.argmax(tpr[ok])]
                out[repr(far)] = (float(tpr[best]), float(thr[best]), float(fpr[best]))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return {
        "path": args.path,
        "seconds": seconds,
        "host_peak_mb": peak - base,
        "gpu_peak_mb": gpu,
        "n_impostor": n_imp,
        "results": out,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--n-ids", type=int, default=2000)
    parser.add_argument("--per-id", type=int, default=10)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--block", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fars", default="1e-6,1e-5,1e-4,1e-3,1e-2")
    parser.add_argument(
        "--paths", default="streaming,materialised,sklearn", help="comma-separated subset"
    )
    parser.add_argument("--path", help=argparse.SUPPRESS)  # child process: run one path
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.fars = [float(f) for f in args.fars.split(",")]

    if args.path:
        print(json.dumps(_run_path(args)))
        return

    n = args.n_ids * args.per_id
    print(
        f"all-vs-all TAR@FAR: {n} x {args.dim} embeddings ({args.n_ids} ids x {args.per_id}), "
        f"{n * (n - 1) // 2:,} pairs, block {args.block}, device {args.device}, "
        f"torch threads {torch.get_num_threads()}"
    )
    rows = []
    for path in args.paths.split(","):
        cmd = [sys.executable, __file__, "--path", path, "--device", args.device]
        cmd += ["--n-ids", str(args.n_ids), "--per-id", str(args.per_id), "--dim", str(args.dim)]
        cmd += ["--block", str(args.block), "--seed", str(args.seed)]
        cmd += ["--fars", ",".join(repr(f) for f in args.fars)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{path}: failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))

    ref = rows[0]
    print(
        f"\n{'path':<13} {'seconds':>9} {'host peak MB':>13} {'GPU peak MB':>12} "
        f"{'time x':>7} {'mem x':>7}  identical"
    )
    for row in rows:
        same = row["results"] == ref["results"]
        print(
            f"{row['path']:<13} {row['seconds']:9.2f} {row['host_peak_mb']:13.0f} "
            f"{row['gpu_peak_mb']:12.0f} {row['seconds'] / ref['seconds']:7.1f} "
            f"{row['host_peak_mb'] / max(ref['host_peak_mb'], 1.0):7.1f}  "
            f"{'yes' if same else 'NO'}"
        )
    print(f"\n(time x, mem x: relative to {ref['path']}; n_impostor = {ref['n_impostor']:,})")
    print(f"{'FAR':>8} {'TAR':>8} {'threshold':>12} {'FAR achieved':>13}")
    for far, (tar, thr, achieved) in ref["results"].items():
        print(f"{float(far):8.0e} {tar:8.4f} {thr:12.6f} {achieved:13.3e}")


if __name__ == "__main__":
    main()
