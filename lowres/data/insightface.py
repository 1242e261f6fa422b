"""InsightFace data formats read without MXNet: ``.bin`` verification sets and RecordIO packs.

**Verification sets** (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``): a pickle of
``(images, issame)`` where ``images`` is a list of 2P encoded JPEG/PNG byte strings and
``issame`` P booleans (a list or a numpy bool array); images ``2k`` and ``2k+1`` form pair ``k``.
Pickles can run arbitrary code, so they are read by :class:`BinUnpickler`, which admits no
global except the numpy names a bool array needs (``_reconstruct``, ``ndarray``, ``dtype``,
and ``_frombuffer`` for pickle protocol 5); anything else is refused before it is imported.
The P pairs are cut into ``min(10, P)`` contiguous folds (``fold = k * n_folds // P``: LFW's
10 folds of 600 for lfw.bin). A ``.bin`` holds no identities: image labels are
*pseudo-identities*, one per genuine pair (both images) and one per image of an impostor pair,
so genuine pairs share a label and impostor pairs do not; only the fixed pair list
(``FaceDataset.pairs``) is meaningful, and it is what sweeps score when a dataset has one.

**RecordIO packs** (``train.rec`` + ``train.idx``): MXNet's ``MXIndexedRecordIO`` layout. Each
record is framed as ``uint32 magic 0xced7230a``, ``uint32 lrecord`` (upper 3 bits continuation
flag, lower 29 bits length), the payload, zero padding to 4 bytes; dmlc's writer splits a
payload at every 4-aligned copy of the magic (flags 1 = first, 2 = middle, 3 = last part, the
magic itself dropped) and the reader joins the parts back with the magic. A payload is an
IRHeader ``struct '<IfQQ'`` (flag, label, id, id2), then ``flag`` float32 labels when
``flag > 0``, then the encoded image. ``train.idx`` holds ``key<TAB>byte offset`` lines.
InsightFace's convention: record 0 is a header whose labels are ``(first_identity_record,
end)``; image records are keys ``1 .. first_identity_record - 1``; identity records hold the
``(start, end)`` key range of each identity's images. Packs without that header (flag 0 on
record 0) are read as every key of the index, in index order.

Images are decoded once to uint8 (N, C, H, W) (grey stays 1 channel, anything else RGB; a
mixed set becomes RGB) with Pillow restricted to JPEG/PNG/BMP/PPM, and cached with
:func:`lowres.data.images.cached_images` keyed by the sha256 of the files.
"""

from __future__ import annotations

import hashlib
import io
import math
import mmap
import os
import pickle
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lowres.data.dataset import FaceDataset
from lowres.data.images import RestartInRGB, cached_image_stream, cached_images
from lowres.data.protocols import PairList
from lowres.data.stream import chunked, should_stream
from lowres.errors import DataError

__all__ = [
    "IR_FORMAT",
    "MAGIC",
    "BinUnpickler",
    "IRHeader",
    "RecordReader",
    "RecordWriter",
    "bin_pairs",
    "decode_bytes",
    "encode_image",
    "load_bin",
    "load_rec_pack",
    "pack_record",
    "read_bin",
    "rec_pack_paths",
    "unpack_record",
    "write_bin",
    "write_rec_pack",
]

MAGIC = 0xCED7230A
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)  # 24
_LEN_MASK = (1 << 29) - 1
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FORMATS = ["JPEG", "PNG", "BMP", "PPM"]  # never EPS & co., whose decoders run external tools
_ENCODE = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "bmp": "BMP"}


# ----------------------------------------------------------------------------------------------
# image bytes
# ----------------------------------------------------------------------------------------------


def decode_bytes(data: bytes, channels: int | None, where: str) -> torch.Tensor:
    """Decode one encoded JPEG/PNG/BMP/PPM image to uint8 (C, H, W).

    Args:
        data: the encoded file bytes.
        channels: 1 grey, 3 RGB, None: grey stays 1, anything else 3.
        where: what to call the image in an error (e.g. "lfw.bin image 7").

    Raises:
        DataError: the bytes are not a decodable image of an allowed format.
    """
    try:
        with Image.open(io.BytesIO(data), formats=_FORMATS) as im:
            im.load()
            if im.mode in ("I", "I;16", "I;16B", "F"):
                raise DataError(f"{where} is a 16-bit/float image; store 8-bit JPEG/PNG instead")
            if channels == 1 or (channels is None and im.mode in ("1", "L", "LA")):
                im = im.convert("L")
            else:
                im = im.convert("RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"cannot decode {where} ({reason}); the file is corrupt: re-download it"
        ) from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy(order="C"))  # PIL's buffer is read-only


def encode_image(image: torch.Tensor, fmt: str = "png", quality: int = 95) -> bytes:
    """Encode uint8 (C, H, W), C in {1, 3}, as PNG (lossless), JPEG or BMP bytes."""
    key = fmt.lower()
    if key not in _ENCODE:
        raise DataError(f"unknown image format {fmt!r}; use one of {', '.join(_ENCODE)}")
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] not in (1, 3):
        raise DataError(
            f"images must be uint8 (C, H, W) with C in 1 or 3, got {image.dtype} "
            f"{tuple(image.shape)}"
        )
    arr = image.numpy()
    pil = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
    buf = io.BytesIO()
    # PNG level 1: lossless either way, and several times faster than the default 6
    kwargs = {"JPEG": {"quality": quality}, "PNG": {"compress_level": 1}}.get(_ENCODE[key], {})
    pil.save(buf, format=_ENCODE[key], **kwargs)
    return buf.getvalue()


def _check_images(images: torch.Tensor, what: str) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        raise DataError(
            f"{what}: images must be a uint8 (N, C, H, W) tensor, got "
            f"{getattr(images, 'dtype', type(images).__name__)}"
        )
    if images.shape[1] not in (1, 3):
        raise DataError(f"{what}: images must have 1 or 3 channels, got {images.shape[1]}")


def _decode_all(blobs: Sequence[bytes], channels: int | None, where: str) -> torch.Tensor:
    """Decode into one preallocated uint8 (N, C, H, W) tensor (no per-image list is kept).

    With ``channels=None`` the set is grey if every image is, else RGB: a colour image met after
    grey ones restarts the pass in RGB (rare: real sets are all one or the other).
    """
    if not blobs:
        raise DataError(f"{where} holds no images")
    first = decode_bytes(blobs[0], channels, f"{where} image 0")
    target = first.shape[0]
    out = torch.empty((len(blobs), *first.shape), dtype=torch.uint8)
    out[0] = first
    for i in range(1, len(blobs)):
        img = decode_bytes(blobs[i], channels, f"{where} image {i}")
        if img.shape[0] != target:
            if target == 1:
                return _decode_all(blobs, 3, where)
            img = img.expand(3, -1, -1)
        if img.shape[1:] != first.shape[1:]:
            raise DataError(
                f"{where} image {i} is {img.shape[1]}x{img.shape[2]} but image 0 is "
                f"{first.shape[1]}x{first.shape[2]}; all images must share one size"
            )
        out[i] = img
    return out


def _rec_chunks(
    rec: Path, idx: Path, keys: Sequence[int], channels: int | None
) -> Iterator[torch.Tensor]:
    """The pack's images decoded in chunks, for :func:`~lowres.data.images.cached_image_stream`."""
    with RecordReader(rec, idx) as reader:
        first = decode_bytes(reader.read_record(keys[0])[1], channels, f"{rec.name} image 0")

        def one(i: int) -> torch.Tensor:
            img = decode_bytes(reader.read_record(keys[i])[1], channels, f"{rec.name} image {i}")
            if img.shape[0] != first.shape[0]:
                if first.shape[0] == 1:
                    raise RestartInRGB
                img = img.expand(3, -1, -1)
            if img.shape[1:] != first.shape[1:]:
                raise DataError(
                    f"{rec.name} image {i} is {img.shape[1]}x{img.shape[2]} but image 0 is "
                    f"{first.shape[1]}x{first.shape[2]}; all images must share one size"
                )
            return img

        for chunk in chunked(len(keys), one):
            reader.drop_pages()
            yield chunk


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def _cached(key: str, tag: str, decode, cache_dir) -> torch.Tensor:
    # The key goes into the tag and no file list is passed: content_key would read whole packs
    # into memory to hash them, while _digest streams them.
    return cached_images([], decode, tag=f"{tag}-{key}", cache_dir=cache_dir)


# ----------------------------------------------------------------------------------------------
# .bin verification sets
# ----------------------------------------------------------------------------------------------


def _numpy_global(name: str):
    if name == "ndarray":
        return np.ndarray
    if name == "dtype":
        return np.dtype
    if name == "_frombuffer":
        try:
            from numpy._core.numeric import _frombuffer
        except ImportError:  # numpy < 2
            from numpy.core.numeric import _frombuffer
        return _frombuffer
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    # pickle protocol 5 (Python 3.8+'s HIGHEST_PROTOCOL) rebuilds arrays from a buffer instead
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class BinUnpickler(pickle.Unpickler):
    """Unpickler for InsightFace ``.bin`` files that imports nothing a ``.bin`` does not need.

    Lists, tuples, bytes and bools are pickle opcodes, not globals, so they need nothing; a
    numpy bool array needs ``_reconstruct`` (``numpy.core`` before numpy 2, ``numpy._core``
    after), ``ndarray`` and ``dtype``, or, pickled with protocol 5, ``_frombuffer`` and
    ``dtype``. Object arrays are rejected after loading. Every other global (``os.system``,
    ``builtins.eval``, ``subprocess.Popen``, ...) raises DataError before it is imported, so a
    crafted file cannot run code. Strings load as bytes, as InsightFace reads them
    (``encoding="bytes"``).
    """

    def __init__(self, file, path: str | Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return _numpy_global(name)
        raise DataError(
            f"refusing to load {self._path}: it asks to import {module}.{name}, which an "
            "InsightFace .bin never contains"
        )

    def persistent_load(self, pid):
        raise DataError(
            f"refusing to load {self._path}: it holds a persistent reference, which an "
            "InsightFace .bin never contains"
        )


def _as_bool(value, path: Path, k: int) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    raise DataError(
        f"{path}: issame entry {k} is {type(value).__name__} {value!r:.40}, expected a bool"
    )


def read_bin(path: str | Path) -> tuple[list[bytes], torch.Tensor]:
    """Read a ``.bin`` safely into its encoded images and pair flags (nothing is decoded).

    Returns:
        ``(blobs, issame)``: 2P encoded images and bool (P,).

    Raises:
        DataError: unreadable file, a pickle that asks for anything but numpy bool arrays,
            not an ``(images, issame)`` pair, a count mismatch, or a non-bytes image entry
            (the message names its index).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} not found; give the path of an InsightFace .bin") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    return _parse_bin(raw, path)


def _parse_bin(raw: bytes, path: Path) -> tuple[list[bytes], torch.Tensor]:
    try:
        obj = BinUnpickler(io.BytesIO(raw), path).load()
    except DataError:
        raise
    except Exception as exc:  # any malformed pickle: EOF, bad opcode, bad numpy state, ...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"{path} is not a readable InsightFace .bin ({type(exc).__name__}: {reason:.80}); "
            "re-download it"
        ) from None
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise DataError(
            f"{path} is not an InsightFace .bin: expected a pickled (images, issame) pair, got "
            f"{type(obj).__name__}"
        )
    blobs, issame = obj
    if isinstance(issame, np.ndarray):
        if issame.dtype == object or issame.ndim != 1:
            raise DataError(f"{path}: issame must be a 1-D bool array, got {issame.dtype}")
        issame = issame.tolist()
    if not isinstance(blobs, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise DataError(
            f"{path} is not an InsightFace .bin: expected (list of image bytes, list of bool), "
            f"got ({type(blobs).__name__}, {type(issame).__name__})"
        )
    flags = [_as_bool(v, path, k) for k, v in enumerate(issame)]
    if len(blobs) != 2 * len(flags) or not flags:
        raise DataError(
            f"{path} holds {len(blobs)} images and {len(flags)} pair flags; an InsightFace .bin "
            "holds 2 images per pair (images 2k and 2k+1 form pair k)"
        )
    out = []
    for i, b in enumerate(blobs):
        if isinstance(b, np.ndarray) and b.dtype == np.uint8 and b.ndim == 1:
            b = b.tobytes()
        if not isinstance(b, (bytes, bytearray)):
            raise DataError(
                f"{path}: image entry {i} is {type(b).__name__}, not encoded image bytes; the "
                "file is not an InsightFace .bin or is damaged"
            )
        out.append(bytes(b))
    return out, torch.tensor(flags, dtype=torch.bool)


def bin_pairs(issame: torch.Tensor, n_folds: int = 10) -> tuple[torch.Tensor, list[str], PairList]:
    """Pseudo-identity labels and the attached pair list of a ``.bin``'s pair flags.

    Args:
        issame: bool (P,).
        n_folds: folds of contiguous pairs; ``min(n_folds, P)`` are used.

    Returns:
        ``(labels, identities, pairs)``: int64 (2P,) labels where a genuine pair's two images
        share a label and every impostor image has its own; K names (``pair00003`` for genuine
        pair 3, ``pair00004a``/``pair00004b`` for impostor pair 4); the PairList with
        ``idx_a = 2k``, ``idx_b = 2k + 1``, ``num_*`` the 1-based image number in the file.
    """
    p = int(issame.numel())
    folds = max(1, min(int(n_folds), p))
    labels, names = [], []
    for k, same in enumerate(issame.tolist()):
        if same:
            labels += [len(names)] * 2
            names.append(f"pair{k:05d}")
        else:
            labels += [len(names), len(names) + 1]
            names += [f"pair{k:05d}a", f"pair{k:05d}b"]
    label_t = torch.tensor(labels, dtype=torch.int64)
    idx_a = torch.arange(p, dtype=torch.int64) * 2
    idx_b = idx_a + 1
    pairs = PairList(
        name_a=[names[i] for i in label_t[idx_a].tolist()],
        num_a=idx_a + 1,
        name_b=[names[i] for i in label_t[idx_b].tolist()],
        num_b=idx_b + 1,
        issame=issame.clone(),
        fold=torch.arange(p, dtype=torch.int64) * folds // p,
        idx_a=idx_a,
        idx_b=idx_b,
    )
    return label_t, names, pairs


def load_bin(
    path: str | Path,
    *,
    name: str | None = None,
    channels: int | None = None,
    n_folds: int = 10,
    cache_dir: str | Path | None = None,
    meta: dict | None = None,
) -> FaceDataset:
    """Load an InsightFace ``.bin`` verification set (lfw.bin, cfp_fp.bin, agedb_30.bin).

    Args:
        path: the ``.bin`` file.
        name: dataset name (default: the file stem, e.g. "cfp_fp").
        channels: 1 or 3 to convert; None: grey if every image is grey, else RGB.
        n_folds: contiguous pair folds (10, as in the InsightFace evaluation).
        cache_dir: decode cache (see :func:`lowres.data.images.cached_images`); False: none.
        meta: facts merged into ``FaceDataset.meta`` (manifest facts).

    Returns:
        FaceDataset with uint8 (2P, C, H, W) images, pseudo-identity labels (see the module
        docstring) and ``pairs`` attached (P pairs in ``min(n_folds, P)`` folds).

    Raises:
        DataError: see :func:`read_bin`; an undecodable image (named by index) or mixed sizes.
    """
    path = Path(path)
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} not found; give the path of an InsightFace .bin") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    blobs, issame = _parse_bin(raw, path)
    digest = hashlib.sha256(raw).hexdigest()
    del raw
    name = name or path.stem
    images = _cached(
        digest,
        f"{name}-bin-c{channels or 0}",
        lambda: _decode_all(blobs, channels, path.name),
        cache_dir,
    )
    labels, identities, pairs = bin_pairs(issame, n_folds)
    info = {
        "kind": "insightface-bin",
        "file": str(path),
        "sha256": digest,
        "pseudo_labels": True,
        "labels": "pseudo-identities: one per genuine pair, one per impostor image",
        "protocol": {"type": "lfw-pairs", "n_folds": pairs.num_folds},
    }
    info.update(meta or {})
    return FaceDataset(
        name=name, images=images, labels=labels, identities=identities, meta=info, pairs=pairs
    )


def write_bin(
    path: str | Path,
    images: torch.Tensor,
    issame: Sequence[bool] | torch.Tensor,
    fmt: str = "png",
    *,
    quality: int = 95,
) -> Path:
    """Write an InsightFace ``.bin``: a pickle of (list of encoded images, list of bool).

    Args:
        path: output file.
        images: uint8 (2P, C, H, W); images 2k and 2k+1 form pair k.
        issame: P flags, True for a genuine pair.
        fmt: "png" (lossless, so a round trip is exact) or "jpg" (as InsightFace ships them).
        quality: JPEG quality.

    Returns:
        ``path``.
    """
    _check_images(images, "write_bin")
    flags = [bool(v) for v in torch.as_tensor(issame).tolist()]
    if images.shape[0] != 2 * len(flags) or not flags:
        raise DataError(
            f"write_bin: {images.shape[0]} images for {len(flags)} pairs; give 2 images per pair"
        )
    blobs = [encode_image(img, fmt, quality) for img in images]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump((blobs, flags), fh, protocol=pickle.HIGHEST_PROTOCOL)
    return path


# ----------------------------------------------------------------------------------------------
# RecordIO
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IRHeader:
    """MXNet's image-record header.

    Attributes:
        flag: 0 for a scalar label, else the number of float32 labels that follow the header.
        label: the scalar label (flag 0) or a tuple of ``flag`` floats.
        id, id2: record ids (InsightFace: the record's key, and 0).
    """

    flag: int
    label: float | tuple[float, ...]
    id: int = 0
    id2: int = 0


def pack_record(header: IRHeader, image: bytes = b"") -> bytes:
    """Payload of one record, as ``mxnet.recordio.pack``: header, label floats, image bytes."""
    if isinstance(header.label, (tuple, list)):
        labels = np.asarray(header.label, dtype="<f4")
        head = struct.pack(IR_FORMAT, labels.size, 0.0, header.id, header.id2)
        return head + labels.tobytes() + image
    return struct.pack(IR_FORMAT, 0, float(header.label), header.id, header.id2) + image


def unpack_record(payload: bytes, where: str = "record") -> tuple[IRHeader, bytes]:
    """Inverse of :func:`pack_record`: ``(header, image bytes)``."""
    if len(payload) < IR_SIZE:
        raise DataError(f"{where} is {len(payload)} bytes, shorter than an IRHeader ({IR_SIZE})")
    flag, label, id_, id2 = struct.unpack_from(IR_FORMAT, payload)
    rest = payload[IR_SIZE:]
    if flag > 0:
        if len(rest) < 4 * flag:
            raise DataError(f"{where}: IRHeader promises {flag} labels but the record ends first")
        labels = tuple(float(v) for v in np.frombuffer(rest, dtype="<f4", count=flag))
        return IRHeader(flag, labels, id_, id2), rest[4 * flag :]
    return IRHeader(0, float(label), id_, id2), rest


def _frame(payload: bytes) -> bytes:
    """dmlc RecordIO framing of one payload (split at 4-aligned copies of the magic)."""
    if len(payload) >= 1 << 29:
        raise DataError("RecordIO records must be smaller than 512 MiB")
    out, start = [], 0
    lower = len(payload) // 4 * 4
    i = payload.find(_MAGIC_BYTES)
    while 0 <= i and i + 4 <= lower:
        if i % 4 == 0:
            flag = 1 if start == 0 else 2
            out.append(struct.pack("<II", MAGIC, (flag << 29) | (i - start)))
            out.append(payload[start:i])
            start = i + 4
        i = payload.find(_MAGIC_BYTES, i + 1)
    flag = 3 if start else 0
    tail = len(payload) - start
    out.append(struct.pack("<II", MAGIC, (flag << 29) | tail))
    out.append(payload[start:])
    out.append(b"\0" * (-len(payload) % 4))  # the tail part starts 4-aligned, like the payload
    return b"".join(out)


class RecordWriter:
    """Write an indexed RecordIO pair (``.rec`` + ``.idx``), as ``MXIndexedRecordIO(.., "w")``.

    Use as a context manager; ``write(key, payload)`` appends one record.
    """

    def __init__(self, rec: str | Path, idx: str | Path | None = None) -> None:
        self.rec = Path(rec)
        self.idx = Path(idx) if idx is not None else self.rec.with_suffix(".idx")
        self.rec.parent.mkdir(parents=True, exist_ok=True)
        self._rec = open(self.rec, "wb")
        self._idx = open(self.idx, "w", encoding="ascii")
        self._keys: set[int] = set()

    def write(self, key: int, payload: bytes) -> None:
        if key in self._keys:
            raise DataError(f"RecordIO key {key} written twice")
        self._keys.add(key)
        self._idx.write(f"{int(key)}\t{self._rec.tell()}\n")
        self._rec.write(_frame(payload))

    def close(self) -> None:
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RecordReader:
    """Random access to an indexed RecordIO pack, checked against its index on opening.

    Opening scans the record frames once (headers only) and checks that the ``.idx`` lists
    exactly one key per record and that every offset is the start of a record.

    Args:
        rec: the ``.rec`` file.
        idx: its ``.idx`` (default: same name, ``.idx`` suffix).

    Attributes:
        keys: int keys in index order.

    Raises:
        DataError: missing files, a truncated or corrupt ``.rec`` (names the record and byte
            offset), a malformed ``.idx`` line, or an index that disagrees with the ``.rec``.
    """

    def __init__(self, rec: str | Path, idx: str | Path | None = None) -> None:
        self.rec = Path(rec)
        self.idx = Path(idx) if idx is not None else self.rec.with_suffix(".idx")
        for p, what in ((self.rec, "pack"), (self.idx, "index")):
            if not p.is_file():
                raise DataError(
                    f"RecordIO {what} {p} not found; a pack needs both train.rec and train.idx"
                )
        self._offsets = self._read_index()
        self.keys = list(self._offsets)
        self._fh = open(self.rec, "rb")
        self.size = os.fstat(self._fh.fileno()).st_size
        self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if self.size else b""
        starts = self._scan()
        self._check_index(starts)

    def _read_index(self) -> dict[int, int]:
        offsets: dict[int, int] = {}
        try:
            text = self.idx.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read RecordIO index {self.idx}: {exc}") from None
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            try:
                key, offset = int(parts[0]), int(parts[1])
                if len(parts) != 2 or offset < 0:
                    raise ValueError
            except (ValueError, IndexError):
                raise DataError(
                    f"{self.idx}:{lineno}: expected 'key<TAB>offset', got {line.strip()!r:.60}"
                ) from None
            if key in offsets:
                raise DataError(f"{self.idx}:{lineno}: key {key} is listed twice")
            offsets[key] = offset
        return offsets

    def _frames(self, offset: int, record: int) -> Iterator[tuple[int, int, int]]:
        """(flag, payload start, length) of each part of the record starting at ``offset``."""
        pos, first = offset, True
        while True:
            if pos + 8 > self.size:
                raise DataError(
                    f"{self.rec} is truncated: record {record} at byte {pos} needs an 8-byte "
                    f"header but the file ends at byte {self.size}; re-copy the pack"
                )
            magic, lrec = struct.unpack_from("<II", self._mm, pos)
            if magic != MAGIC:
                raise DataError(
                    f"{self.rec}: record {record} at byte {pos} does not start with the RecordIO "
                    f"magic (found 0x{magic:08x}); the file is corrupt or not a RecordIO pack"
                )
            flag, length = lrec >> 29, lrec & _LEN_MASK
            if (flag in (2, 3)) == first or flag > 3:
                raise DataError(
                    f"{self.rec}: record {record} at byte {pos} has continuation flag {flag} out "
                    "of order; the file is corrupt"
                )
            end = pos + 8 + length + (-length % 4)
            if end > self.size:
                raise DataError(
                    f"{self.rec} is truncated: record {record} at byte {offset} needs "
                    f"{end - offset} bytes but the file ends at byte {self.size}; re-copy the pack"
                )
            yield flag, pos + 8, length
            if flag in (0, 3):
                return
            pos, first = pos + 8 + length, False

    def _scan(self) -> list[int]:
        starts, pos, record = [], 0, 0
        while pos < self.size:
            starts.append(pos)
            for _flag, start, length in self._frames(pos, record):
                pos = start + length + (-length % 4)
            record += 1
            if record % 4096 == 0:  # as the other passes: ~12 MB of 3 KB faces, not 190 MB
                self.drop_pages()
        self.drop_pages()
        return starts

    def drop_pages(self) -> None:
        """Unmap the pages read so far from this process (they stay in the kernel's page
        cache): reading a whole pack then holds no more resident memory than reading a part."""
        if isinstance(self._mm, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            self._mm.madvise(mmap.MADV_DONTNEED)

    def _check_index(self, starts: list[int]) -> None:
        if len(starts) != len(self._offsets):
            raise DataError(
                f"{self.idx} lists {len(self._offsets)} records but {self.rec} holds "
                f"{len(starts)}; the index belongs to another pack: rebuild it or re-copy both"
            )
        valid = set(starts)
        for key, offset in self._offsets.items():
            if offset not in valid:
                raise DataError(
                    f"{self.idx}: key {key} points at byte {offset} of {self.rec}, which is not "
                    "the start of a record; the index belongs to another pack: re-copy both"
                )

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: int) -> bool:
        return key in self._offsets

    def read_payload(self, key: int) -> bytes:
        """The raw payload (IRHeader + labels + image) of record ``key``."""
        if key not in self._offsets:
            raise DataError(f"{self.rec} has no record with key {key}")
        parts = []
        for flag, start, length in self._frames(self._offsets[key], key):
            parts.append(self._mm[start : start + length])
            if flag in (1, 2):
                parts.append(_MAGIC_BYTES)
        return b"".join(parts)

    def read_record(self, key: int) -> tuple[IRHeader, bytes]:
        """``(IRHeader, encoded image bytes)`` of record ``key``."""
        return unpack_record(self.read_payload(key), f"{self.rec} record {key}")

    def sequential(self) -> Iterator[bytes]:
        """Every payload in file order, reading the frames without the index."""
        pos, record = 0, 0
        while pos < self.size:
            parts = []
            for flag, start, length in self._frames(pos, record):
                parts.append(self._mm[start : start + length])
                if flag in (1, 2):
                    parts.append(_MAGIC_BYTES)
                pos = start + length + (-length % 4)
            record += 1
            yield b"".join(parts)

    def close(self) -> None:
        if isinstance(self._mm, mmap.mmap):
            self._mm.close()
        self._fh.close()

    def __enter__(self) -> RecordReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def rec_pack_paths(path: str | Path) -> tuple[Path, Path]:
    """``(train.rec, train.idx)`` of a pack given as its folder or its ``.rec`` file."""
    path = Path(path)
    rec = path / "train.rec" if path.is_dir() else path
    return rec, rec.with_suffix(".idx")


def _image_keys(reader: RecordReader) -> list[int]:
    if 0 in reader:
        head, _ = reader.read_record(0)
        if head.flag > 0 and len(head.label) >= 2:
            first = int(head.label[0])
            keys = list(range(1, first))
            missing = [k for k in keys if k not in reader]
            if missing:
                raise DataError(
                    f"{reader.rec}: header record 0 says images are keys 1..{first - 1} but key "
                    f"{missing[0]} is not in {reader.idx}; the pack is incomplete"
                )
            return keys
    return list(reader.keys)


MAX_LABEL = 1 << 31
"""Identity labels of a pack lie below this (WebFace42M, the largest public set, has 2.1 M)."""


def _record_label(head: IRHeader, where: str) -> int:
    value = head.label if head.flag == 0 else head.label[0]
    if not math.isfinite(value) or value != int(value) or not 0 <= value < MAX_LABEL:
        raise DataError(
            f"{where} has label {value!r}; identity labels must be integers in 0..{MAX_LABEL - 1}"
        )
    return int(value)


def load_rec_pack(
    path: str | Path,
    *,
    name: str | None = None,
    channels: int | None = None,
    cache_dir: str | Path | None = None,
    meta: dict | None = None,
) -> FaceDataset:
    """Load an InsightFace RecordIO training pack as an identity dataset.

    Args:
        path: the pack folder (holding ``train.rec`` and ``train.idx``) or the ``.rec`` file.
        name: dataset name (default: the pack folder's name).
        channels: 1 or 3 to convert; None: grey if every image is grey, else RGB.
        cache_dir: decode cache; False: none.
        meta: facts merged into ``FaceDataset.meta``.

    Returns:
        FaceDataset of the image records in key order, labels = IRHeader labels relabelled
        0..K-1 in increasing order (identity names are the original labels), protocol
        identity-folds (4 folds), like any identity-folder dataset.

    Note:
        A pack whose decoded pixels reach :data:`lowres.data.stream.STREAM_MIN_BYTES` (2 GiB)
        is decoded a chunk at a time into the cache and read back per batch (a
        :class:`~lowres.data.stream.DiskImages`): the process holds the labels, not the images
        (CASIA-WebFace, 494k 112x112 RGB, is 19 GB decoded; MS1M, 5.8M, 220 GB). Smaller packs
        are decoded into memory.
    """
    rec, idx = rec_pack_paths(path)
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    with RecordReader(rec, idx) as reader:
        keys = _image_keys(reader)
        if not keys:
            raise DataError(f"{rec} holds no image records")
        first = decode_bytes(reader.read_record(keys[0])[1], channels, f"{rec.name} image 0")
        stream = cache_dir is not False and should_stream(len(keys), first.numel())
        raw_labels, blobs = [], []
        for i, key in enumerate(keys):
            head, img = reader.read_record(key)
            raw_labels.append(_record_label(head, f"{rec} record {key}"))
            if not stream:  # a streamed pack is read again, a chunk at a time, to decode
                blobs.append(img)
            elif i % 4096 == 4095:
                reader.drop_pages()
    name = name or rec.parent.name
    tag = f"{name}-rec-c{channels or 0}"
    if stream:
        images = cached_image_stream(
            _digest(rec, idx),
            tag,
            len(keys),
            lambda c: _rec_chunks(rec, idx, keys, c),
            channels,
            cache_dir,
        )
    else:
        images = _cached(
            _digest(rec, idx), tag, lambda: _decode_all(blobs, channels, f"{rec.name}"), cache_dir
        )
    kept, labels = torch.unique(torch.tensor(raw_labels, dtype=torch.int64), return_inverse=True)
    info = {
        "kind": "recordio",
        "file": str(rec),
        "protocol": {"type": "identity-folds", "n_folds": 4},
    }
    info.update(meta or {})
    return FaceDataset(
        name=name,
        images=images,
        labels=labels.to(torch.int64),
        identities=[str(v) for v in kept.tolist()],
        meta=info,
    )


def write_rec_pack(
    folder: str | Path,
    images: torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    fmt: str = "png",
    *,
    quality: int = 95,
) -> Path:
    """Write ``folder/train.rec`` + ``train.idx`` (+ ``property``) in InsightFace's layout.

    Record 0: header, labels ``(N + 1, N + 1 + K)``. Keys 1..N: the images in the given order,
    scalar label, ``id`` = key. Keys N+1..N+K: one record per identity (increasing label) with
    labels ``(first key, end key)`` of its images. ``property`` holds ``K,H,W``.

    Args:
        folder: output folder.
        images: uint8 (N, C, H, W).
        labels: N integer labels >= 0, each identity's images contiguous.
        fmt: "png" (lossless) or "jpg".

    Returns:
        The ``train.rec`` path.
    """
    _check_images(images, "write_rec_pack")
    n = images.shape[0]
    if len(torch.as_tensor(labels).reshape(-1)) != n or n == 0:
        raise DataError(f"write_rec_pack: need one label >= 0 per image, got {len(labels)} for {n}")
    blobs = (encode_image(img, fmt, quality) for img in images)
    return write_encoded_pack(folder, blobs, labels, tuple(images.shape[2:]))


def write_encoded_pack(
    folder: str | Path,
    blobs: Iterable[bytes],
    labels: Sequence[int] | torch.Tensor,
    size: tuple[int, int],
) -> Path:
    """:func:`write_rec_pack` from encoded images (PNG/JPEG bytes, one per label), consumed one
    at a time: a pack of any size is written without holding its images.

    Args:
        folder: output folder.
        blobs: the encoded images, in label order.
        labels: one integer label >= 0 per image, each identity's images contiguous.
        size: (H, W) of the images (for ``property``).
    """
    labels = [int(v) for v in torch.as_tensor(labels).tolist()]
    n = len(labels)
    if n == 0 or min(labels) < 0:
        raise DataError(f"write_rec_pack: need one label >= 0 per image, got {labels[:3]}...")
    runs: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        if lab in runs and runs[lab][1] != i + 1:
            raise DataError(
                f"write_rec_pack: images of label {lab} are not contiguous (image {i}); "
                "sort the images by label first"
            )
        runs.setdefault(lab, [i + 1, i + 1])[1] = i + 2
    folder = Path(folder)
    rec = folder / "train.rec"
    ids = sorted(runs)
    try:
        _write_records(rec, blobs, labels, runs, ids)
    except BaseException:
        for p in (rec, rec.with_suffix(".idx")):  # nothing half-written stays
            p.unlink(missing_ok=True)
        raise
    h, wd = size
    (folder / "property").write_text(f"{len(ids)},{h},{wd}\n", encoding="ascii")
    return rec


def _write_records(rec: Path, blobs, labels: list[int], runs: dict, ids: list[int]) -> None:
    n, written = len(labels), 0
    with RecordWriter(rec) as w:
        w.write(0, pack_record(IRHeader(2, (float(n + 1), float(n + 1 + len(ids))), 0, 0)))
        for i, blob in enumerate(blobs):
            if i >= n:
                raise DataError(f"write_rec_pack: more images than the {n} labels")
            w.write(i + 1, pack_record(IRHeader(0, float(labels[i]), i + 1, 0), blob))
            written += 1
        if written != n:
            raise DataError(f"write_rec_pack: need one label per image, got {n} for {written}")
        for j, lab in enumerate(ids):
            start, end = runs[lab]
            w.write(n + 1 + j, pack_record(IRHeader(2, (float(start), float(end)), n + 1 + j, 0)))
