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

Schedule 2 splits the edge pass in two: "edge_h" codes ``(2s*i, 2s*j+s)`` with the
edge pass's context, then "edge_v" codes ``(2s*i+s, 2s*j)`` with, in addition, its
four diagonal neighbours just coded by edge_h, so a quarter of the pixels see their
whole 3x3 neighbourhood.  A lossless model package names its schedule.
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

#: Extra neighbours of an edge_v target at (i+.5, j) (edge_v lattice index (i, j)): the
#: edge_h pixels at (i, j-.5), (i, j+.5), (i+1, j-.5), (i+1, j+.5), as (row, col) offsets
#: into the edge_h lattice.  They come last in the feature vector.
EDGE_V_EXTRA = ((0, -1), (0, 0), (1, -1), (1, 0))

NUM_NEIGHBOURS = 16
#: Per earlier plane: its own residual at the target plus its four nearest neighbours.
CROSS_FEATURES = 5

#: Pass kinds of each schedule, in coding order within a level.
SCHEDULES = {1: ("diag", "edge"), 2: ("diag", "edge_h", "edge_v")}


def num_features(kind: str, plane_index: int) -> int:
    """Width of the feature vector of a pass kind for plane ``plane_index`` (0 = first coded plane)."""
    return NUM_NEIGHBOURS + CROSS_FEATURES * plane_index + 1 + (len(EDGE_V_EXTRA) if kind == "edge_v" else 0)


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
    kind: str  # one of SCHEDULES' kinds

    @property
    def step(self) -> int:
        return 1 << self.level


def passes(height: int, width: int, schedule: int = 1) -> Iterator[Pass]:
    """All coding passes after the top lattice, coarse to fine."""
    for level in range(num_levels(height, width) - 1, -1, -1):
        for kind in SCHEDULES[schedule]:
            yield Pass(level, kind)


def top_lattice(plane: np.ndarray, levels: int) -> np.ndarray:
    """The pixels coded directly, before any pass."""
    step = 1 << levels
    return plane[::step, ::step]


def _shifted(arr: np.ndarray, offsets: list[tuple[int, int]], rows: int, cols: int) -> list[np.ndarray]:
    """For each (dr, dc): a (rows, cols) view of ``arr[i+dr, j+dc]`` with indices clamped
    to the array (edge replication pads exactly as much as the offsets reach)."""
    r, c = arr.shape
    dr = [o[0] for o in offsets]
    dc = [o[1] for o in offsets]
    top, left = max(0, -min(dr)), max(0, -min(dc))
    bottom, right = max(0, max(dr) + rows - r), max(0, max(dc) + cols - c)
    padded = np.empty((r + top + bottom, c + left + right), arr.dtype)  # np.pad(mode="edge"), 4x faster
    padded[top:top + r, left:left + c] = arr
    padded[:top, left:left + c] = arr[:1]
    padded[top + r:, left:left + c] = arr[-1:]
    padded[:, :left] = padded[:, left:left + 1]
    padded[:, left + c:] = padded[:, left + c - 1:left + c]
    return [padded[top + a:top + a + rows, left + b:left + b + cols] for a, b in offsets]


def target_views(plane: np.ndarray, p: Pass) -> list[np.ndarray]:
    """Writable views of the pixels a pass codes (two for edge, else one)."""
    s = p.step
    views = {"diag": [plane[s::2 * s, s::2 * s]],
             "edge_h": [plane[0::2 * s, s::2 * s]],
             "edge_v": [plane[s::2 * s, 0::2 * s]]}
    return views[p.kind] if p.kind != "edge" else views["edge_h"] + views["edge_v"]


def _neighbour_blocks(plane: np.ndarray, p: Pass) -> list[list[np.ndarray]]:
    """Per target view of the pass: its neighbour arrays, each shaped like the view.

    The vertical edge pixels (2s*i+s, 2s*j) are the horizontal ones transposed, so
    they use the same offsets with rows and columns swapped; an edge_v pass then adds
    its EDGE_V_EXTRA neighbours."""
    s = p.step
    coarse = plane[0::2 * s, 0::2 * s]
    if p.kind == "diag":
        (view,) = target_views(plane, p)
        return [_shifted(coarse, list(DIAG_OFFSETS), *view.shape)]
    diag = plane[s::2 * s, s::2 * s]
    if diag.size == 0:  # a single row or column of lattice: nothing in between
        diag = coarse
    swaps = {"edge": (False, True), "edge_h": (False,), "edge_v": (True,)}[p.kind]
    out = []
    for swap, view in zip(swaps, target_views(plane, p)):
        if view.size == 0:
            out.append([])
            continue
        blocks: list[np.ndarray] = [None] * NUM_NEIGHBOURS  # type: ignore[list-item]
        for name, arr in (("k", coarse), ("d", diag)):
            idx = [i for i, o in enumerate(EDGE_OFFSETS) if o[0] == name]
            offsets = [(EDGE_OFFSETS[i][2], EDGE_OFFSETS[i][1]) if swap else EDGE_OFFSETS[i][1:] for i in idx]
            for i, v in zip(idx, _shifted(arr, offsets, *view.shape)):
                blocks[i] = v
        if p.kind == "edge_v":
            (horizontal,) = target_views(plane, Pass(p.level, "edge_h"))
            if horizontal.size == 0:  # one lattice column: no horizontal edge pixels
                horizontal = coarse
            blocks += _shifted(horizontal, list(EDGE_V_EXTRA), *view.shape)
        out.append(blocks)
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
        self._earlier: list[np.ndarray] = []  # per earlier plane: (5, n) cross features

    def features(self, plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(features (F, n) int16, feature-major, all within +-510; base prediction (n,)
        int32) for the next plane."""
        blocks = _neighbour_blocks(plane, self.p)
        n = sum(b[0].size for b in blocks if b)
        width = num_features(self.p.kind, len(self._earlier))
        columns = np.empty((width, n), dtype=np.int16)  # built feature by feature, contiguously
        base = np.empty(n, dtype=np.int32)
        start = 0
        nearest = _nearest(self.p)
        for nb in blocks:
            if not nb:
                continue
            size = nb[0].size
            b = (nb[nearest[0]] + nb[nearest[1]] + nb[nearest[2]] + nb[nearest[3]]).astype(np.int32) >> 2
            for j, v in enumerate(nb):
                row = j if j < NUM_NEIGHBOURS else width - len(EDGE_V_EXTRA) + j - NUM_NEIGHBOURS
                np.subtract(v, b, out=columns[row, start:start + size].reshape(b.shape), casting="unsafe")
            base[start:start + size] = b.ravel()
            start += size
        col = NUM_NEIGHBOURS
        for earlier in self._earlier:
            columns[col:col + CROSS_FEATURES] = earlier
            col += CROSS_FEATURES
        columns[col] = self.p.level
        self._nearest_diffs = columns[list(nearest)].astype(np.int32)
        self._base = base
        return columns, base

    def add_coded(self, plane: np.ndarray) -> None:
        """Record the just-coded plane's values at the targets for later planes."""
        residual = (target_values(plane, self.p).astype(np.int32) - self._base)[None, :]
        self._earlier.append(np.concatenate([residual, self._nearest_diffs], axis=0))


def target_values(plane: np.ndarray, p: Pass) -> np.ndarray:
    """The values a pass codes, flattened in the pass's order."""
    return np.concatenate([v.reshape(-1) for v in target_views(plane, p)])


def store_values(plane: np.ndarray, p: Pass, values: np.ndarray) -> None:
    """Write decoded values of a pass back into the plane (inverse of target_values)."""
    start = 0
    for view in target_views(plane, p):
        view[...] = values[start:start + view.size].reshape(view.shape)
        start += view.size
