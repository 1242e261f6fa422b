"""Results that cannot go silently wrong (one representative case per class of hostile input):
data changed behind a manifest, damaged cells, killed sweeps leaving no process behind,
concurrent sweeps sharing a model cache, and a full disk. Each sweep runs through the real CLI
in a subprocess where the class needs one (signals, locks, file-size limits).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

N_IDS, PER_ID, SIZE = 16, 4, (28, 24)


def make_faces(root: Path, seed: int) -> Path:
    """An identity-folder set whose identities differ by a smooth pattern (learnable), plus its
    manifest (4 identity folds of 4 test identities). Returns the manifest path."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : SIZE[0], 0 : SIZE[1]] / 8.0
    for ident in range(N_IDS):
        phase = rng.uniform(0, 2 * np.pi, 2)
        folder = root / "faces" / f"id{ident:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(PER_ID):
            base = 127 + 80 * np.sin(xx + phase[0]) * np.cos(yy + phase[1])
            pixels = np.clip(base + rng.normal(0, 60, SIZE), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{k}.png")
    manifest = root / "faces.toml"
    manifest.write_text(
        'name = "faces"\nkind = "identity-folders"\nroot = "faces"\nchannels = 1\n'
        '[protocol]\ntype = "identity-folds"\nn_folds = 4\n'
    )
    return manifest


def sweep_args(manifest: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "sweep",
        "--data",
        str(manifest),
        "--models",
        "SM",
        "--scales",
        "1,0.5",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--jobs",
        "1",
        "--no-plot",
        "--out",
        str(out),
        "--model-cache",
        str(cache),
        *extra,
    ]


def lowres(args, tmp_path: Path, **popen) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", LOWRES_CACHE=str(tmp_path / "lc"))
    return subprocess.run(
        [sys.executable, "-m", "lowres", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        **popen,
    )


def start(args, tmp_path: Path) -> subprocess.Popen:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", LOWRES_CACHE=str(tmp_path / "lc"))
    return subprocess.Popen(
        [sys.executable, "-m", "lowres", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def models_in(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.is_dir() and "." not in p.name)


def test_new_pixels_behind_the_same_manifest_retrain_and_rescore(tmp_path):
    manifest = make_faces(tmp_path, seed=1)
    out, cache = tmp_path / "run", tmp_path / "models"
    first = lowres(sweep_args(manifest, out, cache), tmp_path)
    assert first.returncode == 0, first.stderr
    old_table = (out / "results.csv").read_bytes()
    make_faces(tmp_path, seed=2)  # same names, same file names, new pixels
    again = lowres(sweep_args(manifest, out, cache), tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(models_in(cache)) == 2  # the model trained on the old images is not reused
    assert "computed 4 cells, reused 0" in again.stderr
    new_table = (out / "results.csv").read_bytes()
    assert new_table != old_table
    fresh = tmp_path / "fresh"
    clean = lowres(sweep_args(manifest, fresh, tmp_path / "models2"), tmp_path)
    assert clean.returncode == 0, clean.stderr
    assert (fresh / "results.csv").read_bytes() == new_table


def test_a_damaged_cell_is_recomputed_and_the_table_restored(tmp_path):
    manifest = make_faces(tmp_path, seed=1)
    out, cache = tmp_path / "run", tmp_path / "models"
    assert lowres(sweep_args(manifest, out, cache), tmp_path).returncode == 0
    before = {n: (out / n).read_bytes() for n in ("results.csv", "roc.csv", "norms.csv")}
    cells = sorted((out / "cells").glob("SM__*.json"))
    edited = json.loads(cells[0].read_text())
    cells[0].write_text(json.dumps({**edited, "rows": []}))  # emptied rows
    npz = sorted((out / "cells").glob("SM__*.npz"))
    npz[1].write_bytes(npz[0].read_bytes())  # another cell's arrays in its place
    again = lowres(sweep_args(manifest, out, cache), tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("recomputing cell SM__") == 2
    assert "computed 2 cells, reused 2" in again.stderr
    assert {n: (out / n).read_bytes() for n in before} == before


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_sweep_leaves_no_training_worker_running(tmp_path):
    manifest = make_faces(tmp_path, seed=1)
    cache = tmp_path / "models"
    args = sweep_args(manifest, tmp_path / "run", cache, "--models", "SM,SM+R(0.01)")
    args[args.index("--jobs") + 1] = "2"
    args[args.index("--epochs") + 1] = "400"  # long enough to be killed while training
    proc = start(args, tmp_path)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if cache.is_dir() and len(list(cache.glob("*.partial"))) == 2:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    workers = _children(proc.pid)
    assert len(workers) >= 2  # the two training workers (and the resource tracker)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not [w for w in workers if _alive(w)]


def test_concurrent_sweeps_sharing_a_model_cache_train_each_model_once(tmp_path):
    manifest = make_faces(tmp_path, seed=1)
    cache = tmp_path / "models"
    runs = []
    for name in ("a", "b", "a"):  # two folders sharing one cache, and a second sweep on "a"
        runs.append(
            start(sweep_args(manifest, tmp_path / name, cache, "--epochs", "200"), tmp_path)
        )
        time.sleep(1.0)
    results = []
    for proc in runs:
        err = proc.communicate(timeout=600)[1]
        results.append((proc.returncode, err))
    for code, err in results:
        assert code == 0, err[-2000:]
    trained = sum(err.count("training SM (fold 0") for _, err in results)
    assert trained == 1
    assert len(models_in(cache)) == 1
    tables = {(tmp_path / n / "results.csv").read_bytes() for n in ("a", "b")}
    assert len(tables) == 1


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file-size limits")
def test_a_full_disk_is_one_line_and_leaves_no_partial_model(tmp_path):
    manifest = make_faces(tmp_path, seed=1)
    # Warm the decode cache (small) so the only large write is the model checkpoint.
    assert lowres(["data", "show", str(manifest)], tmp_path).returncode == 0
    out, cache = tmp_path / "run", tmp_path / "models"
    result = lowres(sweep_args(manifest, out, cache), tmp_path, preexec_fn=_limit_file_size)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "File too large" in errors[0] or "No space" in errors[0]
    assert not list(cache.glob("*.partial"))
    assert not out.exists()  # the sweep created it and wrote no cell: removed again
