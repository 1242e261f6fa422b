"""Atomic file writes: a reader (or a rerun after SIGKILL) never sees half a file.

Every writer goes through a temporary file in the target's folder, flushed and fsynced, then
``os.replace``; on any exception (KeyboardInterrupt included) the temporary is removed.
Stdlib only, so importing it costs nothing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lowres.errors import ConfigError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 files; results, figures and caches get the usual umask mode.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
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
