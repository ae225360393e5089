"""The library API: encode and decode NumPy images to and from `.nic` bytes.

This is what the Pillow plugin, the CLI and the FUSE store call.  It splits an
image into layers (colour, alpha) and tiles, asks the tile coders for
candidates, keeps the smallest, and reverses all of it on decode.  Tiles are
independent, so they are coded on a thread pool.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import zstandard

from . import container
from .container import (CODER_LOSSLESS_CALIBRATED, CODER_LOSSLESS_RGB_PLANES, CODER_LOSSY, CODER_RAW,
                        CODER_STANDARD, CODER_ZSTD, HYBRID, LEARNED_LOSSLESS, LOSSLESS, LOSSY, MODE_LAYERS,
                        QUALITY_CODINGS, STORED, Header, Layer, NicError, Tile)

SUPPORTED_MODES = tuple(MODE_LAYERS)
DEFAULT_TILE = {STORED: 256, LOSSLESS: 512, LOSSY: 512, HYBRID: 1024}  # hybrid: one JPEG header per MP
PROFILES = ("learned", "hybrid")  # lossy coding: the learned transform codec, or a standard codec + restoration
TUNES = {"psnr": "lossy", "ssim": "lossy-ssim"}  # the learned profile's model kind per tuning
SMALL_TILE = 256
MIN_LOSSLESS_TILES = 4  # enough to keep two cores busy; fixed, so output never depends on the machine


def default_tile_size(coding: int, width: int, height: int) -> int:
    """The coding's tile size, halved for lossless images with fewer than four tiles
    (a 768x512 photo: 6 tiles instead of 2 uneven ones, +0.25 % bits, faster decode)."""
    size = DEFAULT_TILE[coding]
    if coding == LOSSLESS and -(-width // size) * -(-height // size) < MIN_LOSSLESS_TILES:
        return SMALL_TILE
    return size


@dataclass
class Decoded:
    """A decoded image: Pillow mode, pixel array and raw metadata chunks."""

    mode: str
    pixels: np.ndarray
    metadata: dict[str, bytes] = field(default_factory=dict)


def workers() -> int:
    """Threads for tiles and blocks: $NIC_THREADS, else every core."""
    return max(1, min(os.cpu_count() or 1, int(os.environ.get("NIC_THREADS", "0")) or (os.cpu_count() or 1)))


def _sample_dtype(mode: str) -> np.dtype:
    return np.dtype("<u2") if mode == "I;16" else np.dtype(np.uint8)


def _check_pixels(pixels: np.ndarray, mode: str) -> np.ndarray:
    if mode not in MODE_LAYERS:
        raise ValueError(f"unsupported mode {mode!r}; supported: {', '.join(SUPPORTED_MODES)}")
    channels = sum(MODE_LAYERS[mode])
    if pixels.ndim == 3 and channels == 1 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim != (2 if channels == 1 else 3) or (channels > 1 and pixels.shape[2] != channels):
        raise ValueError(f"mode {mode} needs an array of shape (h, w{'' if channels == 1 else f', {channels}'}), "
                         f"got {pixels.shape}")
    if mode == "1":
        pixels = (pixels != 0).astype(np.uint8)
    elif pixels.dtype != _sample_dtype(mode):
        if not np.issubdtype(pixels.dtype, np.integer) or pixels.min(initial=0) < 0 or \
                pixels.max(initial=0) > np.iinfo(_sample_dtype(mode)).max:
            raise ValueError(f"mode {mode} needs {_sample_dtype(mode)} samples, got {pixels.dtype}")
        pixels = pixels.astype(_sample_dtype(mode))
    container.check_dimensions(pixels.shape[1], pixels.shape[0])
    return pixels


def _layers(pixels: np.ndarray, mode: str) -> list[np.ndarray]:
    """Split into the colour layer and, for LA/RGBA, the alpha layer."""
    if len(MODE_LAYERS[mode]) == 1:
        return [pixels]
    return [pixels[..., :-1].squeeze(-1) if pixels.shape[-1] == 2 else pixels[..., :-1], pixels[..., -1]]


def _raw_bytes(tile: np.ndarray) -> bytes:
    return np.ascontiguousarray(tile).tobytes()


def _stored_candidates(tile: np.ndarray) -> list[tuple[int, bytes]]:
    raw = _raw_bytes(tile)
    return [(CODER_RAW, raw), (CODER_ZSTD, zstandard.ZstdCompressor(level=9).compress(raw))]


def encode(pixels: np.ndarray, mode: str, *, lossless: bool = True, quality: int = 90,
           metadata: dict[str, bytes] | None = None, tile_size: int | None = None,
           runtime: str | None = None, target_size: int | None = None, profile: str = "learned",
           tune: str = "psnr") -> bytes:
    """Encode an image array of Pillow ``mode`` to `.nic` bytes.

    ``lossless=True`` guarantees identical pixels on decode; otherwise ``quality``
    (1-100) selects the rate of the lossy ``profile`` (alpha stays lossless): "learned",
    the learned transform codec, or "hybrid", a standard codec restored by a learned
    network.  ``tune`` picks the learned profile's model: "psnr" (trained on MSE) or
    "ssim" (trained on MS-SSIM: sharper textures, lower PSNR).  ``target_size`` (bytes)
    asks for the highest quality whose file fits, found by bisection (quality 1 if none
    fits).  Invalid arguments raise ValueError.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if tune not in TUNES:
        raise ValueError(f"unknown tune {tune!r}; choose one of {', '.join(TUNES)}")
    if tune != "psnr" and profile != "learned":
        raise ValueError(f"tune={tune!r} applies to the learned profile only")
    if target_size is not None:
        if lossless:
            raise ValueError("target_size applies to lossy coding (lossless=False)")
        if isinstance(target_size, bool) or not isinstance(target_size, (int, np.integer)) or target_size < 1:
            raise ValueError(f"target_size must be a positive number of bytes, got {target_size!r}")
        kwargs = dict(lossless=False, metadata=metadata, tile_size=tile_size, runtime=runtime, profile=profile,
                      tune=tune)
        lo, hi = 1, 100
        best = encode(pixels, mode, quality=1, **kwargs)
        if len(best) > target_size:
            return best
        while lo < hi:  # invariant: quality lo fits
            mid = (lo + hi + 1) // 2
            data = encode(pixels, mode, quality=mid, **kwargs)
            if len(data) <= target_size:
                lo, best = mid, data
            else:
                hi = mid - 1
        return best
    from . import models

    pixels = _check_pixels(np.asarray(pixels), mode)
    if not lossless and not (isinstance(quality, (int, np.integer)) and 1 <= quality <= 100):
        raise ValueError(f"quality must be an integer from 1 to 100, got {quality!r}")
    meta = dict(metadata or {})
    for key, value in meta.items():
        if key not in container.META_KEYS:
            raise ValueError(f"unknown metadata {key!r}")
        if not isinstance(value, (bytes, bytearray)):
            raise ValueError(f"metadata {key!r} must be bytes")
    layers = _layers(pixels, mode)
    lossy_ok = not lossless and mode not in ("1", "I;16")
    colour_coding = (HYBRID if profile == "hybrid" else LOSSY) if lossy_ok else LOSSLESS
    size = tile_size or default_tile_size(colour_coding, pixels.shape[1], pixels.shape[0])
    if not (container.MIN_TILE <= size <= container.MAX_TILE and size % 16 == 0):
        raise ValueError(f"tile_size must be a multiple of 16 from {container.MIN_TILE} to {container.MAX_TILE}")
    if colour_coding == LOSSY and size % 64:
        raise ValueError("lossy coding needs a tile_size that is a multiple of 64")
    header = Header(mode, pixels.shape[1], pixels.shape[0], size, [])
    boxes = [header.tile_box(i) for i in range(header.tiles_x * header.tiles_y)]
    payloads = []
    for li, (planes, layer_pixels) in enumerate(zip(MODE_LAYERS[mode], layers)):
        coding = colour_coding if li == 0 else LOSSLESS
        if coding == HYBRID:
            from . import hybrid
            codec_id, model = hybrid.base_codec_for(runtime)
            coded = _code_tiles(layer_pixels, boxes, lambda tile: (
                CODER_STANDARD, hybrid.encode_tile(tile, quality, codec_id)))
        elif coding == LOSSY:
            from . import lossy
            model = models.default_model(TUNES[tune], runtime)
            if model is None:
                raise ValueError(f"lossy coding with tune={tune!r} needs a {TUNES[tune]} model and none is "
                                 "installed" + ("; use lossless=True" if tune == "psnr" else ""))
            coded = [(CODER_LOSSY, d) for d in lossy.encode_layer(model, layer_pixels, boxes, quality, workers())]
        else:
            model = models.default_model("lossless", runtime) if mode not in ("1", "I;16") else None
            if model is None:
                coding = STORED
            with _process_pool(boxes if model else []) as processes:
                coded = _code_tiles(layer_pixels, boxes, _lossless_coder(model, processes) if model else None)
            if coding == LOSSLESS and all(c not in LEARNED_LOSSLESS for c, _ in coded):
                coding, model = STORED, None  # no tile needed the model: do not depend on it
        layer = Layer(planes, coding, quality if coding in QUALITY_CODINGS else 0,
                      model.name if model else "", model.hash if model else bytes(32),
                      [Tile(c, len(d), 0) for c, d in coded])
        header.layers.append(layer)
        payloads.append([d for _, d in coded])
    out = io.BytesIO()
    container.write(out, header, payloads, meta)
    return out.getvalue()


def _lossless_coder(model, processes):
    """Coder 5 for each tile, and coder 6 too for RGB tiles with a clipped channel (the
    smaller wins), in the worker processes if given."""
    from . import lossless
    encode = processes.encode if processes is not None else lossless.encode_tile

    def code(tile: np.ndarray) -> tuple[int, bytes]:
        candidates = [(CODER_LOSSLESS_CALIBRATED, encode(model, tile))]
        if lossless.clipped_channel(tile):
            candidates.append((CODER_LOSSLESS_RGB_PLANES, encode(model, tile, separate=True)))
        return min(candidates, key=lambda c: len(c[1]))

    return code


def _code_tiles(pixels: np.ndarray, boxes: list, coder) -> list[tuple[int, bytes]]:
    """Per tile, the smallest of raw, zstd and (if given) ``coder(tile) -> (coder id, payload)``."""
    def code_tile(box: tuple[int, int, int, int]) -> tuple[int, bytes]:
        x0, y0, x1, y1 = box
        tile = pixels[y0:y1, x0:x1]
        candidates = _stored_candidates(tile)
        if coder is not None:
            candidates.append(coder(tile))
        return min(candidates, key=lambda c: len(c[1]))

    with ThreadPoolExecutor(workers()) as pool:
        return list(pool.map(code_tile, boxes))


def read_info(source: bytes | BinaryIO | str | os.PathLike) -> Header:
    """Parse and validate the header only (no pixel decoding)."""
    with _open(source) as fp:
        return container.read_header(fp)


class _open:
    """Context manager giving a seekable binary file for bytes, a path or a file object."""

    def __init__(self, source):
        self.source = source
        self.owned = None

    def __enter__(self) -> BinaryIO:
        if isinstance(self.source, (bytes, bytearray, memoryview)):
            return io.BytesIO(self.source)
        if isinstance(self.source, (str, os.PathLike)):
            self.owned = open(self.source, "rb")
            return self.owned
        return self.source

    def __exit__(self, *exc) -> None:
        if self.owned:
            self.owned.close()


def decode(source: bytes | BinaryIO | str | os.PathLike, *, runtime: str | None = None) -> Decoded:
    """Decode a whole `.nic` image.  Raises NicError (an OSError) on any invalid input."""
    with _open(source) as fp:
        header = container.read_header(fp)
        return decode_with_header(fp, header, runtime=runtime)


def decode_with_header(fp: BinaryIO, header: Header, *, runtime: str | None = None) -> Decoded:
    """Decode pixels and metadata of a file whose header was already read."""
    from . import hybrid, lossy, models

    meta = container.read_meta(fp, header)
    layer_arrays = []
    for li, layer in enumerate(header.layers):
        model = models.model_for(layer, runtime) if layer.coding != STORED else None
        payloads = [container.read_payload(fp, t, f"layer {li} tile {ti}") for ti, t in enumerate(layer.tiles)]
        dtype = _sample_dtype(header.mode)
        shape = (header.height, header.width) + ((layer.planes,) if layer.planes > 1 else ())
        out = np.empty(shape, dtype=dtype)
        boxes = [header.tile_box(ti) for ti in range(len(layer.tiles))]
        learned_lossy = [ti for ti, t in enumerate(layer.tiles) if t.coder == CODER_LOSSY]
        if learned_lossy:
            lossy.decode_layer(model, {ti: payloads[ti] for ti in learned_lossy}, boxes,
                               layer.quality, out, workers())

        base_codecs = {}  # coder-4 tile -> its base codec id

        def decode_tile(ti: int) -> None:
            x0, y0, x1, y1 = boxes[ti]
            tshape = (y1 - y0, x1 - x0) + shape[2:]
            coder = layer.tiles[ti].coder
            if coder == CODER_STANDARD:
                base_codecs[ti], out[y0:y1, x0:x1] = hybrid.decode_tile(payloads[ti], tshape, ti)
            else:
                out[y0:y1, x0:x1] = _decode_tile(coder, payloads[ti], tshape, dtype, model, ti, processes)

        others = [ti for ti, t in enumerate(layer.tiles) if t.coder != CODER_LOSSY]
        learned = [boxes[ti] for ti, t in enumerate(layer.tiles) if t.coder in LEARNED_LOSSLESS]
        with _process_pool(learned) as processes, ThreadPoolExecutor(workers()) as pool:
            list(pool.map(decode_tile, others))
        if base_codecs:
            if len(set(base_codecs.values())) > 1:
                raise NicError(f"layer {li}: tiles use different base codecs")
            hybrid.restore_layer(model, next(iter(base_codecs.values())), out, [boxes[ti] for ti in base_codecs],
                                 layer.quality, workers())
        layer_arrays.append(out)
    if len(layer_arrays) == 1:
        pixels = layer_arrays[0]
    else:
        colour, alpha = layer_arrays
        pixels = np.concatenate([colour.reshape(colour.shape[:2] + (-1,)), alpha[..., None]], axis=2)
    return Decoded(header.mode, pixels, meta)


def _process_pool(boxes: list[tuple[int, int, int, int]]):
    """A context giving worker processes for coding these lossless tiles where they pay
    (two or more cores, more than one tile, and either enough pixels to repay starting
    them or a running pool), else None."""
    from . import tile_pool

    pixels = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes)
    if workers() < 2 or len(boxes) < 2 or not tile_pool.enabled():
        return nullcontext(None)
    if pixels < tile_pool.MIN_PIXELS and not tile_pool.running():
        return nullcontext(None)
    return tile_pool.borrowed(workers())


def _decode_tile(coder: int, data: bytes, shape: tuple[int, ...], dtype: np.dtype, model,
                 index: int, processes=None) -> np.ndarray:
    """One coder 0, 1, 2, 5 or 6 tile; learned ones in the worker processes if given."""
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if coder == CODER_ZSTD:
        try:
            data = zstandard.ZstdDecompressor().decompress(data, max_output_size=nbytes)
        except zstandard.ZstdError as exc:
            raise NicError(f"tile {index}: corrupt zstd data ({exc})") from None
    if coder in (CODER_RAW, CODER_ZSTD):
        if len(data) != nbytes:
            raise NicError(f"tile {index}: {len(data)} sample bytes, expected {nbytes}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    from . import lossless
    decode = processes.decode if processes is not None else lossless.decode_tile
    return decode(model, data, shape, index, coder in (CODER_LOSSLESS_CALIBRATED, CODER_LOSSLESS_RGB_PLANES),
                  coder == CODER_LOSSLESS_RGB_PLANES)
