"""Codecs compared in the benchmarks, behind one small interface.

Each codec encodes an RGB uint8 array at a setting (a quality, or None for lossless)
and decodes its own bytes back to an RGB array.  nic and the peers run in the same
process on the same images, so their figures are comparable ratios.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

import pillow_nic
from pillow_nic import models


@dataclass(frozen=True)
class Codec:
    name: str
    encode: Callable[[np.ndarray, object], bytes]
    decode: Callable[[bytes], np.ndarray]
    settings: tuple  # quality sweep for lossy codecs; (None,) for lossless ones
    lossless: bool = False
    base: str | None = None  # the peer whose files this codec restores (hybrid, enhance)


def _pil_codec(fmt: str, **fixed) -> tuple[Callable, Callable]:
    def enc(rgb: np.ndarray, quality) -> bytes:
        buf = io.BytesIO()
        opts = dict(fixed)
        if quality is not None:
            opts["quality"] = quality
        Image.fromarray(rgb).save(buf, fmt, **opts)
        return buf.getvalue()

    def dec(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))

    return enc, dec


def _nic_lossy(tune: str = "psnr") -> Codec:
    def enc(rgb, q):
        return pillow_nic.encode(rgb, "RGB", lossless=False, quality=q, tune=tune)

    return Codec("nic" if tune == "psnr" else f"nic-{tune}", enc, lambda d: pillow_nic.decode(d).pixels,
                 (5, 15, 30, 45, 60, 75, 90, 100))


def _nic_lossless() -> Codec:
    return Codec("nic-lossless", lambda rgb, _: pillow_nic.encode(rgb, "RGB", lossless=True),
                 lambda d: pillow_nic.decode(d).pixels, (None,), lossless=True)


JPEG_SETTINGS = (5, 10, 20, 35, 50, 65, 80, 90)


def _jpeg_enhanced() -> Codec:
    """Pillow's JPEG files, decoded and then restored by `nic enhance`'s network."""
    from pillow_nic.codec import workers
    from pillow_nic.restore import enhance_jpeg

    enc, _ = _pil_codec("JPEG", subsampling="4:2:0", optimize=True)

    def dec(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(enhance_jpeg(im, workers=workers()))

    return Codec("jpeg+enhance", enc, dec, JPEG_SETTINGS, base="jpeg")


def _nic_hybrid() -> Codec:
    def enc(rgb, q):
        return pillow_nic.encode(rgb, "RGB", lossless=False, quality=q, profile="hybrid")

    return Codec("nic-hybrid", enc, lambda d: pillow_nic.decode(d).pixels, JPEG_SETTINGS, base="jpeg")


def lossy_codecs() -> list[Codec]:
    out = []
    if models.default_model("lossy") is not None:
        out.append(_nic_lossy())
    if models.default_model("lossy-ssim") is not None:
        out.append(_nic_lossy("ssim"))
    out.append(Codec("jpeg", *_pil_codec("JPEG", subsampling="4:2:0", optimize=True), JPEG_SETTINGS))
    if models.default_model("restore-jpeg") is not None:
        out += [_nic_hybrid(), _jpeg_enhanced()]
    out.append(Codec("webp", *_pil_codec("WEBP", method=6), (5, 15, 30, 50, 70, 85, 95)))
    out.append(Codec("avif", *_pil_codec("AVIF", speed=6), (20, 35, 50, 60, 70, 80, 90)))
    jxl = _jpegxl()
    if jxl:
        out.append(jxl)
    return out


def lossless_codecs(include_slow: bool = True) -> list[Codec]:
    out = []
    if models.default_model("lossless") is not None:
        out.append(_nic_lossless())
    out.append(Codec("png", *_pil_codec("PNG", optimize=True), (None,), lossless=True))
    out.append(Codec("webp-lossless", *_pil_codec("WEBP", lossless=True, method=6 if include_slow else 4,
                                                 quality=100), (None,), lossless=True))
    try:
        import imagecodecs as ic

        if ic.JPEGXL.available:
            out.append(Codec("jpegxl-lossless-e7", lambda rgb, _: ic.jpegxl_encode(rgb, lossless=True, effort=7),
                             ic.jpegxl_decode, (None,), lossless=True))
        if ic.JPEGLS.available:
            out.append(Codec("jpegls", lambda rgb, _: ic.jpegls_encode(rgb, level=0), ic.jpegls_decode, (None,),
                             lossless=True))
        if ic.JPEG2K.available:
            out.append(Codec("jpeg2000-lossless", lambda rgb, _: ic.jpeg2k_encode(rgb, level=0, reversible=True),
                             ic.jpeg2k_decode, (None,), lossless=True))
    except ImportError:
        pass
    return out


def _jpegxl() -> Codec | None:
    try:
        import imagecodecs as ic
    except ImportError:
        return None
    if not ic.JPEGXL.available:
        return None
    # imagecodecs maps level (quality) to a butteraugli distance
    return Codec("jpegxl", lambda rgb, q: ic.jpegxl_encode(rgb, level=q, effort=7), ic.jpegxl_decode,
                 (10, 25, 40, 55, 70, 82, 92))


def image_set(folder: str | None = None, limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    """The benchmark images: ``folder``, else ../shared/data/kodak, else the bundled sample
    plus generated crops of it (so the benchmarks always run)."""
    root = Path(__file__).resolve().parents[1]
    candidates = [Path(folder)] if folder else [root.parent / "shared" / "data" / "kodak"]
    for d in candidates:
        files = sorted(p for p in d.glob("*") if p.suffix.lower() in (".png", ".ppm", ".bmp", ".tif", ".tiff"))
        if files:
            files = files[:limit] if limit else files
            return [(p.name, np.asarray(Image.open(p).convert("RGB"))) for p in files]
        if folder:
            raise SystemExit(f"no images in {folder}")
    with Image.open(root / "pillow_nic" / "samples" / "chapel.png") as im:
        rgb = np.asarray(im.convert("RGB"))
    images = [("chapel.png", rgb), ("chapel-crop.png", rgb[64:320, 96:480])]
    return images[:limit] if limit else images


def threads_env(n: int) -> dict[str, str]:
    """Environment that limits nic (tiles and ONNX Runtime) to ``n`` threads."""
    env = dict(os.environ)
    env["NIC_THREADS"] = str(n)
    return env
