"""SCface (Grgic, Delac and Grgic, 2011) in its published layout.

The database (https://www.scface.org/, on a signed licence) unpacks to ``SCface_database/``::

    mugshot_frontal_cropped_all/<subject>_frontal.JPG           130 cropped frontal mugshots
    surveillance_cameras_distance_<d>/<camera>/<subject>_cam<N>_<d>.jpg
                                                                 d = 1 (4.20 m), 2 (2.60 m),
                                                                 3 (1.00 m); cam1..cam5 visible
                                                                 light, cam6 / cam7 infrared
    mugshot_frontal_original_all/, mugshot_rotation_all/, surveillance_cameras_all/, ...

(the camera folders are ``cam1`` in some copies, ``cam_1`` in others: any sub-folder is read,
the camera comes from the file name). The set's protocols (as in Idiap's ``bob.db.scface``)
enrol the frontal mugshot and probe with the surveillance images of cameras 1-5 at one
distance (``far`` = 1, ``medium`` = 2, ``close`` = 3) or all three (``combined``).

lowres reads the manifest's ``root`` as ``SCface_database``: every subject's mugshot (role
gallery, first) then the surveillance images (role probe) of the manifest's ``[protocol]
distances`` (default all three) and ``cameras`` (default 1-5), ordered by distance, camera and
subject. Test folds split the subjects (``identity-folds``): each fold's gallery is its
subjects' mugshots; models train on the other subjects' images. To score one distance, sweep a
manifest that selects it (``scface_d1.toml`` ...): its name is the ``dataset`` column of the
rows. Every image is resized to the manifest's ``image_size`` (:mod:`lowres.data.layouts`).
"""

from __future__ import annotations

import re
from pathlib import Path

from lowres.data.dataset import GALLERY, PROBE, FaceDataset
from lowres.data.layouts import Entry, check_no_preset, list_images, load_entries, require_folder
from lowres.data.manifest import Manifest, require_root
from lowres.errors import DataError

__all__ = ["DISTANCE_DIR", "DISTANCE_METRES", "MUGSHOT_DIR", "load_scface", "parse_camera_image"]

MUGSHOT_DIR = "mugshot_frontal_cropped_all"
DISTANCE_DIR = "surveillance_cameras_distance_{d}"
DISTANCE_METRES = {1: 4.20, 2: 2.60, 3: 1.00}
"""Subject-to-camera distance of each distance folder, in metres."""

_CAMERA_NAME = re.compile(r"^(\d+)_cam(\d+)_(\d+)$")
_MUGSHOT_NAME = re.compile(r"^(\d+)_frontal$")


def parse_camera_image(path: Path) -> tuple[str, int, int]:
    """(subject, camera, distance) of a surveillance file name (``001_cam1_1.jpg``).

    Raises:
        DataError: a name that does not follow ``<subject>_cam<N>_<d>``.
    """
    match = _CAMERA_NAME.match(path.stem)
    if match is None:
        raise DataError(
            f"SCface file {path} does not follow <subject>_cam<N>_<distance>.jpg (the published "
            "surveillance_cameras_distance_<d> folders); remove it or restore its name"
        )
    return match.group(1), int(match.group(2)), int(match.group(3))


def _mugshots(m: Manifest, root: Path) -> list[Entry]:
    folder = require_folder(m, root, MUGSHOT_DIR, "mugshot (gallery)")
    out = []
    for f in list_images(folder):
        match = _MUGSHOT_NAME.match(f.stem)
        if match is None:
            raise DataError(
                f"SCface file {f} does not follow <subject>_frontal.JPG (the published "
                f"{MUGSHOT_DIR} folder); remove it or restore its name"
            )
        out.append(Entry(f, match.group(1), GALLERY))
    return out


def _surveillance(m: Manifest, root: Path, distance: int) -> list[Entry]:
    folder = require_folder(
        m, root, DISTANCE_DIR.format(d=distance), f"distance-{distance} (probe)"
    )
    found = []
    for f in list_images(folder, recursive=True):
        subject, camera, d = parse_camera_image(f)
        if d != distance:
            raise DataError(
                f"SCface file {f} says distance {d} but sits in {folder.name}; restore the "
                "published layout"
            )
        if camera in m.cameras:
            found.append(((camera, int(subject), f.name), Entry(f, subject, PROBE)))
    return [e for _, e in sorted(found, key=lambda item: item[0])]


def load_scface(m: Manifest, *, preset: str | None = None, cache_dir=None) -> FaceDataset:
    """Mugshots (gallery) then the selected distances' and cameras' surveillance images
    (probes); ``meta`` records the distances (with metres) and cameras."""
    check_no_preset(m, preset)
    root = require_root(m)
    entries = _mugshots(m, root)
    for distance in m.distances:
        entries += _surveillance(m, root, distance)
    meta = {
        "distances": list(m.distances),
        "distance_metres": [DISTANCE_METRES[d] for d in m.distances],
        "cameras": list(m.cameras),
    }
    return load_entries(entries, m, root, part="all", cache_dir=cache_dir, meta=meta)
