"""File I/O in one place: atomic writes (text, bytes, CSV) and content hashes.

Every writer goes through a temporary file in the target's folder, flushed and fsynced, then
``os.replace``: a reader (or a rerun after SIGKILL) never sees half a file, and on any exception
(KeyboardInterrupt included) the temporary is removed. Stdlib only, so importing it costs
nothing (the CSV writer takes a pandas frame but does not import pandas).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from lowres.errors import ConfigError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    return atomic_write_with(path, lambda fh: fh.write(data))


def atomic_write_with(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Let ``write(file)`` fill a temporary file in ``path``'s folder, then ``os.replace`` it
    onto ``path``: a writer that streams (``torch.save``) needs no in-memory copy, and no reader
    ever sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 files; results, figures and caches get the usual umask mode.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:
            # A failed write or fsync (a full disk) names no file; the one-line error must.
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Text variant of :func:`atomic_write_bytes` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


REPR_FLOATS = "%.17g"
"""The float format of lowres's result tables: enough digits to round-trip every float64."""


def frame_to_csv(frame: Any, float_format: str | None = REPR_FLOATS) -> str:
    """The CSV text of a pandas frame as lowres writes it: no index, ``\\n`` line ends,
    ``float_format`` (None: pandas' own shortest repr)."""
    return frame.to_csv(index=False, lineterminator="\n", float_format=float_format)


def atomic_write_csv(
    path: str | os.PathLike, frame: Any, float_format: str | None = REPR_FLOATS
) -> Path:
    """Write :func:`frame_to_csv` of ``frame`` to ``path`` atomically."""
    return atomic_write_text(path, frame_to_csv(frame, float_format))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """JSON with sorted keys, indent 2 and a trailing newline, written atomically (numpy
    scalars as Python numbers, paths as text, sets and tuples as lists).

    >>> import json, tempfile
    >>> path = Path(tempfile.mkdtemp()) / "x.json"
    >>> _ = atomic_write_json(path, {"b": (1, 2), "a": Path("p")})
    >>> json.loads(path.read_text())
    {'a': 'p', 'b': [1, 2]}
    """
    text = json.dumps(obj, indent=2, sort_keys=True, default=_plain_json)
    return atomic_write_text(path, text + "\n")


def _plain_json(obj: Any) -> Any:
    if type(obj).__module__ == "numpy" and getattr(obj, "ndim", None) == 0:
        return obj.item()  # numpy integer, floating or bool scalar -> int, float, bool
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_writable(path: str | os.PathLike, what: str, *, is_folder: bool = True) -> None:
    """Fail now, before any work, when ``path`` cannot be written: it (a folder) is a file, it
    lies inside a file, or its nearest existing folder is not writable.

    Args:
        path: the folder (``is_folder``) or file a command will create or write into.
        what: how the user named it, e.g. ``"--out"``, for the message.

    Raises:
        ConfigError: one line naming the path and what to do instead.
    """
    path = Path(path)
    if is_folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file; give a folder path")
    if not is_folder and path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; give a file path")
    probe = path if is_folder else path.parent
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{what} {path} lies inside {probe}, a file; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: cannot write in {probe}; choose a writable folder")
