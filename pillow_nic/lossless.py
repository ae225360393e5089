"""Coders 2, 5 and 6: learned lossless coding of one tile (FORMAT.md, "Coder 2", "Coder 5", "Coder 6").

The tile's planes are visited in interlaced order (``interlace``); for each pass
and plane the model's integer-exact network predicts, for every pixel of the
pass at once, a centre and a row of the probability-table family; the residuals
are then rANS coded with constriction, grouped by table so that each group is a
single vectorised coder call.  Coder 5 adds a calibration per pass and plane: the
encoder picks the affine remapping of the predicted scale rows that codes that
pass's residuals in the fewest bits and sends its index first, so a tile whose
noise the network over- or underestimates (film grain, sensor noise) is still
coded under well-fitting tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from . import entropy, interlace, intnet
from .colour import rgb_to_ycocg, ycocg_to_rgb
from .container import NicError
from .lossless_model import PLANES, model_key
from .tables import SCALE_BINS, code_lengths


@dataclass(frozen=True)
class PlaneSpec:
    """How one sample plane is coded: value range and which networks predict it."""

    lo: int
    hi: int
    model_plane: int  # 0 = Y/grey/alpha networks, 1 = Co, 2 = Cg

    @property
    def radius(self) -> int:
        return self.hi - self.lo


GREY = PlaneSpec(0, 255, 0)
YCOCG = (PlaneSpec(0, 255, 0), PlaneSpec(-255, 255, 1), PlaneSpec(-255, 255, 2))


def _plane_specs(n_planes: int) -> tuple[PlaneSpec, ...]:
    return YCOCG if n_planes == 3 else (GREY,)


class _Tables:
    """Coding tables for every (row, offset) of a package's two table families,
    and the package's pass schedule (``interlace.SCHEDULES``; 1 when not named).

    The number of offsets per row (a power of two) is the package's mean resolution:
    the network's mean output counts in 1/offsets of a level."""

    def __init__(self, tables: dict[str, np.ndarray], graphs: set[str]):
        self.schedule = int(tables["schedule"]) if "schedule" in tables else 1
        if self.schedule not in interlace.SCHEDULES:
            raise NicError(f"lossless model names an unknown pass schedule {self.schedule}")
        missing = [model_key(kind, plane) for kind in interlace.SCHEDULES[self.schedule]
                   for plane in range(PLANES) if model_key(kind, plane) not in graphs]
        if missing:
            raise NicError(f"lossless model lacks the networks {', '.join(missing)}")
        self.models: dict[int, entropy.TableSet] = {}
        self.offsets = tables["family255"].shape[1]
        if self.offsets & (self.offsets - 1) or not 1 <= self.offsets <= 16:
            raise NicError(f"model tables have {self.offsets} mean offsets (not a power of two up to 16)")
        self.mean_shift = self.offsets.bit_length() - 1
        for radius in (255, 510):
            family = tables[f"family{radius}"]
            if family.shape != (SCALE_BINS, self.offsets, 2 * radius + 1):
                raise NicError(f"model tables family{radius} have shape {family.shape}")
            self.models[radius] = entropy.TableSet.categorical(family)
        self.uniform = {255: entropy.TableSet.uniform(256), 510: entropy.TableSet.uniform(511)}
        self.families = {radius: tables[f"family{radius}"] for radius in (255, 510)}

    @cached_property
    def costs(self) -> dict[int, np.ndarray]:
        """Per radius, (tables, symbols) code lengths in bits, for the encoder's calibration search."""
        return {radius: code_lengths(family.reshape(-1, family.shape[-1])) for radius, family in self.families.items()}


@lru_cache(maxsize=8)
def _tables_for(package) -> _Tables:
    return _Tables(package.tables, set(package.files))


# rows per network call: ONNX Runtime is 24 % faster when its buffers stay in cache and on the
# heap; the NumPy runtime pays per call in Python and wants large batches (4x slower at 2048)
PREDICT_CHUNK = {"onnxruntime": 2048, "numpy": 1 << 16}


@lru_cache(maxsize=8)
def _compiled(package) -> dict[str, intnet.CompiledNetwork] | None:
    """The package's networks for the compiled kernel, where it is built and the package
    runs on ONNX Runtime (the NumPy runtime stays the dependency-free path); None where
    not, or where a graph is not of the form the kernel runs (ONNX Runtime runs it)."""
    if package.runtime != "onnxruntime" or not intnet.compiled_available():
        return None
    try:
        return {key: intnet.CompiledNetwork(intnet.layers_from_graph(path))
                for key, path in package.files.items() if key != "tables"}
    except ValueError:
        return None


def _predict(package, key: str, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean in 1/offsets levels, table row) per pixel, integer arrays, from feature-major columns."""
    compiled = _compiled(package)
    if compiled is not None:
        mean_q, row = compiled[key].run(columns)
        return mean_q, np.clip(row, 0, SCALE_BINS - 1)  # int32, as the compiled rANS decoder takes table indices
    graph = package.graph(key)
    chunk = PREDICT_CHUNK[package.runtime]
    n = columns.shape[1]
    pred = np.concatenate([graph.run(["pred"], {"features": columns[:, i:i + chunk].T.astype(np.float32)})[0]
                           for i in range(0, max(n, 1), chunk)]).astype(np.int64)
    return pred[:, 0], np.clip(pred[:, 1], 0, SCALE_BINS - 1)


def _centres_and_tables(base: np.ndarray, mean_q: np.ndarray, row: np.ndarray, spec: PlaneSpec,
                        tables: _Tables) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: the integer centre its residual is taken from, and its table index."""
    centre = np.clip(base + (mean_q >> tables.mean_shift), spec.lo, spec.hi)
    return centre, row * tables.offsets + (mean_q & (tables.offsets - 1))


# Coder 5's calibrations: index i = (shift + 8) * 5 + (slope + 2) maps a predicted row r to
# clamp(r + shift + ((slope * (r - 32) + 4) >> 3), 0, 63): a shift of the log-scale and a
# stretch about the middle row in eighths (FORMAT.md, "Coder 5").
CALIBRATION_SHIFTS = range(-8, 9)
CALIBRATION_SLOPES = range(-2, 3)
CALIBRATION_PIVOT = 32
CALIBRATED_ROWS = np.array([
    np.clip(np.arange(SCALE_BINS) + shift + ((slope * (np.arange(SCALE_BINS) - CALIBRATION_PIVOT) + 4) >> 3),
            0, SCALE_BINS - 1)
    for shift in CALIBRATION_SHIFTS for slope in CALIBRATION_SLOPES], dtype=np.int32)
CALIBRATIONS = entropy.TableSet.uniform(len(CALIBRATED_ROWS))
_reach = int(np.abs(CALIBRATED_ROWS - np.arange(SCALE_BINS)).max())
CALIBRATION_MOVES = np.arange(-_reach, _reach + 1)  # how far a calibration can move a row
UNCALIBRATED = CALIBRATION_SHIFTS.index(0) * len(CALIBRATION_SLOPES) + CALIBRATION_SLOPES.index(0)


def _calibrated(table: np.ndarray, calibration: int, tables: _Tables) -> np.ndarray:
    """Table indices with their rows remapped by ``calibration``."""
    return CALIBRATED_ROWS[calibration][table >> tables.mean_shift] * tables.offsets + (table & (tables.offsets - 1))


def _best_calibration(table: np.ndarray, symbols: np.ndarray, radius: int, tables: _Tables) -> int:
    """The calibration coding ``symbols`` under ``table`` in the fewest bits.

    Costs every (row, offset, symbol) that occurs once for each row a calibration can
    move its row to, sums those per (row, move), then each calibration's moves."""
    width = 2 * radius + 1
    keys, counts = np.unique(table.astype(np.int64) * width + symbols, return_counts=True)
    rows, offset, symbol = keys // (width * tables.offsets), (keys // width) % tables.offsets, keys % width
    targets = np.clip(rows[:, None] + CALIBRATION_MOVES, 0, SCALE_BINS - 1)
    bits = tables.costs[radius][targets * tables.offsets + offset[:, None], symbol[:, None]] * counts[:, None]
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    by_move = np.zeros((SCALE_BINS, len(CALIBRATION_MOVES)))
    by_move[rows[starts]] = np.add.reduceat(bits, starts, axis=0)
    rows_all = np.arange(SCALE_BINS)
    moves = CALIBRATED_ROWS - rows_all + CALIBRATION_MOVES[-1]
    return int(np.argmin(by_move[rows_all, moves].sum(axis=1)))


def _to_planes(tile: np.ndarray) -> list[np.ndarray]:
    return rgb_to_ycocg(tile) if tile.ndim == 3 else [tile.astype(np.int32)]


def _predictions(package, planes: list[np.ndarray], specs, tables: _Tables, independent: bool = False):
    """The coding schedule shared by encoder and decoder: for each pass and plane, yield
    (pass, plane, spec, centres, table indices).  The caller must have the pass's values
    in ``plane`` when it resumes the generator, which then records them for later planes
    (unless ``independent``: then every plane is predicted as a first plane)."""
    h, w = planes[0].shape
    compiled = _compiled(package) is not None  # the kernel's feature gathering comes with it
    for p in interlace.passes(h, w, tables.schedule):
        ctx = interlace.PassContext(p, compiled)
        for plane, spec in zip(planes, specs):
            if independent:
                ctx = interlace.PassContext(p, compiled)
            columns, base = ctx.features(plane)
            mean_q, row = _predict(package, model_key(p.kind, spec.model_plane), columns)
            centre, table = _centres_and_tables(base, mean_q, row, spec, tables)
            yield p, plane, spec, centre, table
            ctx.add_coded(plane)


def clipped_channel(tile: np.ndarray) -> bool:
    """Whether an RGB tile has a channel with an eighth of its samples at 0 or 255: where a
    channel is clipped (a blown sky), YCoCg spreads the others' variation over all three
    planes, and coding R, G and B as separate planes (coder 6) can be smaller.  The
    encoder tries coder 6 only there (not normative)."""
    if tile.ndim != 3:
        return False
    n = tile.shape[0] * tile.shape[1]
    return any(np.count_nonzero((c == 0) | (c == 255)) * 8 >= n for c in np.moveaxis(tile, 2, 0))


def encode_tile(package, tile: np.ndarray, calibrated: bool = True, separate: bool = False) -> bytes:
    """Code an (h, w) or (h, w, 3) uint8 tile; returns the payload bytes of coder 5
    (``calibrated``) or coder 2, or of coder 6 (``separate`` and ``calibrated``: an RGB
    tile's R, G and B coded as three independent grey planes)."""
    planes = [tile[..., c].astype(np.int32) for c in range(3)] if separate else _to_planes(tile)
    specs = (GREY,) * 3 if separate else _plane_specs(len(planes))
    tables = _tables_for(package)
    h, w = planes[0].shape
    levels = interlace.num_levels(h, w)
    enc = entropy.Encoder()
    for plane, spec in zip(planes, specs):
        enc.add(tables.uniform[spec.radius], interlace.top_lattice(plane, levels).ravel() - spec.lo)
    for p, plane, spec, centre, table in _predictions(package, planes, specs, tables, separate):
        symbols = interlace.target_values(plane, p) - centre + spec.radius
        if calibrated:
            calibration = _best_calibration(table, symbols, spec.radius, tables) if len(symbols) else UNCALIBRATED
            enc.add(CALIBRATIONS, [calibration])
            table = _calibrated(table, calibration, tables)
        enc.add_grouped(tables.models[spec.radius], table, symbols)
    return enc.finish()


def decode_tile(package, data: bytes, shape: tuple[int, ...], index: int, calibrated: bool = True,
                separate: bool = False) -> np.ndarray:
    """Inverse of encode_tile (coder 6: ``separate`` and ``calibrated``); NicError if the
    payload is inconsistent."""
    h, w = shape[:2]
    n_planes = shape[2] if len(shape) == 3 else 1
    if separate and n_planes != 3:
        raise NicError(f"tile {index}: coder 6 codes RGB tiles only")
    specs = (GREY,) * 3 if separate else _plane_specs(n_planes)
    tables = _tables_for(package)
    dec = entropy.Decoder(data, f"tile {index}", compiled=package.runtime == "onnxruntime")
    planes = [np.zeros((h, w), dtype=np.int32) for _ in specs]
    levels = interlace.num_levels(h, w)
    for plane, spec in zip(planes, specs):
        top = interlace.top_lattice(plane, levels)
        top[...] = dec.decode(tables.uniform[spec.radius], top.size).reshape(top.shape) + spec.lo
    for p, plane, spec, centre, table in _predictions(package, planes, specs, tables, separate):
        if calibrated:
            table = _calibrated(table, int(dec.decode(CALIBRATIONS, 1)[0]), tables)
        values = dec.decode_grouped(tables.models[spec.radius], table) + centre - spec.radius
        if len(values) and (values.min() < spec.lo or values.max() > spec.hi):
            raise NicError(f"tile {index}: decoded samples out of range (corrupt data)")
        interlace.store_values(plane, p, values)
    dec.check_finished()
    if separate:
        return np.stack(planes, axis=2).astype(np.uint8)
    if n_planes == 1:
        return planes[0].astype(np.uint8)
    try:
        return ycocg_to_rgb(*planes)
    except ValueError:
        raise NicError(f"tile {index}: decoded colours out of range (corrupt data)") from None
