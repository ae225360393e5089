"""Interlaced (pyramid) pixel order and causal contexts for the lossless predictor.

Pixels are coded coarse to fine so that every prediction step covers a whole
lattice of pixels at once (one batched network call, one batched entropy-coder
call) instead of one pixel at a time.  The order is specified in FORMAT.md; the
encoder, the decoder and the training data extraction all use this module, so
the contexts they see are identical by construction.

At level ``l`` (lattice step ``s = 2**l``) the pixels on the coarse lattice
``(2s*i, 2s*j)`` are known.  Pass "diag" codes ``(2s*i+s, 2s*j+s)`` from the
4x4 block of coarse pixels around it; pass "edge" then codes ``(2s*i, 2s*j+s)``
and ``(2s*i+s, 2s*j)`` from the 16 nearest known pixels of the now quincunx
lattice.  Neighbours outside the image are clamped to the nearest existing
lattice position, on both sides identically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

#: Offsets (rows, cols) into the coarse lattice for a diag-pass target at (i+.5, j+.5).
DIAG_OFFSETS = tuple((a, b) for a in (-1, 0, 1, 2) for b in (-1, 0, 1, 2))
#: Indices into DIAG_OFFSETS of the four nearest coarse pixels.
DIAG_NEAREST = (5, 6, 9, 10)

#: Neighbours of an edge-pass target at coarse (i, j+.5) / diag (i-.5, j):
#: (lattice, row offset, col offset), lattice "k" = coarse, "d" = diag pass.
EDGE_OFFSETS = (
    ("k", 0, 0), ("k", 0, 1), ("d", -1, 0), ("d", 0, 0),          # W E N S
    ("k", -1, 0), ("k", -1, 1), ("k", 1, 0), ("k", 1, 1),         # (+-2, +-1)
    ("d", -1, -1), ("d", -1, 1), ("d", 0, -1), ("d", 0, 1),       # (+-1, +-2)
    ("k", 0, -1), ("k", 0, 2), ("d", -2, 0), ("d", 1, 0),         # (0, +-3), (+-3, 0)
)
EDGE_NEAREST = (0, 1, 2, 3)

NUM_NEIGHBOURS = 16
#: Per earlier plane: its own residual at the target plus its four nearest neighbours.
CROSS_FEATURES = 5


def num_features(plane_index: int) -> int:
    """Width of the feature vector for plane ``plane_index`` (0 = first coded plane)."""
    return NUM_NEIGHBOURS + CROSS_FEATURES * plane_index + 1


def num_levels(height: int, width: int) -> int:
    """Levels above full resolution; the top lattice is at most 8x8 pixels."""
    longest = max(height, width)
    levels = 0
    while (longest + (1 << levels) - 1) >> levels > 8:
        levels += 1
    return levels


@dataclass(frozen=True)
class Pass:
    """One batched coding step: which pixels it codes, and with which model kind."""

    level: int
    kind: str  # "diag" or "edge"

    @property
    def step(self) -> int:
        return 1 << self.level


def passes(height: int, width: int) -> Iterator[Pass]:
    """All coding passes after the top lattice, coarse to fine."""
    for level in range(num_levels(height, width) - 1, -1, -1):
        yield Pass(level, "diag")
        yield Pass(level, "edge")


def top_lattice(plane: np.ndarray, levels: int) -> np.ndarray:
    """The pixels coded directly, before any pass."""
    step = 1 << levels
    return plane[::step, ::step]


def _clamped(arr: np.ndarray, dr: int, dc: int, rows: int, cols: int) -> np.ndarray:
    """``arr[i+dr, j+dc]`` for an output of shape (rows, cols), indices clamped."""
    r = np.clip(np.arange(dr, dr + rows), 0, arr.shape[0] - 1)
    c = np.clip(np.arange(dc, dc + cols), 0, arr.shape[1] - 1)
    return arr[r[:, None], c[None, :]]


def target_views(plane: np.ndarray, p: Pass) -> list[np.ndarray]:
    """Writable views of the pixels a pass codes (one for diag, two for edge)."""
    s = p.step
    if p.kind == "diag":
        return [plane[s::2 * s, s::2 * s]]
    return [plane[0::2 * s, s::2 * s], plane[s::2 * s, 0::2 * s]]


def _neighbours(plane: np.ndarray, p: Pass) -> list[np.ndarray]:
    """For each target view of the pass, an (n, 16) int32 array of neighbours."""
    s = p.step
    coarse = plane[0::2 * s, 0::2 * s].astype(np.int32)
    if p.kind == "diag":
        (view,) = target_views(plane, p)
        rows, cols = view.shape
        cols_list = [_clamped(coarse, a, b, rows, cols) for a, b in DIAG_OFFSETS]
        return [np.stack(cols_list, axis=-1).reshape(-1, NUM_NEIGHBOURS)]
    diag = plane[s::2 * s, s::2 * s].astype(np.int32)
    if diag.size == 0:  # a single row or column of lattice: nothing in between
        diag = coarse
    out = []
    for transpose, view in zip((False, True), target_views(plane, p)):
        k, d = (coarse.T, diag.T) if transpose else (coarse, diag)
        rows, cols = view.T.shape if transpose else view.shape
        lattices = {"k": k, "d": d}
        cols_list = [_clamped(lattices[name], a, b, rows, cols) for name, a, b in EDGE_OFFSETS]
        block = np.stack(cols_list, axis=-1)
        if transpose:
            block = block.transpose(1, 0, 2)
        out.append(block.reshape(-1, NUM_NEIGHBOURS))
    return out


def _nearest(p: Pass) -> tuple[int, ...]:
    return DIAG_NEAREST if p.kind == "diag" else EDGE_NEAREST


class PassContext:
    """Neighbourhoods of one pass across the planes coded so far.

    Built plane by plane: ``features(c)`` needs planes ``0..c`` to be known at
    every neighbour position and planes ``0..c-1`` to be known at the targets.
    """

    def __init__(self, p: Pass):
        self.p = p
        self._earlier: list[np.ndarray] = []  # per earlier plane: (n, 5) cross features

    def features(self, plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(features (n, F) int32, base prediction (n,) int32) for the next plane."""
        nb = np.concatenate(_neighbours(plane, self.p), axis=0)
        base = nb[:, list(_nearest(self.p))].sum(axis=1) >> 2
        diffs = nb - base[:, None]
        level = np.full((nb.shape[0], 1), self.p.level, dtype=np.int32)
        feats = np.concatenate([diffs] + self._earlier + [level], axis=1)
        self._diffs, self._base = diffs, base
        return feats, base

    def add_coded(self, plane: np.ndarray) -> None:
        """Record the just-coded plane's values at the targets for later planes."""
        values = np.concatenate([v.reshape(-1) for v in target_views(plane, self.p)]).astype(np.int32)
        residual = (values - self._base)[:, None]
        nearest = self._diffs[:, list(_nearest(self.p))]
        self._earlier.append(np.concatenate([residual, nearest], axis=1))


def target_values(plane: np.ndarray, p: Pass) -> np.ndarray:
    """The values a pass codes, flattened in the pass's order."""
    return np.concatenate([v.reshape(-1) for v in target_views(plane, p)])


def store_values(plane: np.ndarray, p: Pass, values: np.ndarray) -> None:
    """Write decoded values of a pass back into the plane (inverse of target_values)."""
    start = 0
    for view in target_views(plane, p):
        view[...] = values[start:start + view.size].reshape(view.shape)
        start += view.size
