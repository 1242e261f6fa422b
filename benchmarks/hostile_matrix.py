"""Hostile-user matrix: try lowres with bad or unusual input, one case at a time.

Every case runs in its own temporary folder with its own ``LOWRES_CACHE`` and tiny generated
data, snapshots (path -> sha256) the folder before and after the command under test, and says
whether lowres "ended clean":

* bad input: exit 2, exactly one ``Error: `` line on stderr (progress lines aside), no Python
  traceback, nothing half-written (no new/changed/removed files except what a successful run
  legitimately produces, e.g. a complete decode-cache entry or a complete cached model);
* valid-but-unusual input: exit 0 with a result that the case's own check calls correct (or a
  documented one-line refusal where the case allows it). Exit 0 with a wrong table is a FAIL.

Usage::

    python benchmarks/hostile_matrix.py [--src CHECKOUT] [--only SUBSTRING] [--jobs N]
                                        [--json OUT.json]

``--src`` (default: this repository) goes first on PYTHONPATH of every subprocess, so the same
matrix measures a base commit (``--src /work/before``) and the working tree. Needs numpy, PIL,
torch and cv2; mounts 2 MB tmpfs folders for the ``disk`` class (root only, else SKIP).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
CASE_TIMEOUT = 240.0
COMMON = ["--epochs", "1", "--device", "cpu", "--jobs", "1", "--no-plot"]
PROGRESS = re.compile(
    r"^(epoch \d+/\d+|\[\d+/\d+\]|training |computed \d+ cells|\s*\d+%\|)", re.IGNORECASE
)
TRACEBACK = "Traceback (most recent call last)"
EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")
PY_WARNING = re.compile(r"\.py:\d+: \w*Warning|^\w*Warning: ")
HUGE = "18446744073709551617"  # 2**64 + 1

SRC: Path = REPO
MOUNTS: set[str] = set()
MOUNTS_LOCK = threading.Lock()


class Skip(Exception):
    """The case cannot run here (e.g. no tmpfs mount)."""


# ---------------------------------------------------------------------------------------------
# data helpers (no lowres import: the data must not depend on the code under test)


def face_images(n_ids: int, n_img: int, seed: int, size=(28, 24)) -> dict[str, list[np.ndarray]]:
    """Per-identity random pattern + per-image noise: easy to learn, different per seed."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n_ids):
        base = rng.integers(0, 256, size).astype(np.float32)
        out[f"id{i:02d}"] = [
            np.clip(base + rng.normal(0, 20, size), 0, 255).astype(np.uint8) for _ in range(n_img)
        ]
    return out


def write_faces(root: Path, n_ids=16, n_img=4, seed=0, size=(28, 24)) -> None:
    for ident, imgs in face_images(n_ids, n_img, seed, size).items():
        (root / ident).mkdir(parents=True, exist_ok=True)
        for j, img in enumerate(imgs):
            Image.fromarray(img, "L").save(root / ident / f"img{j}.png")


def manifest_text(
    name="tiny", root="faces", size=(28, 24), channels=1, n_folds=4, extra="", proto_extra=""
) -> str:
    return (
        f'name = "{name}"\nkind = "identity-folders"\ndescription = "hostile matrix data"\n'
        f'root = "{root}"\nimage_size = [{size[0]}, {size[1]}]\nchannels = {channels}\n{extra}\n'
        f'[protocol]\ntype = "identity-folds"\nn_folds = {n_folds}\n{proto_extra}\n'
    )


def ts_script(kind: str) -> str:
    """Python that writes a TorchScript feature extractor of ``kind`` + its adapter sidecar."""
    return f"""
import json, sys, torch
class M(torch.nn.Module):
    kind: str
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(28 * 24, 8, generator=g), requires_grad=False)
        self.kind = {kind!r}
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.flatten(1) @ self.w
        if self.kind == "nan":
            f = f * float("nan")
        elif self.kind == "inf":
            f = f + float("inf")
        elif self.kind == "const":
            f = torch.ones_like(f)
        elif self.kind == "shape":
            f = f.sum(1)
        return f
torch.jit.script(M()).save("{kind}.pt")
json.dump({{"channels": "grey", "size": [28, 24], "mean": 127.5, "std": 128.0}},
          open("{kind}.adapter.json", "w"))
"""


# ---------------------------------------------------------------------------------------------
# running and snapshotting


@dataclass
class Res:
    rc: int | None
    out: str
    err: str
    seconds: float
    timed_out: bool = False

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.strip()]


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 (files) or 'dir' (folders) or 'link' under root."""
    snap: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        rel_dir = os.path.relpath(dirpath, os.fsencode(root))
        for d in dirnames:
            rel = os.path.normpath(os.path.join(rel_dir, d)).decode("utf-8", "backslashreplace")
            snap[rel + "/"] = "dir"
        for f in filenames:
            full = os.path.join(dirpath, f)
            rel = os.path.normpath(os.path.join(rel_dir, f)).decode("utf-8", "backslashreplace")
            if os.path.islink(full):
                snap[rel] = "link"
                continue
            h = hashlib.sha256()
            try:
                with open(full, "rb") as fh:
                    for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                        h.update(chunk)
                snap[rel] = h.hexdigest()
            except OSError as exc:
                snap[rel] = f"unreadable:{exc.errno}"
    return snap


def diff(before: dict[str, str], after: dict[str, str]) -> tuple[list, list, list]:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    return added, changed, removed


TEMP_NAME = re.compile(r"(\.partial(/|$)|\.tmp$|/\.[^/]+\.tmp$|~$)")


def temp_leftovers(snap: dict[str, str]) -> list[str]:
    return [p for p in snap if TEMP_NAME.search(p)]


def legit_cache(path: str) -> bool:
    """Complete entries a successful run may leave even when a later step refuses."""
    if re.match(r"^cache/decoded/[^/]+\.pt$", path) or path in ("cache/", "cache/decoded/"):
        return True
    if path == "cache/models/" or re.match(r"^cache/models/[0-9a-f]{16}/([^/]+)?$", path):
        return True
    return False


@dataclass
class Verdict:
    ok: bool
    reason: str
    rc: int | None = None
    n_err: int = 0
    tb: bool = False
    files: tuple[int, int, int] = (0, 0, 0)
    skip: bool = False
    stderr_tail: str = ""


class Ctx:
    """One case's folder, environment and helpers."""

    def __init__(self, name: str, root: Path):
        self.name = name
        self.dir = root
        self.procs: list[subprocess.Popen] = []
        self.mounts: list[Path] = []
        self.deadline = time.monotonic() + CASE_TIMEOUT
        self.env = dict(os.environ)
        self.env.update(
            PYTHONPATH=os.pathsep.join(
                [str(SRC)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
            ),
            LOWRES_CACHE=str(root / "cache"),
            MPLBACKEND="Agg",
            NO_ALBUMENTATIONS_UPDATE="1",
            OMP_NUM_THREADS="1",
        )
        self.env.pop("LOWRES_DATA", None)

    # -- files
    def p(self, rel: str) -> Path:
        return self.dir / rel

    def data(self, seed=0, n_ids=16, n_img=4, root="faces", toml="my.toml", **kw) -> str:
        write_faces(self.p(root), n_ids=n_ids, n_img=n_img, seed=seed)
        self.p(toml).write_text(manifest_text(root=root, **kw), encoding="utf-8")
        return toml

    # -- processes
    def run(self, argv: list[str], *, env=None, timeout=None, cwd=None) -> Res:
        left = self.deadline - time.monotonic()
        limit = max(1.0, min(timeout or left, left))
        t0 = time.monotonic()
        proc = subprocess.Popen(
            argv,
            cwd=cwd or self.dir,
            env=env or self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(proc)
        try:
            out, err = proc.communicate(timeout=limit)
            timed = False
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, err = proc.communicate()
            timed = True
        return Res(
            None if timed else proc.returncode,
            out.decode("utf-8", "replace"),
            err.decode("utf-8", "replace"),
            time.monotonic() - t0,
            timed,
        )

    def lowres(self, *args: str, quiet=True, env=None, timeout=None) -> Res:
        argv = [sys.executable, "-m", "lowres"] + (["-q"] if quiet else []) + list(args)
        return self.run(argv, env=env, timeout=timeout)

    def py(self, code: str, *args: str, check=True) -> Res:
        script = self.dir / f"_setup_{hashlib.sha256(code.encode()).hexdigest()[:8]}.py"
        script.write_text(code, encoding="utf-8")  # TorchScript needs a real source file
        res = self.run([sys.executable, str(script), *args], timeout=120)
        if check and res.rc != 0:
            raise RuntimeError(f"setup python failed: {res.err.strip().splitlines()[-1:]}")
        return res

    def env_with(self, **kw) -> dict:
        env = dict(self.env)
        env.update({k: str(v) for k, v in kw.items()})
        return env

    def setup(self, *args: str, env=None) -> Res:
        """A lowres command that must succeed (part of the case's preparation)."""
        res = self.lowres(*args, env=env)
        if res.rc != 0:
            tail = res.err.strip().splitlines()[-1:] or [f"exit {res.rc}"]
            raise SetupFailed(f"setup `lowres {' '.join(args[:2])}` failed: {tail[0][:150]}")
        return res

    def sweep(self, *extra: str, data="my.toml", out="out", models="SM", scales="1,0.5"):
        return [
            "sweep",
            "--data",
            data,
            "--models",
            models,
            "--scales",
            scales,
            "--out",
            out,
            *COMMON,
            *extra,
        ]

    def fresh(self, args: list[str], tag="fresh") -> Res:
        """Run ``args`` with --out replaced by a fresh folder and a fresh LOWRES_CACHE."""
        args = list(args)
        i = args.index("--out")
        args[i + 1] = f"{tag}_out"
        res = self.setup(*args, env=self.env_with(LOWRES_CACHE=self.p(f"{tag}_cache")))
        return res

    def mount_tmpfs(self, rel: str, size="2m") -> Path:
        path = self.p(rel)
        path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise Skip(f"cannot mount tmpfs: {r.stderr.strip()[:80]}")
        with MOUNTS_LOCK:
            MOUNTS.add(str(path))
        self.mounts.append(path)
        return path

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                kill_group(proc)
        for path in self.mounts:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
            with MOUNTS_LOCK:
                MOUNTS.discard(str(path))

    # -- the command under test
    def expect(
        self,
        args: list[str],
        want: str,
        *,
        allowed: Callable[[str], bool] = legit_cache,
        correct: Callable[[Res], tuple[bool, str]] | None = None,
        env=None,
        quiet=True,
        argv: list[str] | None = None,
    ) -> Verdict:
        """Run the hostile command; want is 'bad' (exit 2 one line), 'ok' (exit 0 and
        ``correct``) or 'either'."""
        before = snapshot(self.dir)
        res = self.run(argv, env=env) if argv else self.lowres(*args, quiet=quiet, env=env)
        after = snapshot(self.dir)
        return judge(res, want, before, after, allowed, correct)


class SetupFailed(Exception):
    pass


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass


def judge(res, want, before, after, allowed, correct) -> Verdict:
    added, changed, removed = diff(before, after)
    counts = (len(added), len(changed), len(removed))
    lines = res.lines
    tb = TRACEBACK in res.err
    errors = [ln for ln in lines if ln.startswith("Error: ")]
    extra = [ln for ln in lines if not ln.startswith("Error: ") and not PROGRESS.match(ln)]
    tail = "\n".join(lines[-3:])[-400:]
    v = Verdict(False, "", res.rc, len(lines), tb, counts, stderr_tail=tail)
    if res.timed_out:
        v.reason = f"timed out after {res.seconds:.0f}s"
        return v
    if tb:
        exc = [ln for ln in lines if EXC_LINE.match(ln)] or lines or [""]
        v.reason = f"traceback: {exc[-1][:110]}"
        return v
    leftovers = temp_leftovers(after)
    if leftovers:
        v.reason = f"temp/partial left: {leftovers[0]}"
        return v
    if res.rc == 2 and want in ("bad", "either"):
        if len(errors) != 1 or extra or not lines[-1].startswith("Error: "):
            shown = (extra or errors[1:] or lines)[:1]
            v.reason = f"{len(errors)} Error lines, {len(extra)} other lines: {shown[0][:90]!r}"
            return v
        bad = [p for p in added + changed + removed if not allowed(p)]
        if bad:
            kind = "added" if bad[0] in added else "changed" if bad[0] in changed else "removed"
            v.reason = f"refused but {kind} {bad[0]} ({len(bad)} paths)"
            return v
        v.ok, v.reason = True, f"refused: {errors[0][7:95]}"
        return v
    if res.rc == 0 and want in ("ok", "either"):
        noise = [ln for ln in extra if PY_WARNING.search(ln) or ln.startswith("Error")]
        if noise:
            v.reason = f"exit 0 but stderr noise: {noise[0][:100]!r}"
            return v
        if correct is not None:
            good, why = correct(res)
            v.ok, v.reason = good, ("" if good else "WRONG RESULT: ") + why
            return v
        v.ok, v.reason = True, "exit 0"
        return v
    wanted = {"bad": "2", "ok": "0", "either": "0 or 2"}[want]
    last = lines[-1][:100] if lines else ""
    v.reason = f"exit {res.rc}, expected {wanted}: {last!r}"
    return v


# ---------------------------------------------------------------------------------------------
# case registry

CASES: list[tuple[str, str, Callable[[Ctx], Verdict]]] = []


def case(cls: str, name: str):
    def deco(fn):
        CASES.append((cls, name, fn))
        return fn

    return deco


def read(c: Ctx, rel: str) -> bytes | None:
    try:
        return c.p(rel).read_bytes()
    except OSError:
        return None


def same_files(c: Ctx, a: str, b: str, names=("results.csv",)) -> tuple[bool, str]:
    for n in names:
        x, y = read(c, f"{a}/{n}"), read(c, f"{b}/{n}")
        if x is None or y is None:
            return False, f"{n} missing in {a if x is None else b}"
        if x != y:
            return False, f"{a}/{n} differs from {b}/{n}"
    return True, f"{', '.join(names)} equal {b}'s"


def out_unchanged(c: Ctx, out: str, before: dict[str, str]) -> tuple[bool, str]:
    now = {k: v for k, v in snapshot(c.dir).items() if k.startswith(out + "/")}
    old = {k: v for k, v in before.items() if k.startswith(out + "/")}
    a, ch, r = diff(old, now)
    if a or ch or r:
        return False, f"{out} changed (+{len(a)} ~{len(ch)} -{len(r)})"
    return True, f"{out} untouched"


def model_dirs(c: Ctx, cache="cache/models") -> list[Path]:
    root = c.p(cache)
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def trained_ckpt(c: Ctx, out="ckpt", data="my.toml") -> str:
    c.setup(
        "train",
        "--method",
        "SM",
        "--data",
        data,
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--out",
        out,
        "--no-progress",
    )
    return out


def edit_sidecar(c: Ctx, folder: str, **changes) -> None:
    side = c.p(folder) / "model.json"
    meta = json.loads(side.read_text())
    meta.update(changes)
    side.write_text(json.dumps(meta))


def ts_model(c: Ctx, kind: str) -> str:
    c.py(ts_script(kind))
    return f"ts:{kind}.pt"


def truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: (len(data) // 2 if keep is None else keep)])


def first_cell(c: Ctx, out="out", prefix="SM__", ext=".npz") -> Path:
    cells = sorted((c.p(out) / "cells").glob(f"{prefix}*{ext}"))
    if not cells:
        raise SetupFailed(f"no {prefix}*{ext} cell in {out}")
    return cells[0]


# ---------------------------------------------------------------------------------------------
# basic


def _basic(name, args_fn, setup_fn=None, want="bad"):
    @case("basic", name)
    def _(c: Ctx):
        c.data()
        if setup_fn:
            setup_fn(c)
        return c.expect(args_fn(c), want)

    return _


_basic("missing-manifest", lambda c: c.sweep(data="nope/missing.toml"))
_basic(
    "missing-data-root",
    lambda c: c.sweep(data="gone.toml"),
    lambda c: c.p("gone.toml").write_text(manifest_text(root="no_such_folder")),
)
_basic(
    "corrupt-image",
    lambda c: c.sweep(),
    lambda c: c.p("faces/id03/img1.png").write_bytes(os.urandom(500)),
)
_basic(
    "zero-byte-image", lambda c: c.sweep(), lambda c: c.p("faces/id05/img2.png").write_bytes(b"")
)
_basic(
    "image-size-mismatch",
    lambda c: c.sweep(),
    lambda c: Image.new("L", (30, 30), 80).save(c.p("faces/id01/img0.png")),
)
_basic(
    "manifest-toml-syntax",
    lambda c: c.sweep(data="bad.toml"),
    lambda c: c.p("bad.toml").write_text('name = "x"\nkind = \n'),
)
_basic(
    "manifest-unknown-key",
    lambda c: c.sweep(data="bad.toml"),
    lambda c: c.p("bad.toml").write_text(manifest_text(extra='colour = "blue"')),
)
_basic("unknown-method", lambda c: c.sweep(models="XYZ"))
_basic("scales-0", lambda c: c.sweep(scales="0"))
_basic("scales-2", lambda c: c.sweep(scales="2"))
_basic("scales-abc", lambda c: c.sweep(scales="abc"))
_basic("scales-nan", lambda c: c.sweep(scales="nan"))
_basic("far-1.5", lambda c: c.sweep("--far", "1.5"))
_basic("folds-out-of-range", lambda c: c.sweep("--folds", "7"))
_basic("unknown-device", lambda c: [*c.sweep(), "--device", "tpu0"])
_basic(
    "epochs-0",
    lambda c: ["sweep", "--data", "my.toml", "--models", "SM", "--epochs", "0", "--out", "out"],
)
_basic(
    "out-inside-file",
    lambda c: c.sweep(out="afile.txt/sub"),
    lambda c: c.p("afile.txt").write_text("x"),
)
_basic(
    "out-is-file", lambda c: c.sweep(out="afile.txt"), lambda c: c.p("afile.txt").write_text("x")
)
_basic("unknown-dataset-name", lambda c: c.sweep(data="no_such_dataset"))
_basic(
    "train-unknown-method",
    lambda c: ["train", "--method", "QQ", "--data", "my.toml", "--out", "ck", "--device", "cpu"],
)
_basic("plot-missing-run", lambda c: ["plot", "no_run"])
_basic(
    "check-missing-run",
    lambda c: ["check", "no_run", "--baseline", "base.csv"],
    lambda c: c.p("base.csv").write_text("a,b\n1,2\n"),
)


@case("basic", "check-unreadable-baseline")
def _(c: Ctx):
    c.data()
    c.setup(*c.sweep())
    c.p("base.csv").write_bytes(b"\xff\xfe\x00garbage\x00" + os.urandom(300))
    return c.expect(["check", "out", "--baseline", "base.csv"], "bad")


@case("basic", "check-baseline-is-folder")
def _(c: Ctx):
    c.data()
    c.setup(*c.sweep())
    c.p("base_dir").mkdir()
    return c.expect(["check", "out", "--baseline", "base_dir"], "bad")


@case("basic", "external-wrong-shape")
def _(c: Ctx):
    c.data()
    m = ts_model(c, "shape")
    return c.expect(c.sweep(models=m), "bad")


@case("basic", "external-missing-sidecar")
def _(c: Ctx):
    c.data()
    m = ts_model(c, "good")
    c.p("good.adapter.json").unlink()
    return c.expect(c.sweep(models=m), "bad")


@case("basic", "external-not-torchscript")
def _(c: Ctx):
    c.data()
    c.p("junk.pt").write_bytes(os.urandom(2000))
    c.p("junk.adapter.json").write_text(
        json.dumps({"channels": "grey", "size": [28, 24], "mean": 127.5, "std": 128.0})
    )
    return c.expect(c.sweep(models="ts:junk.pt"), "bad")


@case("basic", "export-to-folder")
def _(c: Ctx):
    c.data()
    trained_ckpt(c)
    c.p("exp").mkdir()
    return c.expect(["export", "ckpt", "exp"], "bad")


# ---------------------------------------------------------------------------------------------
# stale


def _changed_pixels(c: Ctx, fresh_out: bool) -> Verdict:
    c.data(seed=0)
    args = c.sweep()
    c.setup(*args)
    first = read(c, "out/results.csv")
    write_faces(c.p("faces"), seed=1)  # same names, new pixels
    c.fresh(args)
    args2 = c.sweep(out="out2") if fresh_out else args
    out = "out2" if fresh_out else "out"
    n_models = len(model_dirs(c))

    def correct(res):
        now = read(c, f"{out}/results.csv")
        if now == first:
            return False, "results.csv equals the run on the OLD images (stale reuse)"
        good, why = same_files(c, out, "fresh_out")
        if not good:
            return False, f"{why} (fresh data, fresh cache); model cache entries " + (
                f"{n_models}->{len(model_dirs(c))}"
            )
        return True, "recomputed, equals a fresh run"

    return c.expect(args2, "ok", correct=correct)


@case("stale", "changed-pixels-same-out")
def _(c: Ctx):
    return _changed_pixels(c, fresh_out=False)


@case("stale", "changed-pixels-fresh-out-same-cache")
def _(c: Ctx):
    return _changed_pixels(c, fresh_out=True)


@case("stale", "added-images-same-out")
def _(c: Ctx):
    c.data(seed=0)
    args = c.sweep()
    c.setup(*args)
    first = read(c, "out/results.csv")
    extra = face_images(16, 6, seed=5)
    for ident, imgs in extra.items():
        Image.fromarray(imgs[5], "L").save(c.p(f"faces/{ident}/img9.png"))
    c.fresh(args)

    def correct(res):
        if read(c, "out/results.csv") == first:
            return False, "results.csv unchanged after adding images"
        return same_files(c, "out", "fresh_out")

    return c.expect(args, "ok", correct=correct)


@case("stale", "changed-manifest-channels-same-out")
def _(c: Ctx):
    c.data(seed=0)
    args = c.sweep()
    c.setup(*args)
    c.p("my.toml").write_text(manifest_text(n_folds=2))  # other held-out identities
    c.fresh(args)
    return c.expect(args, "ok", correct=lambda r: same_files(c, "out", "fresh_out"))


def _cell_edit(c: Ctx, edit: Callable[[Ctx], None], names=("results.csv",)) -> Verdict:
    c.data()
    args = c.sweep()
    c.setup(*args)
    shutil.copytree(c.p("out"), c.p("first"))
    edit(c)
    return c.expect(
        args,
        "either",
        correct=lambda r: same_files(c, "out", "first", names),
        allowed=lambda p: p.startswith("out/") or legit_cache(p),
    )


def _empty_rows(c: Ctx) -> None:
    cell = first_cell(c, ext=".json")
    meta = json.loads(cell.read_text())
    meta["rows"] = []
    cell.write_text(json.dumps(meta))


def _edit_value(c: Ctx) -> None:
    cell = first_cell(c, ext=".json")
    meta = json.loads(cell.read_text())
    for row in meta["rows"]:
        if isinstance(row.get("value"), float):
            row["value"] = 0.123
    cell.write_text(json.dumps(meta))


def _swap_npz(c: Ctx) -> None:
    cells = sorted((c.p("out") / "cells").glob("*.npz"))
    src = next(p for p in cells if p.name.startswith("pixels"))
    dst = next(p for p in cells if p.name.startswith("SM__"))
    shutil.copyfile(src, dst)


@case("stale", "cell-json-rows-emptied")
def _(c: Ctx):
    return _cell_edit(c, _empty_rows)


@case("stale", "cell-json-value-edited")
def _(c: Ctx):
    return _cell_edit(c, _edit_value)


@case("stale", "cell-npz-swapped")
def _(c: Ctx):
    return _cell_edit(c, _swap_npz, ("results.csv", "roc.csv", "norms.csv", "scores.csv"))


@case("stale", "results-csv-deleted")
def _(c: Ctx):
    return _cell_edit(c, lambda c: c.p("out/results.csv").unlink())


@case("stale", "decode-cache-same-shape-garbage")
def _(c: Ctx):
    c.data()
    args = c.sweep()
    c.setup(*args)
    shutil.copytree(c.p("out"), c.p("first"))
    c.py(
        "import glob, torch\n"
        "for f in glob.glob('cache/decoded/*.pt'):\n"
        "    b = torch.load(f, weights_only=True)\n"
        "    b['images'] = torch.randint(0, 256, b['images'].shape, dtype=torch.uint8)\n"
        "    torch.save(b, f)\n"
    )
    return c.expect(
        c.sweep(out="out2"),
        "either",
        correct=lambda r: same_files(c, "out2", "first"),
        allowed=lambda p: p.startswith("out2/") or legit_cache(p),
    )


@case("stale", "model-cache-weights-swapped")
def _(c: Ctx):
    c.data()
    args = c.sweep(models="SM,SM+R(0.01)")
    c.setup(*args)
    shutil.copytree(c.p("out"), c.p("first"))
    a, b = model_dirs(c)[:2]
    shutil.copyfile(b / "model.safetensors", a / "model.safetensors")
    shutil.copyfile(b / "model.json", a / "model.json")
    return c.expect(
        c.sweep(out="out2", models="SM,SM+R(0.01)"),
        "either",
        correct=lambda r: same_files(c, "out2", "first"),
        allowed=lambda p: p.startswith("out2/") or legit_cache(p),
    )


PNG16_CHECK = """
import sys, numpy as np
from lowres.data import load_dataset
ds = load_dataset(sys.argv[1])
print(float(ds.images.float().mean()))
"""


def _png16(c: Ctx, *, rgb: bool, channels: int) -> Verdict:
    import cv2

    rng = np.random.default_rng(3)
    total = []
    for i in range(8):
        d = c.p(f"faces16/id{i}")
        d.mkdir(parents=True)
        for j in range(3):
            v8 = rng.integers(20, 200, (28, 24, 3) if rgb else (28, 24)).astype(np.uint16)
            v16 = v8 * 257  # exact 16-bit equivalent of the 8-bit value
            if rgb:
                cv2.imwrite(str(d / f"img{j}.png"), v16)  # BGR order, 16-bit
                total.append(
                    v8.mean()
                    if channels == 3
                    else (0.299 * v8[..., 2] + 0.587 * v8[..., 1] + 0.114 * v8[..., 0]).mean()
                )
            else:
                Image.fromarray(v16).save(d / f"img{j}.png")  # I;16
                total.append(v8.mean())
    c.p("d16.toml").write_text(
        manifest_text(name="d16", root="faces16", channels=channels, n_folds=2)
    )
    expected = float(np.mean(total))
    argv = [sys.executable, "-c", PNG16_CHECK, "d16.toml"]

    def correct(res):
        try:
            got = float(res.out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return False, f"no mean printed: {res.out[-80:]!r}"
        if abs(got - expected) > 1.0:
            return False, f"decoded mean {got:.1f}, true 8-bit mean {expected:.1f}"
        return True, f"mean {got:.1f} == {expected:.1f}"

    # a DataError raised in load_dataset is the one-line refusal through the CLI: check via CLI
    v = c.expect([], "ok", correct=correct, argv=argv)
    if v.ok or "traceback" not in v.reason or "DataError" not in v.stderr_tail:
        return v
    return c.expect(c.sweep(data="d16.toml"), "bad")


@case("stale", "png16-grey-channels3")
def _(c: Ctx):
    return _png16(c, rgb=False, channels=3)


@case("stale", "png16-grey-channels1")
def _(c: Ctx):
    return _png16(c, rgb=False, channels=1)


@case("stale", "png16-rgb-channels3")
def _(c: Ctx):
    return _png16(c, rgb=True, channels=3)


@case("stale", "png16-rgb-channels1")
def _(c: Ctx):
    return _png16(c, rgb=True, channels=1)


# ---------------------------------------------------------------------------------------------
# destroy


def _destroy(c: Ctx, damage: Callable[[Ctx], None], models="SM") -> Verdict:
    c.data()
    c.setup(*c.sweep(models=models, scales="1,0.5"))
    before = snapshot(c.dir)
    damage(c)
    before = snapshot(c.dir)
    args = c.sweep("--force", models=models, scales="1,0.25")
    res = c.lowres(*args)
    after = snapshot(c.dir)
    if res.rc == 0:
        c.fresh(args)

        def correct(r):
            return same_files(c, "out", "fresh_out", ("results.csv", "scores.csv"))

        return judge(res, "ok", before, after, lambda p: True, correct)
    v = judge(res, "bad", before, after, lambda p: not p.startswith("out/") and "/" in p, None)
    if not v.ok:
        return v
    good, why = out_unchanged(c, "out", before)
    v.ok, v.reason = good, (v.reason if good else f"refused AFTER deleting: {why}")
    return v


def _trunc_weights(c: Ctx) -> None:
    for d in model_dirs(c):
        truncate(d / "model.safetensors", 100)


def _garbage_marker(c: Ctx) -> None:
    for d in model_dirs(c):
        (d / "lowres-cache.json").write_text("{not json")


def _trunc_marker(c: Ctx) -> None:
    for d in model_dirs(c):
        truncate(d / "lowres-cache.json", 0)


@case("destroy", "force-truncated-cached-weights")
def _(c: Ctx):
    return _destroy(c, _trunc_weights)


@case("destroy", "force-garbage-cache-marker")
def _(c: Ctx):
    return _destroy(c, _garbage_marker)


@case("destroy", "force-empty-cache-marker")
def _(c: Ctx):
    return _destroy(c, _trunc_marker)


@case("destroy", "force-missing-sidecar")
def _(c: Ctx):
    return _destroy(c, lambda c: [(d / "model.json").unlink() for d in model_dirs(c)])


@case("destroy", "force-nan-external")
def _(c: Ctx):
    c.data()
    c.setup(*c.sweep(scales="1,0.5"))
    m = ts_model(c, "nan")
    before = snapshot(c.dir)
    v = c.expect(c.sweep("--force", models=m, scales="1,0.25"), "bad")
    if v.ok:
        good, why = out_unchanged(c, "out", before)
        v.ok, v.reason = good, v.reason if good else why
    return v


@case("destroy", "force-missing-data")
def _(c: Ctx):
    c.data()
    c.setup(*c.sweep(scales="1,0.5"))
    c.p("other.toml").write_text(manifest_text(root="nowhere"))
    return c.expect(c.sweep("--force", data="other.toml", scales="1,0.25"), "bad")


@case("destroy", "merge-force-over-run-bad-shard")
def _(c: Ctx):
    c.data()
    c.setup(*c.sweep(out="m"))
    for i in (1, 2):
        c.setup(*c.sweep("--shard", f"{i}/2", out=f"s{i}", models="SM,SM+R(0.01)", scales="1"))
    truncate(first_cell(c, out="s1", prefix=""))
    return c.expect(["merge", "--force", "--no-plot", "m", "s1", "s2"], "bad")


# ---------------------------------------------------------------------------------------------
# leak


def proc_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (ppid, state, cmdline) from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode("utf-8", "replace")
            fields = stat[stat.rindex(")") + 2 :].split()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
            table[int(entry)] = (int(fields[1]), fields[0], cmd)
        except (OSError, ValueError):
            continue
    return table


def descendants(pid: int) -> set[int]:
    table = proc_table()
    kids, frontier = set(), {pid}
    while frontier:
        nxt = {p for p, (pp, _, _) in table.items() if pp in frontier and p not in kids}
        kids |= nxt
        frontier = nxt
    return kids


def _leak(c: Ctx, sig: int) -> Verdict:
    c.data()
    args = c.sweep(models="SM,SM+R(0.01)")
    args[args.index("--epochs") + 1] = "60"
    args[args.index("--jobs") + 1] = "2"
    argv = [sys.executable, "-m", "lowres", "-q", *args]
    proc = subprocess.Popen(
        argv,
        cwd=c.dir,
        env=c.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    c.procs.append(proc)
    t0 = time.monotonic()
    kids: set[int] = set()
    while time.monotonic() - t0 < 90:
        if proc.poll() is not None:
            break
        models = c.p("cache/models")
        if models.is_dir() and list(models.glob("*.partial")):
            time.sleep(0.5)
            kids = descendants(proc.pid)
            break
        time.sleep(0.05)
    if proc.poll() is not None or not kids:
        kill_group(proc)
        return Verdict(False, "setup: training never started in parallel workers", proc.returncode)
    os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=3 if sig == signal.SIGKILL else 15)
    except subprocess.TimeoutExpired:
        pass
    time.sleep(3)
    table = proc_table()
    alive = [p for p in kids if p in table and table[p][1] != "Z"]
    alive += [
        p
        for p, (_, st, cmd) in table.items()
        if str(c.dir) in cmd and p not in alive and p != proc.pid and st != "Z"
    ]
    main_alive = proc.poll() is None
    for p in alive:  # reparented leftovers are outside the group only if they left it
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    kill_group(proc)
    err = proc.stderr.read().decode("utf-8", "replace")
    rc = proc.returncode
    tb = TRACEBACK in err
    lines = [ln for ln in err.splitlines() if ln.strip() and not PROGRESS.match(ln)]
    v = Verdict(False, "", rc, len(lines), tb)
    if alive or main_alive:
        names = [table[p][2][:60] for p in alive[:1]] if alive else ["main process"]
        v.reason = f"{len(alive)} processes alive 3 s after the signal (e.g. {names[0]!r})"
    elif tb:
        v.reason = "traceback on stderr after the signal"
    elif sig == signal.SIGINT and len(lines) > 2:
        v.reason = f"{len(lines)} stderr lines after Ctrl-C"
    else:
        v.ok, v.reason = True, f"{len(kids)} children gone"
    return v


@case("leak", "sigkill-main-during-parallel-training")
def _(c: Ctx):
    return _leak(c, signal.SIGKILL)


@case("leak", "sigint-main-during-parallel-training")
def _(c: Ctx):
    return _leak(c, signal.SIGINT)


@case("leak", "sigterm-main-during-parallel-training")
def _(c: Ctx):
    return _leak(c, signal.SIGTERM)


# ---------------------------------------------------------------------------------------------
# concurrent


def _concurrent(c: Ctx, same_out: bool) -> Verdict:
    c.data()
    base = c.sweep(models="SM")
    base[base.index("--epochs") + 1] = "25"
    a = list(base)
    b = list(base)
    if not same_out:
        b[b.index("--out") + 1] = "out_b"
        a += ["--model-cache", "shared_models"]
        b += ["--model-cache", "shared_models"]
    before = snapshot(c.dir)
    argv = [sys.executable, "-m", "lowres"]
    pa = subprocess.Popen(
        argv + a,
        cwd=c.dir,
        env=c.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    c.procs.append(pa)
    time.sleep(2)
    pb = subprocess.Popen(
        argv + b,
        cwd=c.dir,
        env=c.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    c.procs.append(pb)
    res = []
    for p in (pa, pb):
        try:
            out, err = p.communicate(timeout=max(5, c.deadline - time.monotonic() - 20))
            res.append(Res(p.returncode, out.decode(), err.decode("utf-8", "replace"), 0))
        except subprocess.TimeoutExpired:
            kill_group(p)
            res.append(Res(None, "", "", 0, True))
    after = snapshot(c.dir)
    trainings = sum(len(re.findall(r"^training SM", r.err, re.M)) for r in res)
    cache = "shared_models" if not same_out else "cache/models"
    entries = [d.name for d in model_dirs(c, cache)]
    added, changed, _removed = diff(before, after)
    tb = any(TRACEBACK in r.err for r in res)
    v = Verdict(False, "", res[1].rc, len(res[1].lines), tb, (len(added), len(changed), 0))
    if any(r.timed_out for r in res):
        v.reason = "timed out"
    elif tb:
        v.reason = (
            "traceback: " + next(ln for r in res for ln in r.lines if EXC_LINE.match(ln))[:100]
        )
    elif [r.rc for r in res] != [0, 0]:
        bad = next(r for r in res if r.rc != 0)
        v.reason = f"exits {[r.rc for r in res]}: {(bad.lines or [''])[-1][:100]!r}"
    elif trainings != 1 or len(entries) != 1:
        v.reason = f"model trained {trainings} times, cache entries {entries}"
    elif temp_leftovers(after):
        v.reason = f"temp left: {temp_leftovers(after)[0]}"
    else:
        other = "out" if same_out else "out_b"
        c.fresh(base)
        good, why = same_files(c, "out", "fresh_out")
        good2, why2 = same_files(c, other, "fresh_out")
        v.ok = good and good2
        v.reason = "both exit 0, one training, results equal a solo run" if v.ok else why or why2
    return v


@case("concurrent", "two-sweeps-same-out")
def _(c: Ctx):
    return _concurrent(c, same_out=True)


@case("concurrent", "two-sweeps-shared-model-cache")
def _(c: Ctx):
    return _concurrent(c, same_out=False)


@case("concurrent", "two-trains-same-out")
def _(c: Ctx):
    c.data()
    argv = [
        sys.executable,
        "-m",
        "lowres",
        "-q",
        "train",
        "--method",
        "SM",
        "--data",
        "my.toml",
        "--epochs",
        "25",
        "--device",
        "cpu",
        "--out",
        "ck",
        "--no-progress",
    ]
    ps = []
    for _ in range(2):
        ps.append(
            subprocess.Popen(
                argv,
                cwd=c.dir,
                env=c.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        )
        c.procs.append(ps[-1])
        time.sleep(2)
    outs = [p.communicate(timeout=max(5, c.deadline - time.monotonic() - 20)) for p in ps]
    errs = [e.decode("utf-8", "replace") for _, e in outs]
    rcs = [p.returncode for p in ps]
    tb = any(TRACEBACK in e for e in errs)
    v = Verdict(False, "", rcs[1], 0, tb)
    if tb:
        v.reason = "traceback: " + next(e for e in errs if TRACEBACK in e).strip()[-100:]
        return v
    # one of them may refuse in one line; the checkpoint must load and be complete
    bad = [(r, e) for r, e in zip(rcs, errs, strict=True) if r not in (0, 2)]
    refusals = [e for r, e in zip(rcs, errs, strict=True) if r == 2]
    if bad or 0 not in rcs:
        v.reason = f"exits {rcs}"
        return v
    if any(len([ln for ln in e.splitlines() if ln.startswith("Error: ")]) != 1 for e in refusals):
        v.reason = "refusal is not one Error line"
        return v
    check = c.py(
        "import sys; from lowres.checkpoint import load_checkpoint; "
        "load_checkpoint('ck'); print('ok')",
        check=False,
    )
    if check.rc != 0:
        v.reason = "checkpoint in ck does not load: " + (check.err.strip().splitlines() or [""])[-1]
        return v
    v.ok, v.reason = True, f"exits {rcs}, checkpoint loads"
    return v


# ---------------------------------------------------------------------------------------------
# disk


def _fill(path: Path, leave: int) -> None:
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    with open(path / "filler.bin", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))


def _disk(c: Ctx, where: str) -> Verdict:
    c.data()
    env = None
    args = c.sweep()
    if where == "out":
        mnt = c.mount_tmpfs("full")
        _fill(mnt, 40_000)
        args = c.sweep(out="full/out")
    elif where == "model-cache":
        c.mount_tmpfs("full")
        args = c.sweep("--model-cache", "full/models")
    elif where == "lowres-cache":
        mnt = c.mount_tmpfs("full")
        _fill(mnt, 4096)
        env = c.env_with(LOWRES_CACHE=c.p("full/cache"))
    elif where == "train-out":
        c.mount_tmpfs("full")
        args = [
            "train",
            "--method",
            "SM",
            "--data",
            "my.toml",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--out",
            "full/ck",
            "--no-progress",
        ]

    def allowed(p: str) -> bool:
        return p in ("full/", "full/models/") or legit_cache(p.removeprefix("full/"))

    return c.expect(args, "bad", env=env, allowed=allowed)


@case("disk", "full-out-folder")
def _(c: Ctx):
    return _disk(c, "out")


@case("disk", "full-model-cache")
def _(c: Ctx):
    return _disk(c, "model-cache")


@case("disk", "full-lowres-cache-decode")
def _(c: Ctx):
    return _disk(c, "lowres-cache")


@case("disk", "full-train-out")
def _(c: Ctx):
    return _disk(c, "train-out")


# ---------------------------------------------------------------------------------------------
# traceback


def _sidecar(c: Ctx, **changes) -> Verdict:
    c.data()
    trained_ckpt(c)
    edit_sidecar(c, "ckpt", **changes)
    return c.expect(c.sweep(models="./ckpt"), "bad")


@case("traceback", "sidecar-embed-dim-string")
def _(c: Ctx):
    return _sidecar(c, embed_dim="abc")


@case("traceback", "sidecar-model-kwargs-null")
def _(c: Ctx):
    return _sidecar(c, model_kwargs=None)


@case("traceback", "sidecar-num-classes-1e12")
def _(c: Ctx):
    return _sidecar(c, num_classes=10**12)


@case("traceback", "sidecar-adapter-list")
def _(c: Ctx):
    return _sidecar(c, adapter=[1, 2])


@case("traceback", "sidecar-model-kwargs-unknown-key")
def _(c: Ctx):
    return _sidecar(c, model_kwargs={"embed_dim": 128, "in_channels": 1, "bogus": 3})


@case("traceback", "sidecar-method-int")
def _(c: Ctx):
    return _sidecar(c, method=7)


def _marker(c: Ctx, text: str) -> Verdict:
    c.data()
    c.setup(*c.sweep())
    for d in model_dirs(c):
        (d / "lowres-cache.json").write_text(text)
    # a fresh --out so only the cache marker is in the way
    return c.expect(
        c.sweep(out="out2"),
        "either",
        correct=lambda r: same_files(c, "out2", "out"),
        allowed=lambda p: legit_cache(p) or p.startswith("out2/"),
    )


@case("traceback", "cache-marker-garbage")
def _(c: Ctx):
    return _marker(c, "\x00garbage{{")


@case("traceback", "cache-marker-json-list")
def _(c: Ctx):
    return _marker(c, "[1, 2, 3]")


@case("traceback", "cache-marker-checkpoint-int")
def _(c: Ctx):
    return _marker(c, json.dumps({"checkpoint": 5, "hash": "x"}))


@case("traceback", "truncated-cell-npz-rerun")
def _(c: Ctx):
    c.data()
    c.setup(*c.sweep())
    shutil.copytree(c.p("out"), c.p("first"))
    truncate(first_cell(c))
    return c.expect(
        c.sweep(),
        "either",
        correct=lambda r: same_files(c, "out", "first"),
        allowed=lambda p: legit_cache(p) or p.startswith("out/"),
    )


@case("traceback", "garbage-cell-json-rerun")
def _(c: Ctx):
    c.data()
    c.setup(*c.sweep())
    shutil.copytree(c.p("out"), c.p("first"))
    first_cell(c, ext=".json").write_text("{[not json")
    return c.expect(
        c.sweep(),
        "either",
        correct=lambda r: same_files(c, "out", "first"),
        allowed=lambda p: legit_cache(p) or p.startswith("out/"),
    )


@case("traceback", "merge-truncated-shard-npz")
def _(c: Ctx):
    c.data()
    for i in (1, 2):
        c.setup(*c.sweep("--shard", f"{i}/2", out=f"s{i}", models="SM,SM+R(0.01)", scales="1"))
    truncate(first_cell(c, out="s1", prefix=""))
    return c.expect(["merge", "--no-plot", "merged", "s1", "s2"], "bad")


@case("traceback", "merge-garbage-shard-json")
def _(c: Ctx):
    c.data()
    for i in (1, 2):
        c.setup(*c.sweep("--shard", f"{i}/2", out=f"s{i}", models="SM,SM+R(0.01)", scales="1"))
    first_cell(c, out="s2", prefix="", ext=".json").write_text("[]")
    return c.expect(["merge", "--no-plot", "merged", "s1", "s2"], "bad")


@case("traceback", "non-utf8-identity-folder")
def _(c: Ctx):
    c.data()
    bad = os.path.join(os.fsencode(c.p("faces")), b"caf\xe9_\xff")
    os.mkdir(bad)
    for j, img in enumerate(face_images(1, 4, seed=9)["id00"]):
        Image.fromarray(img, "L").save(
            os.path.join(bad, f"img{j}.png".encode()).decode("utf-8", "surrogateescape")
        )
    return c.expect(
        c.sweep(), "either", correct=lambda r: (c.p("out/results.csv").is_file(), "results written")
    )


def _manifest(c: Ctx, text: str, want="bad") -> Verdict:
    c.data()
    c.p("bad.toml").write_text(text)
    return c.expect(c.sweep(data="bad.toml"), want)


@case("traceback", "manifest-image-pattern-int")
def _(c: Ctx):
    return _manifest(c, manifest_text(proto_extra="image_pattern = 5"))


@case("traceback", "manifest-root-table")
def _(c: Ctx):
    return _manifest(c, manifest_text(root="x").replace('root = "x"', "root = {a = 1}"))


@case("traceback", "manifest-description-table")
def _(c: Ctx):
    t = manifest_text().replace('description = "hostile matrix data"', "description = {a = 1}")
    return _manifest(c, t)


@case("traceback", "manifest-image-size-strings")
def _(c: Ctx):
    return _manifest(c, manifest_text().replace("[28, 24]", '["28", "24"]'))


@case("traceback", "manifest-n-folds-1e30")
def _(c: Ctx):
    return _manifest(c, manifest_text().replace("n_folds = 4", "n_folds = 1000000000000000000"))


@case("traceback", "manifest-extensions-string")
def _(c: Ctx):
    return _manifest(c, manifest_text(extra='extensions = "png"'))


@case("traceback", "manifest-protocol-files-list")
def _(c: Ctx):
    return _manifest(c, manifest_text(proto_extra="files = [1, 2]"))


def _pairs(c: Ctx, pair_lines: list[str], header: str) -> Verdict:
    c.data()
    for ident in sorted(os.listdir(c.p("faces"))):
        for j in range(4):
            os.rename(
                c.p(f"faces/{ident}/img{j}.png"), c.p(f"faces/{ident}/{ident}_{j + 1:04d}.png")
            )
    text = header + "\n" + "\n".join(pair_lines) + "\n"
    c.p("pairs.txt").write_text(text)
    sha = hashlib.sha256(text.encode()).hexdigest()
    c.p("pairs.toml").write_text(
        'name = "tinypairs"\nkind = "pairs"\nroot = "faces"\nimage_size = [28, 24]\n'
        'channels = 1\nextensions = ["png"]\n[protocol]\ntype = "lfw-pairs"\nn_folds = 2\n'
        'default = "view2"\nimage_pattern = "{name}/{name}_{num:04d}.png"\n'
        f'[protocol.files.view2]\npath = "pairs.txt"\nsha256 = "{sha}"\n'
    )
    return c.expect(c.sweep(data="pairs.toml", models="SM"), "bad")


@case("traceback", "pairs-file-image-1e12")
def _(c: Ctx):
    lines = [
        "id00 1 2",
        "id01 1 1000000000000",
        "id02 1 id03 2",
        "id04 1 id05 2",
        "id06 1 2",
        "id07 1 3",
        "id08 1 id09 2",
        "id10 1 id11 2",
    ]
    return _pairs(c, lines, "2\t2")


@case("traceback", "pairs-file-image-2e64")
def _(c: Ctx):
    lines = [
        "id00 1 2",
        f"id01 1 {HUGE}",
        "id02 1 id03 2",
        "id04 1 id05 2",
        "id06 1 2",
        "id07 1 3",
        "id08 1 id09 2",
        "id10 1 id11 2",
    ]
    return _pairs(c, lines, "2\t2")


REC_CODE = """
import os, struct, sys, torch, numpy as np
from lowres.data.insightface import write_rec_pack
rng = np.random.default_rng(0)
imgs, labels = [], []
os.makedirs("pack", exist_ok=True)
for i in range(12):
    base = rng.integers(0, 256, (28, 24))
    for j in range(4):
        imgs.append(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))
        labels.append(i)
t = torch.from_numpy(np.stack(imgs))[:, None]
rec = write_rec_pack("pack", t, labels)
bad = float(sys.argv[1])
data = bytearray(open(rec, "rb").read())
old = struct.pack("<IfQQ", 0, 5.0, 21, 0)  # record 21: label 5
i = data.index(old)
data[i:i + len(old)] = struct.pack("<IfQQ", 0, bad, 21, 0)
open(rec, "wb").write(bytes(data))
"""


def _rec(c: Ctx, label: str) -> Verdict:
    c.py(REC_CODE, label)
    return c.expect(c.sweep(data="pack/train.rec"), "bad")


@case("traceback", "rec-label-nan")
def _(c: Ctx):
    return _rec(c, "nan")


@case("traceback", "rec-label-1e30")
def _(c: Ctx):
    return _rec(c, "1e30")


@case("traceback", "rec-label-negative")
def _(c: Ctx):
    return _rec(c, "-3")


@case("traceback", "sweep-seed-2**64+1")
def _(c: Ctx):
    c.data()
    return c.expect(c.sweep("--seeds", HUGE), "bad")


@case("traceback", "sweep-fold-2**64+1")
def _(c: Ctx):
    c.data()
    return c.expect(c.sweep("--folds", HUGE), "bad")


@case("traceback", "sweep-batch-size-2**64+1")
def _(c: Ctx):
    c.data()
    return c.expect(
        c.sweep("--batch-size", HUGE),
        "either",
        correct=lambda r: (c.p("out/results.csv").is_file(), "results written"),
    )


@case("traceback", "train-seed-2**64+1")
def _(c: Ctx):
    c.data()
    return c.expect(
        [
            "train",
            "--method",
            "SM",
            "--data",
            "my.toml",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--out",
            "ck",
            "--seed",
            HUGE,
            "--no-progress",
        ],
        "bad",
    )


@case("traceback", "train-fold-2**64+1")
def _(c: Ctx):
    c.data()
    return c.expect(
        [
            "train",
            "--method",
            "SM",
            "--data",
            "my.toml",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--out",
            "ck",
            "--fold",
            HUGE,
            "--no-progress",
        ],
        "bad",
    )


@case("traceback", "train-lr-nan")
def _(c: Ctx):
    c.data()
    return c.expect(
        [
            "train",
            "--method",
            "SM",
            "--data",
            "my.toml",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--out",
            "ck",
            "--lr",
            "nan",
            "--no-progress",
        ],
        "bad",
    )


@case("traceback", "sweep-variant-bad-key")
def _(c: Ctx):
    c.data()
    return c.expect(c.sweep("--variant", "X=SM;bogus=1", models="SM,X"), "bad")


@case("traceback", "sweep-degrade-garbage")
def _(c: Ctx):
    c.data()
    return c.expect(c.sweep("--degrade", "bicubic>>)(zz"), "bad")


# ---------------------------------------------------------------------------------------------
# smaller


@case("smaller", "decode-cache-wrong-n")
def _(c: Ctx):
    c.data()
    c.setup(*c.sweep())
    c.py(
        "import glob, torch\n"
        "for f in glob.glob('cache/decoded/*.pt'):\n"
        "    b = torch.load(f, weights_only=True)\n"
        "    n, *rest = b['images'].shape\n"
        "    b['images'] = torch.zeros((n - 5, *rest), dtype=torch.uint8)\n"
        "    torch.save(b, f)\n"
    )
    return c.expect(
        c.sweep(out="out2"),
        "ok",
        correct=lambda r: same_files(c, "out2", "out"),
        allowed=lambda p: True,
    )


@case("smaller", "decode-cache-random-bytes")
def _(c: Ctx):
    c.data()
    c.setup(*c.sweep())
    for f in c.p("cache/decoded").glob("*.pt"):
        f.write_bytes(os.urandom(777))
    return c.expect(
        c.sweep(out="out2"),
        "ok",
        correct=lambda r: same_files(c, "out2", "out"),
        allowed=lambda p: True,
    )


def _ext_bad(c: Ctx, kind: str) -> Verdict:
    c.data()
    m = ts_model(c, kind)
    v = c.expect(c.sweep(models=m), "bad")
    if v.ok and c.p("out").exists():
        v.ok, v.reason = False, "refused but left the output folder behind"
    return v


@case("smaller", "external-nan-features")
def _(c: Ctx):
    return _ext_bad(c, "nan")


@case("smaller", "external-inf-features")
def _(c: Ctx):
    return _ext_bad(c, "inf")


@case("smaller", "external-constant-features")
def _(c: Ctx):
    c.data()
    m = ts_model(c, "const")

    def correct(res):
        import csv

        with open(c.p("out/results.csv"), newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["model"] == "const.pt"]
        tars = [float(r["value"]) for r in rows if r["metric"] == "tar"]
        if not tars:
            return False, "no TAR rows for the constant model"
        if any(t != 0.0 for t in tars):
            return False, f"constant features scored TAR {max(tars)} (must be 0)"
        return True, f"exit 0, {len(tars)} TAR rows all 0"

    return c.expect(c.sweep(models=m), "either", correct=correct)


@case("smaller", "external-good-model-baseline")
def _(c: Ctx):
    c.data()
    m = ts_model(c, "good")
    return c.expect(
        c.sweep(models=m),
        "ok",
        correct=lambda r: (c.p("out/results.csv").is_file(), "results written"),
    )


@case("smaller", "truncated-cached-model")
def _(c: Ctx):
    c.data()
    c.setup(*c.sweep())
    for d in model_dirs(c):
        truncate(d / "model.safetensors")
    v = c.expect(
        c.sweep(out="out2"),
        "either",
        correct=lambda r: same_files(c, "out2", "out"),
        allowed=lambda p: legit_cache(p) or (p.startswith("out2/")),
    )
    if v.ok and v.rc == 2 and c.p("out2").exists():
        v.ok, v.reason = False, "refused but left an (empty) out2 folder"
    return v


@case("smaller", "no-genuine-pairs")
def _(c: Ctx):
    c.data(n_img=1, extra="min_images_per_identity = 1")
    v = c.expect(c.sweep(), "bad")
    if v.ok and model_dirs(c):
        v.reason += " (a trained model was left in the cache)"
    return v


@case("smaller", "test-fold-single-identity")
def _(c: Ctx):
    c.data(n_ids=4, n_folds=4)
    return c.expect(c.sweep(), "bad")


@case("smaller", "decompression-bomb-image")
def _(c: Ctx):
    # 10000 x 10000 = 1e8 pixels: above PIL's warning limit (89.5 Mpx), below its error limit.
    # `data show` decodes every image without training on them.
    for i in range(4):
        d = c.p(f"big/id{i}")
        d.mkdir(parents=True)
        for j in range(2):
            Image.new("L", (10000, 10000), 40 * i + j).save(d / f"img{j}.png")
    c.p("big.toml").write_text(
        manifest_text(name="big", root="big", size=(10000, 10000), n_folds=2)
    )
    return c.expect(
        ["data", "show", "big.toml"],
        "either",
        allowed=legit_cache,
        correct=lambda r: (True, "decoded without warnings"),
    )


@case("smaller", "empty-identity-folder")
def _(c: Ctx):
    c.data()
    c.p("faces/zz_empty").mkdir()
    return c.expect(
        c.sweep(), "either", correct=lambda r: (c.p("out/results.csv").is_file(), "results written")
    )


@case("smaller", "stray-non-image-file")
def _(c: Ctx):
    c.data()
    c.p("faces/id00/notes.txt").write_text("hello")
    c.p("faces/.DS_Store").write_bytes(b"\0\1")
    return c.expect(
        c.sweep(), "either", correct=lambda r: (c.p("out/results.csv").is_file(), "results written")
    )


# ---------------------------------------------------------------------------------------------
# driver


def run_case(cls: str, name: str, fn, base: Path) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"{cls}-{name[:30]}-", dir=base))
    c = Ctx(name, root)
    t0 = time.monotonic()
    try:
        v = fn(c)
    except Skip as exc:
        v = Verdict(True, f"SKIP: {exc}", skip=True)
    except SetupFailed as exc:
        v = Verdict(False, f"SETUP: {exc}")
    except Exception as exc:  # the harness itself
        tb = traceback.format_exc().strip().splitlines()[-1]
        v = Verdict(False, f"HARNESS: {type(exc).__name__}: {exc} ({tb[:80]})")
    finally:
        c.cleanup()
    shutil.rmtree(root, ignore_errors=True)
    return {
        "class": cls,
        "case": name,
        "status": "SKIP" if v.skip else ("PASS" if v.ok else "FAIL"),
        "exit": v.rc,
        "stderr_lines": v.n_err,
        "traceback": v.tb,
        "files": list(v.files),
        "reason": v.reason,
        "stderr_tail": v.stderr_tail,
        "seconds": round(time.monotonic() - t0, 1),
    }


def fmt_row(r: dict) -> str:
    a, ch, rm = r["files"]
    tb = "traceback" if r["traceback"] else "no-tb"
    return (
        f"{r['status']:<4}  {r['class']:<10}  {r['case']:<40}  (exit {r['exit']}, "
        f"{r['stderr_lines']} stderr lines, {tb}, files +{a} ~{ch} -{rm}, {r['reason']})"
    )


def main() -> int:
    global SRC
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=str(REPO), help="checkout whose lowres is tested")
    ap.add_argument("--only", default=None, help="run the cases whose class/name contains this")
    ap.add_argument("--jobs", type=int, default=2, help="cases in parallel (default 2)")
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    ap.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    SRC = Path(args.src).resolve()
    if not (SRC / "lowres" / "__init__.py").is_file():
        print(f"Error: {SRC} holds no lowres package; give --src a checkout", file=sys.stderr)
        return 2
    todo = [(cl, n, f) for cl, n, f in CASES if not args.only or args.only in f"{cl}/{n}"]
    names = [f"{cl}/{n}" for cl, n, _ in CASES]
    assert len(names) == len(set(names)), "duplicate case names"
    base = Path(tempfile.mkdtemp(prefix="lowres-hostile-"))
    print(f"hostile matrix: {len(todo)} cases, src {SRC}, {args.jobs} in parallel", flush=True)
    t0 = time.monotonic()
    results = []

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futs = {pool.submit(run_case, cl, n, f, base): (cl, n) for cl, n, f in todo}
            for fut in concurrent.futures.as_completed(futs):
                r = fut.result()
                results.append(r)
                print(fmt_row(r), flush=True)
    finally:
        with MOUNTS_LOCK:
            for m in list(MOUNTS):
                subprocess.run(["umount", "-l", m], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
    wall = time.monotonic() - t0
    order = {f"{cl}/{n}": i for i, (cl, n, _) in enumerate(CASES)}
    results.sort(key=lambda r: order[f"{r['class']}/{r['case']}"])
    print("\nsummary (case order):")
    for r in results:
        print(fmt_row(r))
    print("\ntotals per class:")
    classes = sorted(
        {r["class"] for r in results}, key=lambda k: [r["class"] for r in results].index(k)
    )
    for cl in classes:
        rs = [r for r in results if r["class"] == cl]
        clean = sum(r["status"] == "PASS" for r in rs)
        skips = sum(r["status"] == "SKIP" for r in rs)
        print(
            f"  {cl:<10} clean {clean} / {len(rs) - skips}"
            + (f" ({skips} skipped)" if skips else "")
        )
    counted = [r for r in results if r["status"] != "SKIP"]
    clean = sum(r["status"] == "PASS" for r in counted)
    print(f"overall clean {clean} / {len(counted)}  (wall {wall:.0f} s, src {SRC})")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "src": str(SRC),
                    "wall_s": round(wall, 1),
                    "clean": clean,
                    "total": len(counted),
                    "cases": results,
                },
                indent=2,
            )
        )
    return 0 if clean == len(counted) else 1


if __name__ == "__main__":
    sys.exit(main())
