"""ONNX operators in NumPy, float32 throughout (as ONNX Runtime computes them).

Integer-exact graphs (the lossless predictor, the lossy entropy model) only do
integer-valued float32 arithmetic whose sums stay below 2**24, so these
implementations give the same bits as ONNX Runtime whatever the summation order.
"""

from __future__ import annotations

import numpy as np


def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def matmul(a, b):
    return _f32(a) @ _f32(b)


def clip(x, lo=None, hi=None):
    return np.clip(x, -np.inf if lo is None else lo, np.inf if hi is None else hi).astype(x.dtype)


OPS = {
    "MatMul": matmul,
    "Add": lambda a, b: np.add(a, b, dtype=np.float32),
    "Sub": lambda a, b: np.subtract(a, b, dtype=np.float32),
    "Mul": lambda a, b: np.multiply(a, b, dtype=np.float32),
    "Div": lambda a, b: np.divide(a, b, dtype=np.float32),
    "Floor": np.floor,
    "Abs": np.abs,
    "Relu": lambda x: np.maximum(x, np.float32(0)),
    "Clip": clip,
    "Identity": lambda x: x,
}
