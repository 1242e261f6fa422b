"""Shared by the sweep, shard, check and plot tests: a tiny synthetic preset, a fast sweep
config and an empty shard folder.

12 test identities x 4 images of 28x24 px and 1-epoch models keep a whole sweep to seconds.
jobs=1 because spawned training workers would not see the test-only preset the
``tiny_preset`` fixture registers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lowres import sweep as S

TINY = (40, 4, 12, 4, (28, 24), (56, 48), 1)
MODELS = ("SM", "SM+R(0.01)")

PRESET_SNIPPET = (
    f"from lowres.data import synthetic as _sy\n_sy.PRESETS['tinytest'] = _sy.SynthPreset{TINY!r}\n"
)
"""The registration the ``tiny_preset`` fixture (conftest.py) makes, for a subprocess's ``-c``
code."""


def tiny_config(out: Path, cache: Path, scales, **changes) -> S.SweepConfig:
    """A fast sweep of :data:`MODELS` over ``scales`` on the tiny preset (the test asks for the
    ``tiny_preset`` fixture)."""
    base = S.SweepConfig(
        models=MODELS,
        scales=tuple(scales),
        data="synth",
        preset="tinytest",
        fars=(1e-2, 1e-1),
        epochs=1,
        device="cpu",
        batch_size=64,
        out=out,
        model_cache=cache,
        n_boot=200,
        plot=False,
        jobs=1,
    )
    return dataclasses.replace(base, **changes)


def cli(args):
    """Run the lowres CLI in-process (click's runner), letting exceptions through."""
    from click.testing import CliRunner

    from lowres.cli import cli as group

    return CliRunner().invoke(group, args, catch_exceptions=False)


def empty_shard(folder: Path, index: int, count: int) -> None:
    """A folder as `lowres sweep --shard index/count` leaves it, with no cells: enough for the
    commands that must recognise a shard and point to `lowres merge`."""
    from lowres.shards import write_shard_manifest

    folder.mkdir(parents=True, exist_ok=True)
    write_shard_manifest(
        folder,
        {},
        (index, count),
        model_ids=["SM"],
        entries=[],
        cells={},
        folds=[0],
        seeds=[0],
        context={},
        timings={},
    )
