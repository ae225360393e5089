"""Shared fixtures: bundled and generated images (no ../shared needed), Kodak when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pillow_nic  # noqa: F401  (registers the plugin)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "pillow_nic" / "samples" / "chapel.png"
KODAK = ROOT.parent / "shared" / "data" / "kodak"


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """The bundled sample photo, RGB uint8 (512x381)."""
    with Image.open(SAMPLE) as im:
        return np.asarray(im.convert("RGB"))


def synthetic(h: int, w: int, channels: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus mild noise: compressible, but not trivially flat."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    planes = [((x * (3 + c) + y * (5 - c)) % 256 + rng.integers(-3, 4, (h, w))) % 256 for c in range(channels)]
    arr = np.stack(planes, axis=-1).astype(np.uint8)
    return arr[..., 0] if channels == 1 else arr


def clipped_sky(h: int, w: int, seed: int = 0) -> np.ndarray:
    """An RGB blown sky: red and green clipped at 255, blue a noisy gradient (the case
    coder 6 is for)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    blue = np.clip(150 + (x + 2 * y) % 90 + rng.normal(0, 4, (h, w)), 0, 255)
    return np.stack([np.full((h, w), 255), np.full((h, w), 255), blue], axis=-1).astype(np.uint8)


def image_for_mode(mode: str, h: int, w: int, seed: int = 0) -> np.ndarray:
    """A test array for a Pillow mode, as the library API takes it."""
    if mode == "1":
        return (synthetic(h, w, 1, seed) > 127).astype(np.uint8)
    if mode == "I;16":
        return synthetic(h, w, 1, seed).astype(np.uint16) * 257 + np.uint16(seed % 7)
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
    return synthetic(h, w, channels, seed)


def kodak_files() -> list[Path]:
    return sorted(KODAK.glob("kodim*.png")) if KODAK.is_dir() else []


needs_kodak = pytest.mark.skipif(not kodak_files(), reason="Kodak images not found at ../shared/data/kodak")
