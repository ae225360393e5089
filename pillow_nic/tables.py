"""The family of integer probability tables the entropy coder draws from.

A predictor (lossless MLP or lossy hyper-synthesis) names, per symbol, one row
of a table family: row ``k`` is a discretised distribution of log-scale
``SCALE_MIN + (k + 0.5) * SCALE_STEP``.  Tables are computed once, at export,
quantised to integer frequencies summing to 2**PRECISION, and shipped inside
the model package, so decoding never depends on floating-point library
functions (exp, erf) that can differ between machines.
"""

from __future__ import annotations

import math

import numpy as np

SCALE_MIN = -2.5
SCALE_STEP = 1 / 8
SCALE_BINS = 64
PRECISION = 24


def row_scale(row: int) -> float:
    return math.exp(SCALE_MIN + (row + 0.5) * SCALE_STEP)


def quantise_pmf(pmf: np.ndarray) -> np.ndarray:
    """Integer frequencies >= 1 summing to 2**PRECISION, deterministic rounding."""
    total = 1 << PRECISION
    free = total - len(pmf)
    freq = np.floor(pmf / pmf.sum() * free).astype(np.int64) + 1
    freq[np.argmax(pmf)] += total - freq.sum()
    return freq


def _cdf_logistic(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _cdf_gauss(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def build_family(radius: int, offsets: int, shape: str) -> np.ndarray:
    """(SCALE_BINS, offsets, 2*radius+1) int64 frequencies over residuals -radius..radius.

    ``offsets`` sub-level positions of the mean (0, 1/offsets, ...); ``shape`` is
    "logistic" (lossless pixels) or "gauss" (lossy latents).
    """
    cdf = _cdf_logistic if shape == "logistic" else _cdf_gauss
    r = np.arange(-radius, radius + 1, dtype=np.float64)
    out = np.empty((SCALE_BINS, offsets, r.size), dtype=np.int64)
    for row in range(SCALE_BINS):
        s = row_scale(row)
        for o in range(offsets):
            mu = o / offsets
            pmf = cdf((r + 0.5 - mu) / s) - cdf((r - 0.5 - mu) / s)
            out[row, o] = quantise_pmf(np.maximum(pmf, 0.0))
    return out


def code_lengths(frequencies: np.ndarray) -> np.ndarray:
    """Bits each symbol costs under integer frequency tables summing to 2**PRECISION
    (the encoders' estimates when they choose between codings)."""
    return PRECISION - np.log2(frequencies.astype(np.float64))
