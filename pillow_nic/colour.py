"""Reversible colour transform (YCoCg-R) used by the lossless mode."""

from __future__ import annotations

import numpy as np


def rgb_to_ycocg(rgb: np.ndarray) -> list[np.ndarray]:
    """(H, W, 3) uint8 -> [Y 0..255, Co -255..255, Cg -255..255] as int32 planes."""
    r, g, b = (rgb[..., i].astype(np.int32) for i in range(3))
    co = r - b
    t = b + (co >> 1)
    cg = g - t
    y = t + (cg >> 1)
    return [y, co, cg]


def ycocg_to_rgb(y: np.ndarray, co: np.ndarray, cg: np.ndarray) -> np.ndarray:
    """Exact inverse of rgb_to_ycocg; ValueError if the planes are not a valid triple."""
    t = y - (cg >> 1)
    g = cg + t
    b = t - (co >> 1)
    r = b + co
    rgb = np.stack([r, g, b], axis=-1)
    if rgb.size and (rgb.min() < 0 or rgb.max() > 255):
        raise ValueError("YCoCg-R planes outside the RGB cube")
    return rgb.astype(np.uint8)
