"""Image quality metrics used by the CLI, tests and benchmarks: PSNR and MS-SSIM (NumPy only)."""

from __future__ import annotations

import math

import numpy as np

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR over all samples (RGB PSNR for colour images); inf for identical images."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def _gauss_blur(x: np.ndarray, sigma: float = 1.5, size: int = 11) -> np.ndarray:
    """'valid' separable Gaussian filter over the first two axes."""
    t = np.arange(size) - size // 2
    k = np.exp(-(t ** 2) / (2 * sigma ** 2))
    k /= k.sum()
    rows = sum(k[i] * x[i:x.shape[0] - size + 1 + i] for i in range(size))
    return sum(k[i] * rows[:, i:rows.shape[1] - size + 1 + i] for i in range(size))


def _ssim_parts(a: np.ndarray, b: np.ndarray, peak: float) -> tuple[float, float]:
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mu_a, mu_b = _gauss_blur(a), _gauss_blur(b)
    va = _gauss_blur(a * a) - mu_a ** 2
    vb = _gauss_blur(b * b) - mu_b ** 2
    cov = _gauss_blur(a * b) - mu_a * mu_b
    cs = (2 * cov + c2) / (va + vb + c2)
    lum = (2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1)
    return float(np.mean(lum * cs)), float(np.mean(cs))


def ms_ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Multi-scale SSIM (Wang et al. 2003), averaged over channels.  Uses as many of
    the five scales as the image size allows (at least 11 px at the coarsest)."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    scales = 1
    while scales < 5 and min(a.shape[:2]) >> scales >= 11:
        scales += 1
    if min(a.shape[:2]) < 11:
        raise ValueError("MS-SSIM needs images of at least 11x11 pixels")
    weights = np.array(MS_SSIM_WEIGHTS[:scales])
    weights /= weights.sum()
    value = 1.0
    for s in range(scales):
        ssim, cs = _ssim_parts(a, b, peak)
        if s == scales - 1:
            value *= max(ssim, 0.0) ** weights[s]
        else:
            value *= max(cs, 0.0) ** weights[s]
            h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
            a = a[:h, :w].reshape(h // 2, 2, w // 2, 2, -1).mean(axis=(1, 3))
            b = b[:h, :w].reshape(h // 2, 2, w // 2, 2, -1).mean(axis=(1, 3))
    return float(value)


def bits_per_pixel(n_bytes: int, width: int, height: int) -> float:
    return 8.0 * n_bytes / (width * height)
