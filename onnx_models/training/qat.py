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


def weight_exponent(w: torch.Tensor) -> int:
    """Largest e with max|w| * 2**e <= 127: the weight grid of a layer."""
    m = float(w.detach().abs().max())
    return int(math.floor(math.log2(127 / m))) if m > 0 else 0


def fake_quant_weights(w: torch.Tensor, b: torch.Tensor, act_exp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights on their power-of-two grid, bias on the grid of the layer's sums."""
    e = weight_exponent(w)
    return ste_round(w * 2 ** e) / 2 ** e, ste_round(b * 2 ** (e + act_exp)) / 2 ** (e + act_exp)


def hidden_activation(z: torch.Tensor, quantised: bool) -> torch.Tensor:
    """Capped ReLU; quantised: floored onto the activation grid."""
    top = HIDDEN_CLIP / 2 ** ACT_BITS
    if quantised:
        z = ste_floor(z * 2 ** ACT_BITS) / 2 ** ACT_BITS
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


def export_hidden(w: torch.Tensor, b: torch.Tensor, act_exp: int) -> dict:
    """Integer weights, bias and shift of a hidden layer whose input grid is 2**-act_exp."""
    e = weight_exponent(w)
    grid = e + act_exp
    return dict(weight=torch.round(w * 2 ** e).numpy(), bias=torch.round(b * 2 ** grid).numpy(),
                shift=np.array([grid - ACT_BITS]), clip_max=HIDDEN_CLIP)


def export_output(w: torch.Tensor, b: torch.Tensor, act_exp: int, mean_bits: int) -> dict:
    """Integer output layer.  Its columns are [means..., scales...] in two equal halves:
    means become rounded multiples of 2**-mean_bits (in those units), scales table rows."""
    e = weight_exponent(w)
    grid = e + act_exp
    k = -int(round(math.log2(SCALE_STEP)))
    if grid < max(k, mean_bits + 1):
        raise ValueError("output grid too coarse for the mean and scale grids")
    half = b.shape[0] // 2
    s0, s1 = grid - mean_bits, grid - k
    b_mean = torch.round(b[:half] * 2 ** grid) + 2 ** (s0 - 1)
    b_scale = torch.round((b[half:] - SCALE_MIN) * 2 ** grid)
    return dict(weight=torch.round(w * 2 ** e).numpy(), bias=torch.cat([b_mean, b_scale]).numpy(),
                shift=np.array([s0] * half + [s1] * half), clip_max=None)
