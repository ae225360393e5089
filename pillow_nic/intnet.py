"""Integer-exact MLP: the arithmetic contract between encoder and decoder.

Every value feeding the entropy coder must be identical on every machine and
runtime.  The predictor therefore computes only with integers held in float32:
integer weights (|w| <= 127), integer inputs, sums bounded below 2**24 (so any
summation order is exact), and requantisation by ``floor(z / 2**shift)``
(division by a power of two is exact).  ONNX Runtime's MatMul and the NumPy
runtime's matmul then agree bit for bit, and so does the compiled kernel
(``_intmlp.c``), which computes the same integers in int32.

A network is a list of layers ``(weight (fan_in, fan_out), bias (fan_out,),
shift, clip_max)``; hidden layers clip to ``[0, clip_max]`` (a ReLU with a cap),
the output layer has ``clip_max = None``.  The output columns are
``[mean_half, scale_index]``: the predicted mean in half levels and the row of
the probability-table family to code with.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

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


#: every feature of the lossless predictor lies within +-INPUT_BOUND (differences of samples)
INPUT_BOUND = 510
MAX_SHIFT = 30
KERNEL_MAX_WIDTH = 64  # inputs and (even) hidden units the compiled kernel takes (_intmlp.c, MAX_PAIRS)


def unfold(weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer (weight, bias, shift per column) of a layer whose graph folded the division
    by 2**shift into its weights and bias (see ``onnx_models/training/export.py``).  The
    smallest shift that makes a column integer is taken: any valid one floors alike."""
    w, b = weight.astype(np.float64), bias.astype(np.float64)
    shift = np.full(w.shape[1], -1)
    for s in range(MAX_SHIFT + 1):
        scale = 2.0 ** s
        integral = np.all(np.round(w * scale) == w * scale, axis=0) & (np.round(b * scale) == b * scale)
        shift[(shift < 0) & integral] = s
    if np.any(shift < 0):
        raise ValueError("layer weights are not integers scaled by powers of two")
    scale = 2.0 ** shift
    return (np.round(w * scale).astype(np.float32), np.round(b * scale).astype(np.float32),
            shift.astype(np.int64))


def layers_from_graph(path) -> list[IntLayer]:
    """The integer layers of an exported MLP graph (Gemm, optional Clip to [0, cap], Floor
    per layer, then Identity), checked against the exactness contract; ValueError for a
    graph of any other form."""
    from native_fallback.onnx_reader import read_model

    graph = read_model(Path(path).read_bytes())
    ops = [n.op_type for n in graph.nodes]
    layers, i = [], 0
    while i < len(ops) and ops[i] == "Gemm":
        gemm = graph.nodes[i]
        if any(gemm.attrs.get(k, d) != d for k, d in (("transA", 0), ("transB", 0), ("alpha", 1.0), ("beta", 1.0))):
            raise ValueError("unsupported Gemm attributes")
        weight, bias = (graph.initializers[name] for name in gemm.inputs[1:3])
        clip_max = None
        if ops[i + 1:i + 3] == ["Clip", "Floor"]:
            lo, hi = (float(graph.initializers[name]) for name in graph.nodes[i + 1].inputs[1:3])
            if lo != 0 or hi != round(hi):
                raise ValueError("hidden layers must clip to [0, integer]")
            clip_max, i = int(hi), i + 3
        elif ops[i + 1:i + 2] == ["Floor"]:
            i += 2
        else:
            raise ValueError("a Gemm must be followed by Floor or Clip, Floor")
        layers.append(IntLayer(*unfold(weight, bias), clip_max))
    if ops[i:] not in (["Identity"], []) or not layers or any(layer.clip_max is None for layer in layers[:-1]):
        raise ValueError("not an integer MLP graph")
    check_exact(layers, INPUT_BOUND)
    return layers


def compiled_available() -> bool:
    """Whether the compiled kernel (``_intmlp``) is built; ``NIC_KERNEL=0`` turns it off."""
    if os.environ.get("NIC_KERNEL", "1") == "0":
        return False
    return importlib.util.find_spec("pillow_nic._intmlp") is not None


class CompiledNetwork:
    """A three-layer integer MLP run by the compiled kernel: the same integers as
    ``run_numpy`` and the exported graph, several times faster than ONNX Runtime's float
    Gemm and without holding the GIL."""

    def __init__(self, layers: list[IntLayer]):
        from . import _intmlp

        if len(layers) != 3 or layers[0].clip_max != layers[1].clip_max or layers[2].weight.shape[1] != 2:
            raise ValueError("the kernel runs fan_in -> hidden -> hidden -> 2 networks")
        self._kernel = _intmlp
        self.fan_in, self.hidden = layers[0].weight.shape
        self.cap = layers[0].clip_max
        if self.fan_in > KERNEL_MAX_WIDTH or self.hidden > KERNEL_MAX_WIDTH or self.hidden % 2 or self.cap > 32767:
            raise ValueError("network wider than the kernel's limits")
        packed = []
        for layer in layers:
            w = layer.weight.astype(np.int16)
            if len(w) % 2:
                w = np.vstack([w, np.zeros((1, w.shape[1]), np.int16)])
            pairs = np.ascontiguousarray(w.T).view(np.int32)  # (fan_out, fan_in / 2) int16 pairs
            shift = np.broadcast_to(np.asarray(layer.shift), layer.bias.shape)
            packed += [pairs, layer.bias.astype(np.int32), np.ascontiguousarray(shift, dtype=np.int32)]
        self._layers = tuple(packed)

    def run(self, columns: np.ndarray, portable: bool = False) -> np.ndarray:
        """(2, n) int32 outputs for feature-major (fan_in, n) int16 columns."""
        columns = np.ascontiguousarray(columns, dtype=np.int16)
        if columns.shape[0] != self.fan_in:
            raise ValueError(f"expected {self.fan_in} feature columns, got {columns.shape[0]}")
        out = np.empty((2, columns.shape[1]), np.int32)
        self._kernel.predict(columns, self.fan_in, columns.shape[1], self.hidden, self.cap, self._layers,
                             out, portable)
        return out
