"""Train the paper's six methods with the embedded defaults and report time, accuracy, norm spread.

For each dataset (ORL fold 0: 30 training identities, 10 held out; synth's cpu preset, fold 0)
and each of SM, SF, l2-SM(30), SM+CL, SM+R(0.01), SF+R(0.01), trains cpunet with the
TrainConfig defaults (only device/threads set), then reports:

- wall time of the training run (data loading included), of the training loop alone, and the
  process CPU time (with one thread, the wall time an idle core would take; the machine is
  shared, so wall times inflate under load while CPU time barely moves),
- final training accuracy: the last epoch's running accuracy (augmented batches, as logged) and
  the accuracy on the clean training images in eval mode (the head's plain logits; at most 2,000
  evenly spaced images),
- the coefficient of variation (std / mean) of feature norms on the held-out test identities'
  clean images, and on the clean training images (same subset).

Two jobs with one thread each run about twice as fast as one job with two threads on the
2-core machine (measured), hence ``--jobs 2`` and ``num_threads=1``.

Usage::

    python benchmarks/train_all_methods.py --data orl synth --out runs/train_all
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path

METHODS = ["SM", "SF", "l2-SM(30)", "SM+CL", "SM+R(0.01)", "SF+R(0.01)"]
DATASETS = {"orl": {"data": "orl", "preset": None}, "synth": {"data": "synth", "preset": "cpu"}}


def _slug(method: str) -> str:
    return method.replace("(", "_").replace(")", "").replace("+", "_").replace(".", "p")


def run_one(dataset: str, method: str, out_root: str, epochs: int | None) -> dict:
    """Train one model in this process and measure it (runs in a worker process)."""
    import torch

    from lowres.train import TrainConfig, load_checkpoint, train

    torch.set_num_threads(1)
    out = Path(out_root) / dataset / _slug(method)
    if out.exists():
        shutil.rmtree(out)
    config = TrainConfig(
        method=method, device="cpu", num_threads=1, epochs=epochs, **DATASETS[dataset]
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    train(config, out, progress=False)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start

    loaded = load_checkpoint(out)
    metrics = loaded.sidecar["metrics"]
    return {
        "dataset": dataset,
        "method": method,
        "epochs": loaded.sidecar["epochs"],
        "steps": loaded.sidecar["iteration"],
        "wall_s": wall,
        "cpu_s": cpu,
        "loop_s": metrics["wall_seconds"],
        "train_acc_logged": metrics["train_acc"],
        "train_acc_clean": metrics["train_clean_acc"],
        "test_norm_mean": metrics["test_norm_mean"],
        "test_norm_cv": metrics["test_norm_cv"],
        "train_norm_cv": metrics["train_clean_norm_cv"],
        "R": metrics.get("R"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--out", default="runs/train_all")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None, help="override the default epochs")
    args = parser.parse_args(argv)

    tasks = [(d, m) for d in args.data for m in args.methods]
    rows = []
    context = mp.get_context("spawn")  # no fork after torch has started its thread pools
    with cf.ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        futures = {pool.submit(run_one, d, m, args.out, args.epochs): (d, m) for d, m in tasks}
        for future in cf.as_completed(futures):
            row = future.result()
            rows.append(row)
            print(
                f"done {row['dataset']:5s} {row['method']:11s} {row['wall_s']:6.1f} s",
                file=sys.stderr,
            )
    order = {(d, m): i for i, (d, m) in enumerate(tasks)}
    rows.sort(key=lambda r: order[(r["dataset"], r["method"])])
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=2) + "\n")

    print(f"{args.jobs} jobs x 1 thread; norm CV = std/mean of clean-image feature norms")
    print(
        "| data | method | epochs | steps | wall s | loop s | CPU s | train acc (logged / clean) "
        "| held-out norm mean | held-out norm CV | train norm CV |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['method']} | {r['epochs']} | {r['steps']} | "
            f"{r['wall_s']:.1f} | {r['loop_s']:.1f} | {r['cpu_s']:.1f} | "
            f"{r['train_acc_logged']:.3f} / "
            f"{r['train_acc_clean']:.3f} | {r['test_norm_mean']:.2f} | {r['test_norm_cv']:.3f} | "
            f"{r['train_norm_cv']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
