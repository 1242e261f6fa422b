"""How far the ``matlab`` and ``bicubic`` down kernels differ; how close ``matlab`` is to MATLAB.

    python benchmarks/matlab_border.py

Uses the 112x96 test image and the float64 imresize.m transcription of
tests/test_degrade_matlab.py (loaded from that file, so the README's numbers are the test's).
Per face width: max |lowres matlab (float32) - transcription|, then mean and max
|bicubic - matlab| over the whole low-resolution image and over its border pixels (those whose
kernel reaches an edge), all in gray levels on a 0..255 scale.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from lowres.degrade import resample, target_size

TEST_FILE = Path(__file__).resolve().parents[1] / "tests" / "test_degrade_matlab.py"


def _test_module():
    spec = importlib.util.spec_from_file_location("test_degrade_matlab", TEST_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _low(image: np.ndarray, size: tuple[int, int], kind: str) -> np.ndarray:
    x = torch.from_numpy(image / 255.0).float()[None, None]
    return resample(x, size, kind)[0, 0].double().numpy() * 255.0


def main() -> None:
    t = _test_module()
    image = t.face_like()
    print(
        f"{'width':>5} {'size':>7} {'max|matlab-ref|':>16} {'mean|bic-mat|':>14} "
        f"{'max|bic-mat|':>13} {'border mean':>12} {'border px':>10}"
    )
    for width in (48, 24, 16, 12, 8, 6, 4, 3, 2):
        size = target_size(*image.shape, size_px=width)
        mat, bic = _low(image, size, "matlab"), _low(image, size, "bicubic")
        ref = t.mat_imresize(image, size)
        inner = np.zeros(size, dtype=bool)
        rows = t.interior_pixels(image.shape[0], size[0])
        inner[np.ix_(rows, t.interior_pixels(image.shape[1], size[1]))] = True
        diff = np.abs(bic - mat)
        border = diff[~inner]
        print(
            f"{width:>5} {size[0]:>3}x{size[1]:<3} {np.abs(mat - ref).max():>16.2e} "
            f"{diff.mean():>14.2f} {diff.max():>13.2f} {border.mean():>12.2f} "
            f"{border.size:>5}/{diff.size:<4}"
        )


if __name__ == "__main__":
    main()
