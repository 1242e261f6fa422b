"""Small TinyFace and SCface trees in each set's published layout, for the loader and sweep
tests: a few identities of tiny images written with PIL, of varying sizes like the real crops.

Each identity has a seeded base pattern and every image of it is that pattern plus seeded noise,
resized to a seeded size, so a model (even raw pixels) can tell identities apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TINYFACE_TRAIN = {f"{1000 + i}": 3 for i in range(6)}
"""Training_Set: identity -> images."""
TINYFACE_GALLERY = {"1": 1, "2": 2, "3": 1, "4": 1, "5": 2, "6": 1, "7": 1}
"""Gallery_Match: identity -> images."""
TINYFACE_PROBE = {"1": 2, "2": 1, "3": 2, "4": 1, "5": 1, "6": 2, "7": 1}
"""Probe: identity -> images."""
TINYFACE_DISTRACTORS = 9
"""Gallery_Distractor images (in two sub-folders)."""

SCFACE_SUBJECTS = ("001", "002", "003", "004", "005", "006", "007", "008")
SCFACE_CAMERAS = (1, 2, 3, 4, 5, 6)  # 6 is an infrared camera: not read by default


def _face(rng: np.random.Generator, base: np.ndarray, size: tuple[int, int], grey: bool):
    """``base`` plus noise, resized to ``size`` (H, W)."""
    pixels = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels[..., 0] if grey else pixels)
    return img.resize((size[1], size[0]), Image.Resampling.BILINEAR)


def _bases(names, seed: int, shape=(16, 16, 3)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.uniform(0, 255, shape) for n in names}


def write_tinyface(root: Path, seed: int = 0) -> Path:
    """``root/tinyface`` in the TinyFace release layout; returns that folder."""
    top = root / "tinyface"
    rng = np.random.default_rng(seed)
    test_ids = sorted(set(TINYFACE_GALLERY) | set(TINYFACE_PROBE))
    bases = _bases([*TINYFACE_TRAIN, *test_ids, "distractor"], seed + 1)

    def write(path: Path, identity: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        size = (int(rng.integers(14, 24)), int(rng.integers(12, 20)))
        _face(rng, bases[identity], size, grey=False).save(path, quality=95)

    for ident, count in TINYFACE_TRAIN.items():
        for k in range(1, count + 1):
            write(top / "Training_Set" / ident / f"{ident}_{k}.jpg", ident)
    for folder, counts in (("Gallery_Match", TINYFACE_GALLERY), ("Probe", TINYFACE_PROBE)):
        for ident, count in counts.items():
            for k in range(1, count + 1):
                write(top / "Testing_Set" / folder / f"{ident}_{k}.jpg", ident)
    for k in range(TINYFACE_DISTRACTORS):
        bases["distractor"] = rng.uniform(0, 255, (16, 16, 3))  # a new person each
        sub = "a" if k % 2 else "b"
        write(top / "Testing_Set" / "Gallery_Distractor" / sub / f"d_{k:03d}.jpg", "distractor")
    return top


def write_scface(root: Path, seed: int = 0) -> Path:
    """``root/SCface_database`` in the SCface layout (``cam_N`` camera folders, as some copies
    have them); returns that folder."""
    top = root / "SCface_database"
    rng = np.random.default_rng(seed)
    bases = _bases(SCFACE_SUBJECTS, seed + 1)
    for subject in SCFACE_SUBJECTS:
        path = top / "mugshot_frontal_cropped_all" / f"{subject}_frontal.JPG"
        path.parent.mkdir(parents=True, exist_ok=True)
        _face(rng, bases[subject], (30, 24), grey=False).save(path, format="JPEG", quality=95)
        for distance, side in ((1, 10), (2, 16), (3, 24)):
            for cam in SCFACE_CAMERAS:
                folder = top / f"surveillance_cameras_distance_{distance}" / f"cam_{cam}"
                folder.mkdir(parents=True, exist_ok=True)
                img = _face(rng, bases[subject], (side + 2, side), grey=cam == 6)
                img.save(folder / f"{subject}_cam{cam}_{distance}.jpg", quality=95)
    return top


def write_manifest(path: Path, kind: str, root: Path, **protocol) -> Path:
    """A manifest of ``kind`` (tinyface or scface) over ``root``; ``protocol`` adds
    ``[protocol]`` keys (lists written as TOML arrays)."""
    name = path.stem
    size = "[20, 16]" if kind == "tinyface" else "[24, 20]"
    lines = [
        f'name = "{name}"',
        f'kind = "{kind}"',
        f'root = "{root.as_posix()}"',
        f"image_size = {size}",
        "channels = 3",
        "[source]",
        'url = "https://example.org/get-it"',
        f'text = "unpack {kind} so that the published folders sit under root"',
    ]
    if protocol:
        lines.append("[protocol]")
        lines += [f"{k} = {v!r}".replace("'", '"') for k, v in protocol.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
