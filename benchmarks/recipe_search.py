"""Training recipes at equal CPU time: held-out TAR per recipe and method (issue 15).

Each recipe is a set of TrainConfig fields; every (recipe, method) trains with 100 identities
held out of the synth training split, whose clean all-vs-all pairs give ``val_tar`` (TAR at
FAR 1e-2) after every epoch. Models are cached under WORK_DIR, so a rerun only prints.

    python benchmarks/recipe_search.py [WORK_DIR] [--only NAME,...] [--methods SM,SF]

Prints one row per (recipe, method): training seconds on one worker (wall of the training
loop, two trainings at a time on this 2-core machine), training accuracy, and val_tar at the
last epoch and its best epoch.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

from lowres.processes import run_parallel
from lowres.train import TrainConfig, train_cached

OLD = {"epochs": 4}
NARROW = {"model_args": {"widths": [16, 32, 64, 128]}}
RECIPES: dict[str, dict] = {
    # the old default recipe (step at 50%/75%, lr 0.05, batch 32) at the new CPU budget
    "old-e4": dict(OLD),
    "old-e16": {"epochs": 16},
    "cos-e4": {"epochs": 4, "schedule": "cosine", "warmup": 0.05, "lr": 0.1, "batch_size": 128},
    "narrow-old-e12": {**NARROW, "epochs": 12},
    "narrow-cos-e12": {
        **NARROW,
        "epochs": 12,
        "schedule": "cosine",
        "warmup": 0.05,
        "lr": 0.1,
        "batch_size": 128,
    },
    "narrow-cos-lr.2-e12": {
        **NARROW,
        "epochs": 12,
        "schedule": "cosine",
        "warmup": 0.05,
        "lr": 0.2,
        "batch_size": 128,
    },
    "narrow-step-b128-e12": {**NARROW, "epochs": 12, "lr": 0.1, "batch_size": 128},
    "narrow-cos-e32": {
        **NARROW,
        "epochs": 32,
        "schedule": "cosine",
        "warmup": 0.05,
        "lr": 0.1,
        "batch_size": 128,
    },
}


def _one(name: str, method: str, cache: str) -> dict:
    config = TrainConfig(method=method, val_identities=100, num_threads=1, **RECIPES[name])
    folder = train_cached(config, cache, progress=False)
    with open(folder / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    last = rows[-1]
    best = max(rows, key=lambda r: float(r["val_tar"]))
    return {
        "recipe": name,
        "method": method,
        "epochs": len(rows),
        "seconds": sum(float(r["seconds"]) for r in rows),
        "train_acc": float(last["train_acc"]),
        "val_tar": float(last["val_tar"]),
        "best_val_tar": float(best["val_tar"]),
        "best_epoch": int(best["epoch"]),
        "curve": " ".join(f"{float(r['val_tar']):.3f}" for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", nargs="?", default="/tmp/lowres_recipes")
    parser.add_argument("--only", default=",".join(RECIPES))
    parser.add_argument("--methods", default="SM,SF")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("LOWRES_CACHE", str(Path(args.work) / "cache"))
    calls = [
        (name, method, str(Path(args.work) / "models"))
        for name in args.only.split(",")
        for method in args.methods.split(",")
    ]
    rows = run_parallel(_one, calls, args.jobs)
    print("| recipe | method | epochs | train s | train acc | val_tar | best (epoch) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['recipe']} | {r['method']} | {r['epochs']} | {r['seconds']:.0f} | "
            f"{r['train_acc']:.2f} | {r['val_tar']:.3f} | {r['best_val_tar']:.3f} "
            f"({r['best_epoch']}) |"
        )
    for r in rows:
        print(f"{r['recipe']:>22} {r['method']:>4}: {r['curve']}")


if __name__ == "__main__":
    main()
