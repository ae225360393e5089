"""Golden files lock the format: every committed `.nic` must keep decoding to the same
pixels, under every runtime, in every later release."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import pillow_nic
from golden.make_golden import latent_hash, pixel_hash

GOLDEN = Path(__file__).resolve().parent / "golden"
INDEX = json.loads((GOLDEN / "golden.json").read_text())


@pytest.mark.parametrize("runtime", ["onnxruntime", "numpy"])
@pytest.mark.parametrize("name", sorted(INDEX))
def test_golden_file_decodes_identically(name, runtime):
    entry = INDEX[name]
    decoded = pillow_nic.decode(GOLDEN / f"{name}.nic", runtime=runtime)
    assert decoded.mode == entry["mode"]
    assert list(decoded.pixels.shape[:2][::-1]) == entry["size"]
    if "pixels_sha256" in entry:
        assert pixel_hash(decoded.pixels) == entry["pixels_sha256"]
    else:
        assert latent_hash((GOLDEN / f"{name}.nic").read_bytes()) == entry["latents_sha256"]
        reference = np.load(GOLDEN / f"{name}.reference.npy")
        assert np.abs(decoded.pixels.astype(int) - reference).max() <= 1
    assert decoded.metadata["xmp"] == name.encode()


def test_every_golden_file_is_indexed():
    assert sorted(p.stem for p in GOLDEN.glob("*.nic")) == sorted(INDEX)
