"""Coding 3 (hybrid): tiles coded by a standard codec (coder 4), the decoded layer then
restored by a learned network (FORMAT.md, "Coding 3").

The base codec does the entropy coding it is good at; the network removes its artefacts.
The restoration is the one `nic enhance` uses, so the same package serves both.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from . import models, restore
from .container import NicError

JPEG = 1
#: base codec id -> (Pillow format, restoration package kind)
BASE_CODECS = {JPEG: ("JPEG", "restore-jpeg")}


def base_codec_for(runtime: str | None = None) -> tuple[int, models.ModelPackage]:
    """The base codec to encode with and its restoration package (ValueError if none)."""
    Image.init()  # registers every format Pillow can write
    for codec_id, (fmt, kind) in BASE_CODECS.items():
        package = models.default_model(kind, runtime)
        if package is not None and fmt in Image.SAVE:
            return codec_id, package
    raise ValueError("the hybrid profile needs a restoration model and none is installed")


def encode_tile(tile: np.ndarray, quality: int, codec_id: int) -> bytes:
    """Coder-4 payload of an (h, w, 3) or (h, w) uint8 tile."""
    fmt, _ = BASE_CODECS[codec_id]
    buf = io.BytesIO()
    buf.write(bytes([codec_id]))
    Image.fromarray(tile).save(buf, fmt, quality=quality, optimize=True, subsampling="4:2:0")
    return buf.getvalue()


def decode_tile(data: bytes, shape: tuple[int, ...], index: int) -> tuple[int, np.ndarray]:
    """(base codec id, pixels) of a coder-4 payload, checked against the tile's shape."""
    if not data or data[0] not in BASE_CODECS:
        raise NicError(f"tile {index}: unknown base codec {data[0] if data else 'none'}")
    fmt, _ = BASE_CODECS[data[0]]
    mode = "RGB" if len(shape) == 3 else "L"
    try:
        with Image.open(io.BytesIO(data[1:]), formats=[fmt]) as im:
            if im.size != (shape[1], shape[0]) or im.mode != mode:
                raise NicError(f"tile {index}: {fmt} of {im.size[0]}x{im.size[1]} {im.mode}, "
                               f"expected {shape[1]}x{shape[0]} {mode}")
            im.load()
            return data[0], np.asarray(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, NicError):
            raise
        raise NicError(f"tile {index}: corrupt {fmt} data ({exc})") from None


def restore_layer(package: models.ModelPackage, codec_id: int, out: np.ndarray, boxes: list, quality: int,
                  workers: int) -> None:
    """Replace the pixels of the coder-4 tiles at ``boxes`` in ``out`` by their restoration."""
    kind = BASE_CODECS[codec_id][1]
    if package.kind != kind:
        raise NicError(f"model {package.name} is a {package.kind} package; base codec {codec_id} needs {kind}")
    rgb = np.repeat(out[..., None], 3, axis=2) if out.ndim == 2 else out
    restored = restore.restore(rgb, quality, package, workers)
    if out.ndim == 2:
        restored = ((restored.astype(np.uint16).sum(axis=2) + 1) // 3).astype(np.uint8)
    for x0, y0, x1, y1 in boxes:
        out[y0:y1, x0:x1] = restored[y0:y1, x0:x1]
