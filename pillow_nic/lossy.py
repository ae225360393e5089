"""Coder 3: learned lossy coding of one tile (FORMAT.md, "Coder 3").

Encoder graph -> latents y and hyper-latents z (padded to a multiple of 64).
z is rounded and coded under per-channel table rows; the integer-exact hyper
graph turns z into latent means and table rows, identical on every runtime; y is
coded as round(y - mean) under those rows; the decoder graph rebuilds pixels.
Quality 1-100 moves continuously between the model's trained rate levels
through per-channel gains.
"""

from __future__ import annotations

import struct
from functools import lru_cache

import constriction
import numpy as np

from .container import NicError
from .tables import SCALE_BINS

MEAN_BITS = 3
LATENT_CLIP = 127
ALIGN = 64
_HEAD = struct.Struct("<HHHH")  # z height, z width, y channels, z channels


class _Lossy:
    """Per-package constants: entropy models, gains."""

    def __init__(self, package):
        t = package.tables
        family = t["family127"]
        if family.shape != (SCALE_BINS, 2 * LATENT_CLIP + 1):
            raise NicError(f"lossy model tables have shape {family.shape}")
        self.models = [constriction.stream.model.Categorical(family[r].astype(np.float64), perfect=False)
                       for r in range(SCALE_BINS)]
        self.z_rows = t["z_rows"].astype(np.int64)
        self.log_gain = t["log_gain"].astype(np.float64)
        self.log_inv_gain = t["log_inv_gain"].astype(np.float64)
        self.levels = self.z_rows.shape[0]

    def level_position(self, quality: int) -> float:
        return (quality - 1) / 99 * (self.levels - 1)

    def gains(self, quality: int) -> tuple[np.ndarray, np.ndarray]:
        """(gain, inverse gain) vectors: log-linear between the two nearest trained levels."""
        t = self.level_position(quality)
        lo = min(int(np.floor(t)), self.levels - 2)
        f = t - lo
        g = np.exp((1 - f) * self.log_gain[lo] + f * self.log_gain[lo + 1])
        ig = np.exp((1 - f) * self.log_inv_gain[lo] + f * self.log_inv_gain[lo + 1])
        return g.astype(np.float32), ig.astype(np.float32)

    def z_table_rows(self, quality: int) -> np.ndarray:
        return self.z_rows[int(np.floor(self.level_position(quality) + 0.5))]


@lru_cache(maxsize=8)
def _lossy_for(package) -> _Lossy:
    return _Lossy(package)


def _code_groups(rows: np.ndarray, symbols: np.ndarray | None):
    """Stable grouping of symbols by table row: (order, [(row, start, end)])."""
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    starts = np.flatnonzero(np.r_[True, sorted_rows[1:] != sorted_rows[:-1]]) if len(order) else []
    bounds = list(starts) + [len(order)]
    return order, [(int(sorted_rows[s]), s, e) for s, e in zip(bounds[:-1], bounds[1:])]


def _hyper(package, z_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    (pred,) = package.graph("hyper").run(["pred"], {"z": z_hat.astype(np.float32)})
    m = pred.shape[1] // 2
    return pred[0, :m].astype(np.int64), np.clip(pred[0, m:], 0, SCALE_BINS - 1).astype(np.int64)


def encode_tile(package, tile: np.ndarray, quality: int) -> bytes:
    """Code an (h, w, 3) or (h, w) uint8 tile at ``quality``."""
    lossy = _lossy_for(package)
    rgb = np.repeat(tile[..., None], 3, axis=2) if tile.ndim == 2 else tile
    h, w = rgb.shape[:2]
    ph, pw = -(-h // ALIGN) * ALIGN, -(-w // ALIGN) * ALIGN
    padded = np.pad(rgb, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
    image = (padded.astype(np.float32) / 255).transpose(2, 0, 1)[None]
    gain, _ = lossy.gains(quality)
    y, z = package.graph("encoder").run(["y", "z"], {"image": image, "gain": gain[None, :, None, None]})
    z_hat = np.clip(np.round(z), -LATENT_CLIP, LATENT_CLIP).astype(np.int64)
    mean8, rows = _hyper(package, z_hat)
    mean = mean8.astype(np.float32) / (1 << MEAN_BITS)
    sym_y = np.clip(np.round(y[0] - mean), -LATENT_CLIP, LATENT_CLIP).astype(np.int64).ravel()
    zc = z_hat.shape[1]
    z_rows = np.broadcast_to(lossy.z_table_rows(quality)[:, None, None], z_hat.shape[1:]).ravel()
    steps = []
    for sym, row in ((z_hat[0].ravel(), z_rows), (sym_y, rows.ravel())):
        order, groups = _code_groups(row, sym)
        ordered = (sym[order] + LATENT_CLIP).astype(np.int32)
        steps += [(lossy.models[r], ordered[s:e]) for r, s, e in groups]
    coder = constriction.stream.stack.AnsCoder()
    for model, symbols in reversed(steps):
        coder.encode_reverse(symbols, model)
    head = _HEAD.pack(z_hat.shape[2], z_hat.shape[3], y.shape[1], zc)
    return head + coder.get_compressed().astype("<u4").tobytes()


def decode_tile(package, data: bytes, shape: tuple[int, ...], quality: int, index: int) -> np.ndarray:
    """Inverse of encode_tile; NicError if the payload does not fit the tile or model."""
    lossy = _lossy_for(package)
    h, w = shape[:2]
    if len(data) < _HEAD.size or (len(data) - _HEAD.size) % 4:
        raise NicError(f"tile {index}: lossy payload has an invalid length")
    zh, zw, yc, zc = _HEAD.unpack_from(data)
    if (zh, zw) != (-(-h // ALIGN), -(-w // ALIGN)) or yc != lossy.log_gain.shape[1] or \
            zc != lossy.z_rows.shape[1]:
        raise NicError(f"tile {index}: lossy payload does not match the tile size or model")
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(data, "<u4", offset=_HEAD.size).astype(np.uint32))
    z_rows = np.broadcast_to(lossy.z_table_rows(quality)[:, None, None], (zc, zh, zw)).ravel()

    def decode_symbols(rows: np.ndarray) -> np.ndarray:
        order, groups = _code_groups(rows, None)
        out = np.empty(len(rows), dtype=np.int64)
        sorted_syms = np.empty(len(rows), dtype=np.int64)
        for r, s, e in groups:
            sorted_syms[s:e] = coder.decode(lossy.models[r], e - s)
        out[order] = sorted_syms - LATENT_CLIP
        return out

    z_hat = decode_symbols(z_rows).reshape(1, zc, zh, zw)
    mean8, rows = _hyper(package, z_hat)
    sym_y = decode_symbols(rows.ravel()).reshape(rows.shape)
    if not coder.is_empty():
        raise NicError(f"tile {index}: unused data after the last latent (corrupt data)")
    latents = (sym_y + mean8.astype(np.float32) / (1 << MEAN_BITS)).astype(np.float32)[None]
    _, inv_gain = lossy.gains(quality)
    (image,) = package.graph("decoder").run(["image"], {"latents": latents, "inv_gain": inv_gain[None, :, None, None]})
    rgb = np.clip(np.round(image[0].transpose(1, 2, 0)[:h, :w] * 255), 0, 255).astype(np.uint8)
    if len(shape) == 2:
        return np.clip(np.round(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)),
                       0, 255).astype(np.uint8)
    return rgb
