"""Coder 3: learned lossy coding of a layer's tiles (FORMAT.md, "Coder 3").

Encoder graph -> latents y and hyper-latents z of each tile, computed with a
margin of neighbouring pixels; decoding lays every tile's latents on one canvas
and synthesises it block by block with a halo, so tiles show no seams.
z is rounded and coded under per-channel table rows; the integer-exact hyper
graph turns z into latent means and table rows, identical on every runtime; y is
coded as round(y - mean) under those rows, moved where the package's refinement
hints find that cheaper; the decoder graph rebuilds pixels.
Quality 1-100 moves continuously between the model's trained rate levels
through per-channel gains.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from . import entropy
from .container import NicError, grow_box
from .tables import SCALE_BINS, code_lengths

MEAN_BITS = 3
LATENT_CLIP = 127
ALIGN = 64    # tiles are padded to multiples of this (one hyper-latent); lossy tile sizes are multiples
MARGIN = 64   # pixels of neighbouring image the encoder sees around a tile (one hyper-latent)
HALO = 2      # latents of neighbouring tiles the decoder sees: the synthesis reaches 2 latents, no further
REFINE_SWEEPS = 16  # passes of the encoder's latent refinement, each over one of 4 interleaved latent grids
#: graphs run on tiles or encoder windows up to this many pixels (a default 512-pixel tile and
#: its margins) keep ONNX Runtime's buffers between calls, no page faults on fresh buffers;
#: larger ones, from a larger tile_size, give them back
KEPT_WINDOW = (512 + 2 * MARGIN) ** 2
#: the encoder keeps them only for images up to this size: held buffers make it 1.8x faster
#: (4.7 MP: 1.25 instead of 0.73 MP/s, peak 620 instead of 296 MB); a larger image gives them
#: back, so a 48 MP encode stays within 512 MB (RUNS.md, session 13)
KEPT_IMAGE = 16_000_000
_HEAD = struct.Struct("<HHHH")  # z height, z width, y channels, z channels


class _Lossy:
    """Per-package constants: entropy models, gains."""

    def __init__(self, package):
        t = package.tables
        family = t["family127"]
        if family.shape != (SCALE_BINS, 2 * LATENT_CLIP + 1):
            raise NicError(f"lossy model tables have shape {family.shape}")
        self.family = family
        self.models = entropy.TableSet.categorical(family)
        self.z_rows = t["z_rows"].astype(np.int64)
        self.log_gain = t["log_gain"].astype(np.float64)
        self.log_inv_gain = t["log_inv_gain"].astype(np.float64)
        self.levels = self.z_rows.shape[0]
        # latents predicted in rows below this are certain zeros: not coded (FORMAT.md)
        self.uncoded_rows = int(t["uncoded_rows"]) if "uncoded_rows" in t else 0
        if not 0 <= self.uncoded_rows <= SCALE_BINS:
            raise NicError(f"lossy model names {self.uncoded_rows} uncoded table rows")
        # encoder hints (FORMAT.md): where a package has them, the encoder rounds the latents
        # rate-distortion optimised (rounded_symbols); decoding never reads them
        self.optimised_rounding = "rdoq_lambda" in t
        if self.optimised_rounding:
            lam, energy, fits = self._trade_off(t, "rdoq_lambda")
            if not fits:
                raise NicError(f"lossy model's rounding hints are malformed (shapes {lam.shape}, {energy.shape}, "
                               "values must be positive)")
            self.log_rdoq_lambda, self.log_energy = np.log(lam), np.log(energy)
        # refinement hints (FORMAT.md): the encoder moves symbols by the gradient of the
        # pixel error (the package's refine graph) and the synthesis' coupling
        self.refines = "refine_lambda" in t
        if self.refines:
            lam, energy, fits = self._trade_off(t, "refine_lambda")
            coupling = t["synthesis_coupling"].astype(np.float64)
            m = self.log_gain.shape[1]
            if not fits or coupling.shape != (m, m, 3, 3) or "refine" not in package.files or \
                    not np.all(np.isfinite(coupling)):
                raise NicError(f"lossy model's refinement hints are malformed (shapes {lam.shape}, {energy.shape}, "
                               f"{coupling.shape}; values must be positive and finite, and a refine graph present)")
            self.log_refine_lambda, self.log_energy, self.coupling = np.log(lam), np.log(energy), coupling

    def _trade_off(self, t: dict, key: str) -> tuple[np.ndarray, np.ndarray, bool]:
        """(λ per level from ``key``, synthesis energy per level and channel, whether both
        have those shapes and are positive): how either kind of encoder hint prices error."""
        lam, energy = t[key].astype(np.float64), t["synthesis_energy"].astype(np.float64)
        fits = lam.shape == (self.levels,) and energy.shape == self.log_gain.shape and \
            bool(np.all(lam > 0) and np.all(energy > 0))
        return lam, energy, fits

    @cached_property
    def bits(self) -> np.ndarray:
        """(row, symbol) code lengths of the latent tables, for the encoder's rounding."""
        return code_lengths(self.family).astype(np.float32)

    @cached_property
    def bit_steps(self) -> tuple[np.ndarray, np.ndarray]:
        """Flat (row * 255 + symbol) change of code length when a symbol moves one step down
        and one step up (infinite where the step leaves -LATENT_CLIP..LATENT_CLIP), for the
        refinement."""
        bits = code_lengths(self.family)
        down, up = np.full_like(bits, np.inf), np.full_like(bits, np.inf)
        down[:, 1:] = bits[:, :-1] - bits[:, 1:]
        up[:, :-1] = bits[:, 1:] - bits[:, :-1]
        return down.astype(np.float32).ravel(), up.astype(np.float32).ravel()

    @cached_property
    def coupling_rows(self) -> np.ndarray:
        """The synthesis coupling as (di, dj, moved channel, affected channel), float32: what a
        move adds to its neighbours' gradient is one contiguous row."""
        return np.ascontiguousarray(self.coupling.transpose(2, 3, 1, 0), dtype=np.float32)

    def coded(self, rows: np.ndarray) -> np.ndarray | slice:
        """Which of the latents with these table rows are entropy coded."""
        return rows >= self.uncoded_rows if self.uncoded_rows else slice(None)

    def level_position(self, quality: int) -> float:
        return (quality - 1) / 99 * (self.levels - 1)

    def between_levels(self, log_table: np.ndarray, quality: int) -> np.ndarray:
        """A per-level table at ``quality``: log-linear between the two nearest trained levels."""
        t = self.level_position(quality)
        lo = min(int(np.floor(t)), self.levels - 2)
        f = t - lo
        return np.exp((1 - f) * log_table[lo] + f * log_table[lo + 1])

    def gains(self, quality: int) -> tuple[np.ndarray, np.ndarray]:
        """(gain, inverse gain) vectors."""
        return (self.between_levels(self.log_gain, quality).astype(np.float32),
                self.between_levels(self.log_inv_gain, quality).astype(np.float32))

    def error_weights(self, quality: int) -> np.ndarray:
        """Per latent channel, the bits one unit of squared latent error is worth: λ times
        the pixel error it causes (255² times the synthesis energy through the inverse gain,
        per colour sample), as the training objective rate + λ·255²·MSE prices it."""
        inv_gain = self.between_levels(self.log_inv_gain, quality)
        return (self.between_levels(self.log_rdoq_lambda, quality) * 255 ** 2 / 3
                * self.between_levels(self.log_energy, quality) * inv_gain ** 2).astype(np.float32)

    def z_table_rows(self, quality: int) -> np.ndarray:
        return self.z_rows[int(np.floor(self.level_position(quality) + 0.5))]


@lru_cache(maxsize=8)
def _lossy_for(package) -> _Lossy:
    return _Lossy(package)


def _hyper(package, z_hat: np.ndarray, keep_buffers: bool = True) -> tuple[np.ndarray, np.ndarray]:
    keep = keep_buffers and z_hat.shape[2] * z_hat.shape[3] * ALIGN ** 2 <= KEPT_WINDOW
    (pred,) = package.graph("hyper", keep).run(["pred"], {"z": z_hat.astype(np.float32)})
    m = pred.shape[1] // 2
    return pred[0, :m].astype(np.int64), np.clip(pred[0, m:], 0, SCALE_BINS - 1).astype(np.int64)


@dataclass
class TileAnalysis:
    """What the encoder graph saw of one tile: the tile's latents y and hyper-latents z,
    and for the refinement the window around it (its pixels padded to multiples of ALIGN,
    1 on the image's own pixels and 0 on the padding, its latents, where the tile's
    latents sit among them) and which of the tile's latents it may move: not those next
    to another tile, which that tile's refinement, working at the same time, also
    corrects (both would correct the same pixels: a seam)."""

    y: np.ndarray
    z: np.ndarray
    window: np.ndarray
    real: np.ndarray
    window_y: np.ndarray
    tile: tuple[slice, slice]
    movable: np.ndarray
    keep_buffers: bool


def _analyse(package, rgb: np.ndarray, box, gain: np.ndarray) -> TileAnalysis:
    """Latents y and hyper-latents z of one tile, computed with MARGIN pixels of context;
    the graphs keep their buffers where the image and the window are small enough."""
    h_img, w_img = rgb.shape[:2]
    wx0, wy0, wx1, wy1 = grow_box(box, w_img, h_img, MARGIN)
    window = rgb[wy0:wy1, wx0:wx1]
    ph, pw = -(-window.shape[0] // ALIGN) * ALIGN, -(-window.shape[1] // ALIGN) * ALIGN
    padded = np.pad(window, ((0, ph - window.shape[0]), (0, pw - window.shape[1]), (0, 0)), mode="edge")
    image = (padded.astype(np.float32) / 255).transpose(2, 0, 1)[None]
    keep = ph * pw <= KEPT_WINDOW and h_img * w_img <= KEPT_IMAGE
    y, z = package.graph("encoder", keep).run(["y", "z"], {"image": image, "gain": gain[None, :, None, None]})
    x0, y0, x1, y1 = box
    zh, zw = -(-(y1 - y0) // ALIGN), -(-(x1 - x0) // ALIGN)
    oy, ox = (y0 - wy0) // ALIGN, (x0 - wx0) // ALIGN
    r = ALIGN // 16
    tile = (slice(oy * r, (oy + zh) * r), slice(ox * r, (ox + zw) * r))
    real = np.zeros((1, 1, ph, pw), np.float32)
    real[..., :window.shape[0], :window.shape[1]] = 1
    movable = np.ones((zh * r, zw * r), bool)
    movable[:int(y0 > 0)] = movable[zh * r - int(y1 < h_img):] = False
    movable[:, :int(x0 > 0)] = movable[:, zw * r - int(x1 < w_img):] = False
    return TileAnalysis(y[:, :, tile[0], tile[1]], z[:, :, oy:oy + zh, ox:ox + zw], image, real, y, tile, movable,
                        keep)


def rounded_symbols(lossy: _Lossy, residual: np.ndarray, rows: np.ndarray, quality: int) -> np.ndarray:
    """The symbols coding latent residuals y - mean (M, h, w) under their table rows.

    round(residual), clamped; where the package has rounding hints, a nonzero symbol moves
    one step toward zero wherever the bits that saves outweigh the squared error it adds at
    the package's rate-distortion trade-off (error_weights).  The trade-off is the trained
    λ times a factor that makes up for the errors of neighbouring moves adding up in the
    pixels (they share a direction).  At equal PSNR it codes 1.7 % fewer bits on training
    photos, 0.1 % on Kodak (RUNS.md, session 12)."""
    nearest = np.clip(np.round(residual), -LATENT_CLIP, LATENT_CLIP).astype(np.int64)
    if not lossy.optimised_rounding:
        return nearest
    smaller = nearest - np.sign(nearest)
    saved = lossy.bits[rows, nearest + LATENT_CLIP] - lossy.bits[rows, smaller + LATENT_CLIP]
    added = (smaller - residual) ** 2 - (nearest - residual) ** 2
    move = (nearest != 0) & (saved > lossy.error_weights(quality)[:, None, None] * added)
    return np.where(move, smaller, nearest)


def refined_symbols(package, lossy: _Lossy, tile: TileAnalysis, symbols: np.ndarray, mean: np.ndarray,
                    rows: np.ndarray, quality: int) -> np.ndarray:
    """Symbols moved one step at a time wherever that lowers bits + λ·255²/3 · (pixel
    squared error), the trade-off training optimised.  The package's refine graph gives the
    error's gradient at ``symbols`` once (the neighbouring tiles' latents stand in as
    their nearest integers); each move then updates its neighbours' gradient through the
    synthesis coupling (J^T J over 3x3 latents, scaled per level by the synthesis
    energies), and a second-order term prices the move's own error.  Each of
    REFINE_SWEEPS sweeps visits one of 4 interleaved latent grids and moves at most one
    channel per position, so moves that would correct the same pixels do not pile up.
    Uncoded latents stay 0, and latents next to another tile stay (``TileAnalysis``).
    As real files on 13 training photos, −6.1 % rate at equal PSNR against plain
    rounding, −5.4 % against nic-lossy-9's rounding (RUNS.md, session 13)."""
    _, inv_gain = lossy.gains(quality)
    coded = rows >= lossy.uncoded_rows
    symbols = np.where(coded, symbols, 0)  # what the decoder rebuilds there
    latents = np.round(tile.window_y[0])
    latents[:, tile.tile[0], tile.tile[1]] = symbols + mean
    (grad,) = package.graph("refine", tile.keep_buffers).run(["gradient"], {
        "latents": latents[None], "inv_gain": inv_gain[None, :, None, None], "image": tile.window,
        "weight": tile.real})
    weight = lossy.between_levels(lossy.log_refine_lambda, quality) * 255 ** 2 / 3
    scale = np.sqrt(lossy.between_levels(lossy.log_energy, quality)) * inv_gain
    own = (weight * scale ** 2).astype(np.float32)
    # channel last from here: each move reads and updates contiguous rows of M values
    coupling = lossy.coupling_rows * np.float32(2 * weight) * (scale[:, None] * scale[None, :]).astype(np.float32)

    def channel_last(a: np.ndarray, dtype) -> np.ndarray:
        return np.ascontiguousarray(a.transpose(1, 2, 0), dtype=dtype)

    g = channel_last(weight * grad[0][:, tile.tile[0], tile.tile[1]], np.float32)
    sym = channel_last(symbols, np.int64)
    table = channel_last(rows * (2 * LATENT_CLIP + 1) + LATENT_CLIP, np.intp)
    frozen = channel_last(~coded | ~tile.movable[None], bool)
    down, up = lossy.bit_steps
    h, w, _ = sym.shape
    for sweep in range(REFINE_SWEEPS):
        pi, pj = divmod(sweep % 4, 2)
        grid = (slice(pi, None, 2), slice(pj, None, 2))
        at = table[grid] + sym[grid]
        cost_down = np.take(down, at) - g[grid] + own
        cost_up = np.take(up, at) + g[grid] + own
        step = np.where(cost_up < cost_down, 1, -1)
        cost = np.minimum(cost_down, cost_up)
        cost[frozen[grid]] = np.inf
        channel = np.argmin(cost, axis=2)
        gi, gj = np.nonzero(np.take_along_axis(cost, channel[..., None], 2)[..., 0] < 0)
        if not len(gi):
            continue
        ch = channel[gi, gj]
        d = step[gi, gj, ch]
        ti, tj = gi * 2 + pi, gj * 2 + pj
        sym[ti, tj, ch] += d
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                ai, aj = ti + di, tj + dj
                ok = (ai >= 0) & (ai < h) & (aj >= 0) & (aj < w)
                g[ai[ok], aj[ok]] += coupling[1 + di, 1 + dj, ch[ok]] * d[ok, None]
    return sym.transpose(2, 0, 1)


def encode_tile(package, tile: TileAnalysis, quality: int) -> bytes:
    """Entropy-code one tile's latents (from ``_analyse``) at ``quality``."""
    lossy = _lossy_for(package)
    z_hat = np.clip(np.round(tile.z), -LATENT_CLIP, LATENT_CLIP).astype(np.int64)
    mean8, rows = _hyper(package, z_hat, tile.keep_buffers)
    mean = mean8.astype(np.float32) / (1 << MEAN_BITS)
    sym_y = rounded_symbols(lossy, tile.y[0] - mean, rows, quality)
    if lossy.refines:
        sym_y = refined_symbols(package, lossy, tile, sym_y, mean, rows, quality)
    sym_y = sym_y.ravel()
    rows = rows.ravel()
    coded = lossy.coded(rows)
    z_rows = np.broadcast_to(lossy.z_table_rows(quality)[:, None, None], z_hat.shape[1:]).ravel()
    enc = entropy.Encoder()
    enc.add_grouped(lossy.models, z_rows, z_hat[0].ravel() + LATENT_CLIP)
    enc.add_grouped(lossy.models, rows[coded], sym_y[coded] + LATENT_CLIP)
    return _HEAD.pack(z_hat.shape[2], z_hat.shape[3], tile.y.shape[1], z_hat.shape[1]) + enc.finish()


def encode_layer(package, pixels: np.ndarray, boxes: list, quality: int, workers: int) -> list[bytes]:
    """Payloads of every tile of an (h, w, 3) or (h, w) uint8 layer."""
    from concurrent.futures import ThreadPoolExecutor

    rgb = np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels
    gain, _ = _lossy_for(package).gains(quality)

    def one(box):
        return encode_tile(package, _analyse(package, rgb, box, gain), quality)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, boxes))


def decode_latents(package, data: bytes, shape: tuple[int, int], quality: int, index: int) -> np.ndarray:
    """The dequantised latents (1, M, h/16, w/16 rounded up to 4) of one tile, float16
    (exact: multiples of 1/8 below 2**11)."""
    lossy = _lossy_for(package)
    h, w = shape
    if len(data) < _HEAD.size:
        raise NicError(f"tile {index}: lossy payload is too short")
    zh, zw, yc, zc = _HEAD.unpack_from(data)
    if (zh, zw) != (-(-h // ALIGN), -(-w // ALIGN)) or yc != lossy.log_gain.shape[1] or \
            zc != lossy.z_rows.shape[1]:
        raise NicError(f"tile {index}: lossy payload does not match the tile size or model")
    dec = entropy.Decoder(memoryview(data)[_HEAD.size:], f"tile {index}", compiled=package.runtime == "onnxruntime")
    z_rows = np.broadcast_to(lossy.z_table_rows(quality)[:, None, None], (zc, zh, zw)).ravel()
    z_hat = (dec.decode_grouped(lossy.models, z_rows) - LATENT_CLIP).reshape(1, zc, zh, zw)
    mean8, rows = _hyper(package, z_hat)
    flat = rows.ravel()
    coded = lossy.coded(flat)
    sym_y = np.zeros(flat.size, np.int64)
    sym_y[coded] = dec.decode_grouped(lossy.models, flat[coded]) - LATENT_CLIP
    sym_y = sym_y.reshape(rows.shape)
    dec.check_finished()
    eighths = (sym_y << MEAN_BITS) + mean8  # exact in float32, which converts twice as fast as float64
    return (eighths.astype(np.float32) * np.float32(1 / (1 << MEAN_BITS))).astype(np.float16)[None]


BLOCK_ROWS, BLOCK_COLS = 32, 48  # latents synthesised per call: big enough to amortise the halo,
# small enough that ONNX Runtime's column buffers (about 16 KiB per latent) stay on the heap


def synthesis_blocks(rows: int, cols: int) -> list[tuple[int, int, int, int]]:
    """(r0, r1, c0, c1) latent blocks covering a rows x cols canvas.  They depend on the
    image size only (never on the thread count), and a canvas that would be a single block
    is halved so two cores share it."""
    if rows <= BLOCK_ROWS and cols <= BLOCK_COLS and rows >= 8:
        row_step = -(-rows // 2)
    else:
        row_step = BLOCK_ROWS
    return [(r, min(rows, r + row_step), c, min(cols, c + BLOCK_COLS))
            for r in range(0, rows, row_step) for c in range(0, cols, BLOCK_COLS)]


def decode_layer(package, payloads: dict[int, bytes], boxes: list, quality: int,
                 out: np.ndarray, workers: int) -> None:
    """Decode every coder-3 tile into ``out`` ((h, w, 3) or (h, w) uint8).

    The tiles' latents are laid out on one canvas, which is synthesised in blocks, each
    with HALO latents of context on every side: tile borders carry no seam, and the work
    splits evenly over ``workers``.  Areas of other tiles are left for the caller."""
    from concurrent.futures import ThreadPoolExecutor

    height, width = out.shape[:2]
    r = 16  # pixels per latent
    canvas = None

    def latents(ti: int) -> tuple[int, np.ndarray]:
        x0, y0, x1, y1 = boxes[ti]
        return ti, decode_latents(package, payloads[ti], (y1 - y0, x1 - x0), quality, ti)

    with ThreadPoolExecutor(workers) as pool:
        for ti, lat in pool.map(latents, payloads):
            if canvas is None:
                rows, cols = -(-height // ALIGN) * (ALIGN // r), -(-width // ALIGN) * (ALIGN // r)
                canvas = np.zeros((lat.shape[1], rows, cols), np.float16)
            x0, y0 = boxes[ti][:2]
            canvas[:, y0 // r:y0 // r + lat.shape[2], x0 // r:x0 // r + lat.shape[3]] = lat[0]
    if canvas is None:
        return
    _, inv_gain = _lossy_for(package).gains(quality)
    inv_gain = inv_gain[None, :, None, None]
    lossy_boxes = [boxes[ti] for ti in payloads]

    def synthesise(block: tuple[int, int, int, int]) -> None:
        r0, r1, c0, c1 = block
        w0, w1 = max(0, r0 - HALO), min(canvas.shape[1], r1 + HALO)
        v0, v1 = max(0, c0 - HALO), min(canvas.shape[2], c1 + HALO)
        window = canvas[None, :, w0:w1, v0:v1].astype(np.float32)
        (image,) = package.graph("decoder", keep_buffers=True).run(["image"], {"latents": window,
                                                                              "inv_gain": inv_gain})
        py0, px0 = r0 * r, c0 * r
        py1, px1 = min(height, r1 * r), min(width, c1 * r)
        if py0 >= py1 or px0 >= px1:
            return
        crop = image[0, :, py0 - w0 * r:py1 - w0 * r, px0 - v0 * r:px1 - v0 * r].transpose(1, 2, 0)
        rgb = np.clip(np.round(crop * 255), 0, 255).astype(np.uint8)
        if out.ndim == 2:
            rgb = np.clip(np.round(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)),
                          0, 255).astype(np.uint8)
        for x0, y0, x1, y1 in lossy_boxes:  # only the coder-3 tiles' pixels are ours to write
            ya, yb, xa, xb = max(y0, py0), min(y1, py1), max(x0, px0), min(x1, px1)
            if ya < yb and xa < xb:
                out[ya:yb, xa:xb] = rgb[ya - py0:yb - py0, xa - px0:xb - px0]

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(synthesise, synthesis_blocks(canvas.shape[1], canvas.shape[2])))
