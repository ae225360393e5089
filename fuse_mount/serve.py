"""Which files the photo store may compress, and the exact bytes it serves back for them.

A stored image is served in its original format by a writer of our own whose
output depends only on the pixels and metadata: PNG with stored (uncompressed)
deflate blocks, binary PGM/PPM.  So the served size is known from the `.nic`
header alone (``stat`` never decodes), and it never changes with library versions.

A file is compressed only when everything in it survives that round trip: the
allowed PNG chunks are IHDR, IDAT, IEND, iCCP, eXIf and an XMP iTXt; a PNG with
any other chunk (palette, transparency key, text, gamma...), 16-bit colour, or
a bit depth Pillow widens, is kept byte for byte instead.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
XMP_KEYWORD = b"XML:com.adobe.xmp"
ICC_NAME = b"ICC Profile"
STORED_BLOCK = 65535
#: PNG (colour type, bit depth) -> Pillow mode we can serve back identically.
PNG_MODES = {(0, 1): "1", (0, 8): "L", (0, 16): "I;16", (2, 8): "RGB", (4, 8): "LA", (6, 8): "RGBA"}
PNG_TYPES = {v: k for k, v in PNG_MODES.items()}
PNM_MODES = {b"P5": "L", b"P6": "RGB"}


@dataclass(frozen=True)
class Source:
    """What a written file is: its format, Pillow mode and metadata to keep."""

    fmt: str  # "png" | "pnm"
    mode: str
    metadata: dict


def _chunks(data: bytes):
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if len(body) != length or pos + 12 + length > len(data):
            raise ValueError("truncated PNG chunk")
        crc = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]
        if zlib.crc32(ctype + body) != crc:
            raise ValueError("bad PNG chunk CRC")
        yield ctype, body
        pos += 12 + length
        if ctype == b"IEND":
            if pos != len(data):
                raise ValueError("data after IEND")
            return
    raise ValueError("PNG without IEND")


def inspect(data: bytes, name: str) -> Source | None:
    """A Source if ``data`` (a file called ``name``) can be stored and served back
    without losing anything; None to keep it byte for byte."""
    lower = name.lower()
    try:
        if lower.endswith(".png") and data.startswith(PNG_SIGNATURE):
            return _inspect_png(data)
        if lower.endswith((".pgm", ".ppm", ".pnm")) and data[:2] in PNM_MODES:
            return _inspect_pnm(data)
    except (ValueError, struct.error, zlib.error):
        return None
    return None


def _inspect_png(data: bytes) -> Source | None:
    meta: dict[str, bytes] = {}
    mode = None
    for ctype, body in _chunks(data):
        if ctype == b"IHDR":
            w, h, depth, ctype_, comp, filt, interlace = struct.unpack(">IIBBBBB", body)
            mode = PNG_MODES.get((ctype_, depth))
            if mode is None or comp or filt:
                return None
        elif ctype == b"iCCP":
            name, rest = body.split(b"\0", 1)
            meta["icc_profile"] = zlib.decompress(rest[1:])
        elif ctype == b"eXIf":
            meta["exif"] = body
        elif ctype == b"iTXt" and body.startswith(XMP_KEYWORD + b"\0\0\0"):
            keyword, rest = body.split(b"\0", 1)
            lang_end = rest.index(b"\0", 2)
            trans_end = rest.index(b"\0", lang_end + 1)
            meta["xmp"] = rest[trans_end + 1:]
        elif ctype not in (b"IDAT", b"IEND"):
            return None
    return Source("png", mode, meta) if mode else None


def _pnm_header(data: bytes) -> tuple[bytes, int, int, int, int]:
    """(magic, width, height, maxval, header length) of a binary PGM/PPM without comments."""
    fields, pos = [], 2
    while len(fields) < 3:
        while data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            raise ValueError("PNM comments are not kept")
        start = pos
        while data[pos:pos + 1].isdigit():
            pos += 1
        fields.append(int(data[start:pos]))
    if not data[pos:pos + 1].isspace():
        raise ValueError("bad PNM header")
    return data[:2], fields[0], fields[1], fields[2], pos + 1


def _inspect_pnm(data: bytes) -> Source | None:
    magic, w, h, maxval, hl = _pnm_header(data)
    channels = 3 if magic == b"P6" else 1
    if maxval != 255 or len(data) != hl + w * h * channels:
        return None
    return Source("pnm", PNM_MODES[magic], {})


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def _stored_zlib_size(n: int) -> int:
    return 2 + 5 * max(1, -(-n // STORED_BLOCK)) + n + 4


def _stored_zlib(raw: bytes) -> bytes:
    """A zlib stream of stored blocks: deterministic bytes for given input."""
    out = bytearray(b"\x78\x01")
    view = memoryview(raw)
    n = len(raw)
    starts = range(0, n, STORED_BLOCK) if n else [0]
    for s in starts:
        block = view[s:s + STORED_BLOCK]
        final = 1 if s + STORED_BLOCK >= n else 0
        out += struct.pack("<BHH", final, len(block), 0xFFFF ^ len(block))
        out += block
    out += struct.pack(">I", zlib.adler32(raw))
    return bytes(out)


def _png_row_bytes(mode: str, width: int) -> int:
    if mode == "1":
        return -(-width // 8)
    return width * {"L": 1, "I;16": 2, "RGB": 3, "LA": 2, "RGBA": 4}[mode]


def _png_head(mode: str, width: int, height: int, meta: dict[str, bytes]) -> bytes:
    ctype, depth = PNG_TYPES[mode]
    head = PNG_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, ctype, 0, 0, 0))
    if "icc_profile" in meta:
        head += _chunk(b"iCCP", ICC_NAME + b"\0\0" + _stored_zlib(meta["icc_profile"]))
    if "exif" in meta:
        head += _chunk(b"eXIf", meta["exif"])
    if "xmp" in meta:
        head += _chunk(b"iTXt", XMP_KEYWORD + b"\0\0\0\0\0" + meta["xmp"])
    return head


def served_size(fmt: str, mode: str, width: int, height: int, meta_sizes: dict[str, int]) -> int:
    """Exact length of ``serve(...)`` from dimensions and metadata sizes alone."""
    if fmt == "pnm":
        return len(_pnm_head(mode, width, height)) + width * height * (3 if mode == "RGB" else 1)
    head = len(PNG_SIGNATURE) + 25
    if "icc_profile" in meta_sizes:
        head += 12 + len(ICC_NAME) + 2 + _stored_zlib_size(meta_sizes["icc_profile"])
    if "exif" in meta_sizes:
        head += 12 + meta_sizes["exif"]
    if "xmp" in meta_sizes:
        head += 12 + len(XMP_KEYWORD) + 5 + meta_sizes["xmp"]
    raw = height * (1 + _png_row_bytes(mode, width))
    return head + 12 + _stored_zlib_size(raw) + 12


def _pnm_head(mode: str, width: int, height: int) -> bytes:
    return b"%s\n%d %d\n255\n" % (b"P6" if mode == "RGB" else b"P5", width, height)


def serve(fmt: str, mode: str, pixels: np.ndarray, meta: dict[str, bytes]) -> bytes:
    """The served file for decoded ``pixels`` (deterministic)."""
    height, width = pixels.shape[:2]
    if fmt == "pnm":
        return _pnm_head(mode, width, height) + np.ascontiguousarray(pixels, np.uint8).tobytes()
    if mode == "1":
        rows = np.packbits(pixels.astype(bool), axis=1)
    elif mode == "I;16":
        rows = pixels.astype(">u2").view(np.uint8).reshape(height, -1)
    else:
        rows = np.ascontiguousarray(pixels, np.uint8).reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    return _png_head(mode, width, height, meta) + _chunk(b"IDAT", _stored_zlib(raw)) + _chunk(b"IEND", b"")
