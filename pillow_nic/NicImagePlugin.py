"""Pillow plugin for `.nic`: thin glue between Pillow's plugin API and ``pillow_nic.codec``.

Registered on ``import pillow_nic``; after that ``Image.open("x.nic")`` and
``im.save("x.nic", quality=..., lossless=...)`` work like any built-in format.
"""

from __future__ import annotations

from typing import IO

from PIL import Image, ImageFile

from . import codec, container
from .container import NicError

RAWMODES = {"1": "1;8", "L": "L", "LA": "LA", "RGB": "RGB", "RGBA": "RGBA", "I;16": "I;16"}
EXIF_PREFIX = b"Exif\x00\x00"


def _accept(prefix: bytes) -> bool:
    return prefix[:8] == container.MAGIC


class NicImageFile(ImageFile.ImageFile):
    format = "NIC"
    format_description = "nic learned image codec"
    _decoded = False

    def _open(self) -> None:
        try:
            self._header = container.read_header(self.fp)
        except NicError as exc:
            if "bad magic" in str(exc):
                raise SyntaxError(str(exc)) from None
            raise
        header = self._header
        self._size = (header.width, header.height)
        self._mode = header.mode
        self.info.update(container.read_meta(self.fp, header))
        self.info["lossless"] = all(layer.coding != container.LOSSY for layer in header.layers)
        self.tile = []

    def load(self):
        """Decode all pixels on first access (Pillow's lazy loading)."""
        if not self._decoded:
            decoded = codec.decode_with_header(self.fp, self._header)
            self.load_prepare()
            self.frombytes(decoded.pixels.tobytes(), "raw", RAWMODES[self.mode])
            self._decoded = True
            if self._exclusive_fp:
                self.fp.close()
            self.fp = None
        return Image.Image.load(self)


def _metadata(im: Image.Image, info: dict) -> dict[str, bytes]:
    """EXIF, ICC profile and XMP from save() options, falling back to ``im.info``."""
    out = {}
    for key in ("exif", "icc_profile", "xmp"):
        value = info.get(key, im.info.get(key))
        if value is None or value == b"" or value == "":
            continue
        if isinstance(value, Image.Exif):
            value = value.tobytes()
        if isinstance(value, str):
            value = value.encode("utf-8")
        if not isinstance(value, (bytes, bytearray)):
            raise ValueError(f"{key} must be bytes")
        value = bytes(value)
        if key == "exif" and value.startswith(EXIF_PREFIX):
            value = value[len(EXIF_PREFIX):]
        out[key] = value
    return out


def _save(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    info = im.encoderinfo
    lossless = info.get("lossless", False)
    if not isinstance(lossless, bool):
        raise ValueError(f"lossless must be True or False, got {lossless!r}")
    quality = info.get("quality", 75)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an integer from 1 to 100, got {quality!r}")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "PA":
        im = im.convert("RGBA")
    if im.mode not in RAWMODES:
        raise ValueError(f"cannot write mode {im.mode} as NIC (supported: {', '.join(RAWMODES)}, P)")
    import numpy as np

    pixels = np.asarray(im) if im.mode != "I;16" else np.frombuffer(im.tobytes("raw", "I;16"), "<u2").reshape(
        im.height, im.width)
    data = codec.encode(pixels, im.mode, lossless=lossless, quality=quality, metadata=_metadata(im, info),
                        tile_size=info.get("tile_size"), target_size=info.get("target_size"),
                        profile=info.get("profile", "learned"), tune=info.get("tune", "psnr"))
    fp.write(data)


Image.register_open(NicImageFile.format, NicImageFile, _accept)
Image.register_save(NicImageFile.format, _save)
Image.register_extension(NicImageFile.format, ".nic")
Image.register_mime(NicImageFile.format, "image/x-nic")
