"""Where a result came from: the versions of the software that made it and the git revision of
the lowres source tree. Stdlib only; each library is imported only when its version is asked for.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

from lowres import __version__

RESULT_LIBRARIES = ("torch", "kornia", "numpy", "pandas")
"""The libraries a sweep's or study's numbers depend on (``provenance.json``)."""

MODEL_LIBRARIES = ("torch", "numpy", "safetensors", "albumentations", "kornia")
"""The libraries that shape a trained model (its checkpoint sidecar)."""


def versions(libraries: Sequence[str], *, lowres_first: bool = False) -> dict[str, str]:
    """``{"python": ..., "lowres": ..., library: version or "not installed", ...}`` in the given
    order (``lowres_first`` puts lowres before python, as checkpoint sidecars always have).

    >>> list(versions(["numpy"]))
    ['python', 'lowres', 'numpy']
    >>> versions(["no_such_library_xyz"])["no_such_library_xyz"]
    'not installed'
    """

    head = {"python": platform.python_version(), "lowres": __version__}
    if lowres_first:
        head = {"lowres": head["lowres"], "python": head["python"]}
    out = dict(head)
    for name in libraries:
        try:
            module = __import__(name)
            out[name] = str(module.__version__)
        except ImportError:
            out[name] = "not installed"
    return out


def git_revision(cwd: str | os.PathLike | None = None) -> str:
    """``git rev-parse HEAD`` of the lowres source tree (+ "-dirty"), or "unknown"."""
    where = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return "unknown"
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
        )
        dirty = "-dirty" if status.returncode == 0 and status.stdout.strip() else ""
        return head.stdout.strip() + dirty
    except (OSError, subprocess.SubprocessError):
        return "unknown"
