"""Learned restoration of a standard codec's decoded pixels (`nic enhance`, hybrid profile).

A restoration package (kind ``restore-jpeg``) holds one graph, ``restore``: image
(1,3,H,W) in [0,1] with H, W multiples of 4, and quality (1,1,1,1) = q/100 -> image.
It runs block by block with a halo of context, so memory stays bounded at any size.
Blocks start on multiples of 8 pixels: the network's 4x4 cells keep their place on
JPEG's 8x8 block grid.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from . import models
from .container import NicError, grow_box

BLOCK = 512  # pixels restored per call
HALO = 32  # context on each side: released networks reach at most 27 pixels (FORMAT.md)

# ITU-T T.81 Annex K luminance table (row-major), the table IJG quality scales
_IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.float64)

def jpeg_quality(im: Image.Image) -> int:
    """The IJG quality (1-100) whose luminance table is closest to the file's.

    Encoders that do not scale the standard table get the quality of the nearest scaling."""
    tables = getattr(im, "quantization", None)
    if not tables or 0 not in tables:
        raise ValueError("not a JPEG with quantisation tables")
    luma = np.asarray(tables[0], np.float64)  # Pillow gives natural (row-major) order
    best, best_err = 50, np.inf
    for q in range(1, 101):
        scale = 5000 / q if q < 50 else 200 - 2 * q
        ref = np.clip(np.floor((_IJG_LUMA * scale + 50) / 100), 1, 255)
        err = np.abs(np.log(ref) - np.log(np.maximum(luma, 1))).mean()
        if err < best_err:
            best, best_err = q, err
    return best


def restore(pixels: np.ndarray, quality: int, package: models.ModelPackage, workers: int = 1) -> np.ndarray:
    """Restored (h, w, 3) uint8 pixels of a decoded image coded at ``quality``."""
    from concurrent.futures import ThreadPoolExecutor

    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"restoration needs (h, w, 3) uint8 pixels, got {pixels.shape} {pixels.dtype}")
    height, width = pixels.shape[:2]
    out = np.empty_like(pixels)
    q = np.full((1, 1, 1, 1), quality / 100, np.float32)

    def one(origin: tuple[int, int]) -> None:
        y0, x0 = origin
        y1, x1 = min(height, y0 + BLOCK), min(width, x0 + BLOCK)
        wx0, wy0, wx1, wy1 = grow_box((x0, y0, x1, y1), width, height, HALO)
        window = pixels[wy0:wy1, wx0:wx1]
        ph, pw = -window.shape[0] % 4, -window.shape[1] % 4
        window = np.pad(window, ((0, ph), (0, pw), (0, 0)), mode="edge")
        image = (window.astype(np.float32) / 255).transpose(2, 0, 1)[None]
        (res,) = package.graph("restore", keep_buffers=True).run(["restored"], {"image": image, "quality": q})
        crop = res[0, :, y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0].transpose(1, 2, 0)
        out[y0:y1, x0:x1] = np.clip(np.round(crop * 255), 0, 255).astype(np.uint8)

    origins = [(y, x) for y in range(0, height, BLOCK) for x in range(0, width, BLOCK)]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, origins))
    return out


def enhance_jpeg(im: Image.Image, runtime: str | None = None, workers: int = 1) -> Image.Image:
    """An RGB image restored from a decoded JPEG (its quality read from the file's tables)."""
    if im.format != "JPEG":
        raise ValueError(f"nic enhance restores JPEG files; this is {im.format or 'not a file image'}")
    package = models.default_model("restore-jpeg", runtime)
    if package is None:
        raise NicError("no JPEG restoration model is installed")
    quality = jpeg_quality(im)
    rgb = np.asarray(im.convert("RGB"))
    return Image.fromarray(restore(rgb, quality, package, workers))
