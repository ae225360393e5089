"""On every Kodak image: the NumPy runtime decodes lossless files identically and lossy
files within one level of ONNX Runtime (the native_fallback promise).  Skips without Kodak."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import pillow_nic
from pillow_nic import models
from conftest import kodak_files, needs_kodak

pytest.importorskip("onnxruntime")
pytestmark = needs_kodak


def kodak(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.skipif(models.default_model("lossy") is None, reason="no lossy model released")
@pytest.mark.parametrize("path", kodak_files(), ids=lambda p: p.name)
def test_lossy_runtimes_agree_within_one_level(path):
    data = pillow_nic.encode(kodak(path), "RGB", lossless=False, quality=50)
    a = pillow_nic.decode(data, runtime="onnxruntime").pixels.astype(np.int16)
    b = pillow_nic.decode(data, runtime="numpy").pixels.astype(np.int16)
    assert np.abs(a - b).max() <= 1


@pytest.mark.skipif(models.default_model("lossless") is None, reason="no lossless model released")
@pytest.mark.parametrize("path", kodak_files()[::6], ids=lambda p: p.name)
def test_lossless_numpy_runtime_is_exact(path):
    rgb = kodak(path)
    data = pillow_nic.encode(rgb, "RGB", lossless=True, runtime="onnxruntime")
    assert np.array_equal(pillow_nic.decode(data, runtime="numpy").pixels, rgb)
