"""Quantisation-aware training helpers for the integer-exact networks.

Both the lossless predictor and the lossy hyper-synthesis must reproduce, bit
for bit, the integer contract of ``pillow_nic.intnet``: power-of-two weight
grids (|w| <= 127), activations floored onto a 2**-ACT_BITS grid and capped at
255 levels, and an output layer giving (mean on a 2**-mean_bits grid, table row).
Training runs that arithmetic with straight-through gradients.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pillow_nic.tables import SCALE_BINS, SCALE_MIN, SCALE_STEP

HIDDEN_CLIP = 255
ACT_BITS = 4  # hidden activations: real range [0, 16) on a 1/16 grid


def ste_floor(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.floor(x) - x).detach()


def ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


MAX_GRID = 16  # sums live on a grid of at most 2**-16: biases of near-zero channels stay far below 2**24


def weight_exponent(w: torch.Tensor, per_column: bool = False, act_exp: int = 0):
    """Largest e with max|w| * 2**e <= 127 (and e + act_exp <= MAX_GRID): the weight grid
    of a layer, or (per_column) of each output column of a (fan_in, fan_out) matrix."""
    m = w.detach().abs().amax(dim=0) if per_column else w.detach().abs().max()
    e = torch.floor(torch.log2(127 / torch.clamp(m, min=1e-12))).clamp(max=MAX_GRID - act_exp)
    return e if per_column else int(e)


def fake_quant_weights(w: torch.Tensor, b: torch.Tensor, act_exp: int,
                       per_column: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights on their power-of-two grid, bias on the grid of the layer's sums."""
    e = weight_exponent(w, per_column, act_exp)
    return ste_round(w * 2 ** e) / 2 ** e, ste_round(b * 2 ** (e + act_exp)) / 2 ** (e + act_exp)


def hidden_activation(z: torch.Tensor, quantised: bool, act_bits: int = ACT_BITS,
                      clip: int = HIDDEN_CLIP) -> torch.Tensor:
    """Capped ReLU; quantised: floored onto the activation grid 2**-act_bits."""
    top = clip / 2 ** act_bits
    if quantised:
        z = ste_floor(z * 2 ** act_bits) / 2 ** act_bits
    return torch.clamp(z, 0, top)


def output_quantise(mean: torch.Tensor, log_scale: torch.Tensor, mean_bits: int,
                    quantised: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean on a 2**-mean_bits grid (rounded) and log-scale at its table row's centre."""
    if not quantised:
        return mean, torch.clamp(log_scale, SCALE_MIN, SCALE_MIN + SCALE_BINS * SCALE_STEP)
    m = 2 ** mean_bits
    mean = ste_floor(mean * m + 0.5) / m
    idx = torch.clamp(ste_floor((log_scale - SCALE_MIN) / SCALE_STEP), 0, SCALE_BINS - 1)
    return mean, SCALE_MIN + (idx + 0.5) * SCALE_STEP


def _as_columns(e, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(e, dtype=np.int64), (n,)).copy()


def export_hidden(w: torch.Tensor, b: torch.Tensor, act_exp: int, per_column: bool = False,
                  act_bits: int = ACT_BITS, clip: int = HIDDEN_CLIP) -> dict:
    """Integer weights, bias and shift of a hidden layer whose input grid is 2**-act_exp
    and whose output grid is 2**-act_bits, capped at ``clip``."""
    e = weight_exponent(w, per_column, act_exp)
    grid = e + act_exp
    shift = _as_columns(grid - act_bits if per_column else [grid - act_bits], b.shape[0] if per_column else 1)
    return dict(weight=torch.round(w * 2 ** e).numpy(), bias=torch.round(b * 2 ** grid).numpy(),
                shift=shift, clip_max=clip)


def export_output(w: torch.Tensor, b: torch.Tensor, act_exp: int, mean_bits: int, per_column: bool = False) -> dict:
    """Integer output layer.  Its columns are [means..., scales...] in two equal halves:
    means become rounded multiples of 2**-mean_bits (in those units), scales table rows."""
    e = weight_exponent(w, per_column, act_exp)
    grid = _as_columns(e + act_exp, b.shape[0])
    k = -int(round(math.log2(SCALE_STEP)))
    half = b.shape[0] // 2
    if grid[:half].min() < mean_bits + 1 or grid[half:].min() < k:
        raise ValueError("output grid too coarse for the mean and scale grids")
    g = torch.from_numpy(grid).to(b.dtype)
    shift = np.concatenate([grid[:half] - mean_bits, grid[half:] - k])
    b_mean = torch.round(b[:half] * 2 ** g[:half]) + 2 ** (torch.from_numpy(shift[:half]).to(b.dtype) - 1)
    b_scale = torch.round((b[half:] - SCALE_MIN) * 2 ** g[half:])
    return dict(weight=torch.round(w * 2 ** e).numpy(), bias=torch.cat([b_mean, b_scale]).numpy(),
                shift=shift, clip_max=None)
