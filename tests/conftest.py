"""Fixtures shared by the test modules.

Test-only synthetic presets are registered through ``monkeypatch``, so each test that asks for
one sees it and no other test does (nothing global outlives a test)."""

from __future__ import annotations

import pytest
from tiny_sweep import TINY

from lowres.data import synthetic

TINY_PRESETS = ("tinytest", "tinystudy")
"""The names the sweep, shard and study tests use for :data:`tiny_sweep.TINY`."""


@pytest.fixture(scope="module")
def tiny_preset():
    """Register the tiny synthetic preset (12 test identities x 4 images of 28x24 px) under
    :data:`TINY_PRESETS` for the test module that asks for it, and remove it afterwards (module
    scope, so module-scoped sweeps can use it); returns the sweep tests' name."""
    with pytest.MonkeyPatch.context() as patch:
        for name in TINY_PRESETS:
            patch.setitem(synthetic.PRESETS, name, synthetic.SynthPreset(*TINY))
        yield TINY_PRESETS[0]
