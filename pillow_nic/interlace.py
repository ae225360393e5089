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


#: Per pass kind, the origin (row, col) of each lattice of pixels it codes, in steps: a
#: pass at level l codes ``plane[row*s::2s, col*s::2s]`` (s = 2**l).
TARGET_ORIGINS = {"diag": ((1, 1),), "edge_h": ((0, 1),), "edge_v": ((1, 0),), "edge": ((0, 1), (1, 0))}


def target_views(plane: np.ndarray, p: Pass) -> list[np.ndarray]:
    """Writable views of the pixels a pass codes (two for edge, else one)."""
    s = p.step
    return [plane[a * s::2 * s, b * s::2 * s] for a, b in TARGET_ORIGINS[p.kind]]


def _lattice(height: int, width: int, row0: int, col0: int, step: int) -> tuple[int, ...]:
    """(row0, col0, row step, col step, rows, cols) of the lattice ``plane[row0::step, col0::step]``."""
    return (row0, col0, step, step, len(range(row0, height, step)), len(range(col0, width, step)))


def _target_geometry(height: int, width: int, p: Pass) -> list[tuple[int, int, list, list]]:
    """Per target view of the pass (``target_views``' order): its rows and columns, the
    lattices its neighbours lie on, and each neighbour as (lattice, dr, dc, feature), the
    sample at lattice position (i + dr, j + dc) for target (i, j), clamped to the lattice.

    The vertical edge pixels (2s*i+s, 2s*j) are the horizontal ones transposed, so they
    use the same offsets with rows and columns swapped; an edge_v pass then adds its
    EDGE_V_EXTRA neighbours as features NUM_NEIGHBOURS and on."""
    s = p.step
    coarse = _lattice(height, width, 0, 0, 2 * s)
    diag = _lattice(height, width, s, s, 2 * s)
    if p.kind == "diag":
        return [(diag[4], diag[5], [coarse], [(0, a, b, k) for k, (a, b) in enumerate(DIAG_OFFSETS)])]
    if not diag[4] or not diag[5]:  # a single row or column of lattice: nothing in between
        diag = coarse
    horizontal = _lattice(height, width, 0, s, 2 * s)
    out = []
    for row, col in TARGET_ORIGINS[p.kind]:
        target, swap = _lattice(height, width, row * s, col * s, 2 * s), row == 1  # vertical edge pixels
        lattices = [coarse, diag]
        neighbours = [(0 if name == "k" else 1, *((b, a) if swap else (a, b)), k)
                      for k, (name, a, b) in enumerate(EDGE_OFFSETS)]
        if p.kind == "edge_v":
            lattices.append(horizontal if horizontal[4] and horizontal[5] else coarse)  # one column: no edge_h
            neighbours += [(2, a, b, NUM_NEIGHBOURS + e) for e, (a, b) in enumerate(EDGE_V_EXTRA)]
        out.append((target[4], target[5], lattices, neighbours))
    return out


def _gather_numpy(plane: np.ndarray, rows: int, cols: int, lattices: list, neighbours: list, nearest,
                  columns: np.ndarray, start: int, base: np.ndarray) -> None:
    """Features and bases of one target view (``_target_geometry``) into ``columns`` and
    ``base`` from column ``start``: each neighbour minus the floor of the mean of the four
    ``nearest``."""
    values: list[np.ndarray] = [None] * len(neighbours)  # type: ignore[list-item]
    for index, (row0, col0, row_step, col_step, _, _) in enumerate(lattices):
        mine = [k for k, nb in enumerate(neighbours) if nb[0] == index]
        arr = plane[row0::row_step, col0::col_step]
        for k, v in zip(mine, _shifted(arr, [neighbours[k][1:3] for k in mine], rows, cols)):
            values[k] = v
    b = (values[nearest[0]] + values[nearest[1]] + values[nearest[2]] + values[nearest[3]]).astype(np.int32) >> 2
    size = rows * cols
    for v, (_, _, _, row) in zip(values, neighbours):
        np.subtract(v, b, out=columns[row, start:start + size].reshape(b.shape), casting="unsafe")
    base[start:start + size] = b.ravel()


def _gather_compiled(plane: np.ndarray, rows: int, cols: int, lattices: list, neighbours: list, nearest,
                     columns: np.ndarray, start: int, base: np.ndarray) -> None:
    """``_gather_numpy`` in the compiled kernel: the same integers, without padded copies."""
    from . import _intmlp

    plane = np.ascontiguousarray(plane, dtype=np.int32)
    _intmlp.gather(plane, plane.shape[0], plane.shape[1], np.asarray(lattices, np.int32),
                   np.asarray(neighbours, np.int32), np.asarray(nearest, np.int32), rows, cols,
                   columns, columns.shape[0], columns.shape[1], start, base)


def _nearest(p: Pass) -> tuple[int, ...]:
    return DIAG_NEAREST if p.kind == "diag" else EDGE_NEAREST


class PassContext:
    """Neighbourhoods of one pass across the planes coded so far.

    Built plane by plane: ``features(c)`` needs planes ``0..c`` to be known at
    every neighbour position and planes ``0..c-1`` to be known at the targets.
    """

    def __init__(self, p: Pass, compiled: bool = False):
        self.p = p
        self._gather = _gather_compiled if compiled else _gather_numpy
        self._earlier: list[np.ndarray] = []  # per earlier plane: (5, n) cross features

    def features(self, plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(features (F, n) int16, feature-major, all within +-510; base prediction (n,)
        int32) for the next plane (an int32 array)."""
        geometry = _target_geometry(*plane.shape, self.p)
        n = sum(rows * cols for rows, cols, _, _ in geometry)
        width = num_features(self.p.kind, len(self._earlier))
        columns = np.empty((width, n), dtype=np.int16)  # built feature by feature, contiguously
        base = np.empty(n, dtype=np.int32)
        nearest = _nearest(self.p)
        start = 0
        for rows, cols, lattices, neighbours in geometry:
            if rows * cols:
                rows_of = [(l, dr, dc, f if f < NUM_NEIGHBOURS else width - len(EDGE_V_EXTRA) + f - NUM_NEIGHBOURS)
                           for l, dr, dc, f in neighbours]
                self._gather(plane, rows, cols, lattices, rows_of, nearest, columns, start, base)
                start += rows * cols
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
