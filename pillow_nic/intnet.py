"""Integer-exact MLP: the arithmetic contract between encoder and decoder.

Every value feeding the entropy coder must be identical on every machine and
runtime.  The predictor therefore computes only with integers held in float32:
integer weights (|w| <= 127), integer inputs, sums bounded below 2**24 (so any
summation order is exact), and requantisation by ``floor(z / 2**shift)``
(division by a power of two is exact).  ONNX Runtime's MatMul and the NumPy
runtime's matmul then agree bit for bit.

A network is a list of layers ``(weight (fan_in, fan_out), bias (fan_out,),
shift, clip_max)``; hidden layers clip to ``[0, clip_max]`` (a ReLU with a cap),
the output layer has ``clip_max = None``.  The output columns are
``[mean_half, scale_index]``: the predicted mean in half levels and the row of
the probability-table family to code with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EXACT_LIMIT = 1 << 24
WEIGHT_MAX = 127


@dataclass(frozen=True)
class IntLayer:
    weight: np.ndarray  # float32 holding integers, (fan_in, fan_out)
    bias: np.ndarray    # float32 holding integers, (fan_out,)
    shift: np.ndarray  # per output column: z is divided by 2**shift, then floored
    clip_max: int | None


def check_exact(layers: list[IntLayer], input_bound: int) -> None:
    """Raise ValueError unless every partial sum provably stays below 2**24."""
    bound = input_bound
    for layer in layers:
        w = np.abs(layer.weight.astype(np.float64))
        if w.max(initial=0) > WEIGHT_MAX or not np.all(layer.weight == np.round(layer.weight)):
            raise ValueError("weights must be integers within +-127")
        if not np.all(layer.bias == np.round(layer.bias)):
            raise ValueError("biases must be integers")
        worst = w.sum(axis=0) * bound + np.abs(layer.bias)
        if worst.max(initial=0) >= EXACT_LIMIT:
            raise ValueError(f"layer sum bound {worst.max():.0f} exceeds 2**24")
        bound = layer.clip_max if layer.clip_max is not None else 0


def run_numpy(layers: list[IntLayer], x: np.ndarray) -> np.ndarray:
    """Reference evaluation in NumPy float32 (exact under the contract above)."""
    h = x.astype(np.float32)
    for layer in layers:
        z = h @ layer.weight + layer.bias
        h = np.floor(z * (2.0 ** -np.asarray(layer.shift, dtype=np.float64)).astype(np.float32))
        if layer.clip_max is not None:
            h = np.clip(h, 0, layer.clip_max)
    return h
