"""Reading and writing the `.nic` container (FORMAT.md): header, layers, tiles, metadata.

This module knows bytes and fields only; it does not know how a tile's samples
are coded.  Every field is validated on read, before anything is allocated from
it, and every failure raises NicError with a message naming the field.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

from PIL import Image

MAGIC = b"\x89NIC\r\n\x1a\n"
VERSION = 1

MODES = {1: "1", 2: "L", 3: "LA", 4: "RGB", 5: "RGBA", 6: "I;16"}
MODE_IDS = {v: k for k, v in MODES.items()}
#: Per mode: (planes of each layer) - the colour layer, then alpha if any.
MODE_LAYERS = {"1": (1,), "L": (1,), "LA": (1, 1), "RGB": (3,), "RGBA": (3, 1), "I;16": (1,)}

STORED, LOSSLESS, LOSSY, HYBRID = 0, 1, 2, 3
CODINGS = {STORED: "stored", LOSSLESS: "lossless", LOSSY: "lossy", HYBRID: "hybrid"}
QUALITY_CODINGS = (LOSSY, HYBRID)  # colour layers of 8-bit modes only, with a quality 1-100

CODER_RAW, CODER_ZSTD, CODER_LOSSLESS, CODER_LOSSY, CODER_STANDARD, CODER_LOSSLESS_CALIBRATED = 0, 1, 2, 3, 4, 5
CODER_LOSSLESS_RGB_PLANES = 6
CODERS = {CODER_RAW: "raw", CODER_ZSTD: "zstd", CODER_LOSSLESS: "learned-lossless", CODER_LOSSY: "learned-lossy",
          CODER_STANDARD: "standard-codec", CODER_LOSSLESS_CALIBRATED: "learned-lossless-calibrated",
          CODER_LOSSLESS_RGB_PLANES: "learned-lossless-rgb-planes"}
LEARNED_LOSSLESS = (CODER_LOSSLESS, CODER_LOSSLESS_CALIBRATED, CODER_LOSSLESS_RGB_PLANES)
CODERS_FOR_CODING = {
    STORED: {CODER_RAW, CODER_ZSTD},
    LOSSLESS: {CODER_RAW, CODER_ZSTD, *LEARNED_LOSSLESS},
    LOSSY: {CODER_RAW, CODER_ZSTD, CODER_LOSSY},
    HYBRID: {CODER_RAW, CODER_ZSTD, CODER_STANDARD},
}

META_TAGS = {b"EXIF": "exif", b"ICCP": "icc_profile", b"XMP ": "xmp"}
META_KEYS = {v: k for k, v in META_TAGS.items()}
MAX_META_BYTES = 256 << 20
MIN_TILE, MAX_TILE = 16, 4096
NAME_CHARS = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")

_FIXED = struct.Struct("<8sBBIIHBB")  # magic, version, mode, width, height, tile, layers, reserved
_LAYER = struct.Struct("<BBBB")       # planes, coding, quality, name length
_TILE = struct.Struct("<BII")         # coder, length, crc
_META = struct.Struct("<4sIII")       # tag, length, raw length, crc


class NicError(OSError):
    """A `.nic` file (or a request to write one) is invalid; the message says why."""


@dataclass
class Tile:
    coder: int
    length: int
    crc: int
    offset: int = 0  # absolute file offset of the payload, set on read


@dataclass
class Layer:
    planes: int
    coding: int
    quality: int = 0
    model_name: str = ""
    model_hash: bytes = bytes(32)
    tiles: list[Tile] = field(default_factory=list)


@dataclass
class Meta:
    tag: bytes
    length: int
    raw_length: int
    crc: int
    offset: int = 0


@dataclass
class Header:
    mode: str
    width: int
    height: int
    tile_size: int
    layers: list[Layer]
    meta: list[Meta] = field(default_factory=list)
    header_length: int = 0

    @property
    def tiles_x(self) -> int:
        return -(-self.width // self.tile_size)

    @property
    def tiles_y(self) -> int:
        return -(-self.height // self.tile_size)

    def tile_box(self, index: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of tile ``index`` (row-major)."""
        ty, tx = divmod(index, self.tiles_x)
        s = self.tile_size
        return tx * s, ty * s, min((tx + 1) * s, self.width), min((ty + 1) * s, self.height)


def grow_box(box: tuple[int, int, int, int], width: int, height: int, margin: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) grown by ``margin`` on every side, clipped to a width x height image:
    the context a network sees around a tile or block."""
    x0, y0, x1, y1 = box
    return max(0, x0 - margin), max(0, y0 - margin), min(width, x1 + margin), min(height, y1 + margin)


def check_dimensions(width: int, height: int) -> None:
    """Reject sizes outside the format or beyond Pillow's decompression-bomb limit."""
    if not (1 <= width < 1 << 32 and 1 <= height < 1 << 32):
        raise NicError(f"invalid image size {width}x{height}")
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > 2 * limit:
        raise Image.DecompressionBombError(
            f"Image size ({width * height} pixels) exceeds limit of {2 * limit} pixels, "
            "could be decompression bomb DOS attack.")


def _read_exact(fp: BinaryIO, n: int, what: str) -> bytes:
    data = fp.read(n)
    if len(data) != n:
        raise NicError(f"truncated file: {what} needs {n} bytes, {len(data)} left")
    return data


def read_header(fp: BinaryIO) -> Header:
    """Parse and validate the header at the current position of ``fp`` (positioned at 0)."""
    raw = bytearray()

    def take(n: int, what: str) -> bytes:
        chunk = _read_exact(fp, n, what)
        raw.extend(chunk)
        return chunk

    magic, version, mode_id, width, height, tile_size, n_layers, reserved = _FIXED.unpack(
        take(_FIXED.size, "fixed header"))
    if magic != MAGIC:
        raise NicError("not a NIC file (bad magic bytes)")
    if version != VERSION:
        raise NicError(f"unsupported NIC format version {version} (this reader knows version {VERSION})")
    if mode_id not in MODES:
        raise NicError(f"invalid mode id {mode_id}")
    mode = MODES[mode_id]
    check_dimensions(width, height)
    if not (MIN_TILE <= tile_size <= MAX_TILE and tile_size % 16 == 0):
        raise NicError(f"invalid tile size {tile_size}")
    expected_planes = MODE_LAYERS[mode]
    if n_layers != len(expected_planes):
        raise NicError(f"mode {mode} needs {len(expected_planes)} layers, header says {n_layers}")
    if reserved != 0:
        raise NicError("reserved header byte is not zero")
    header = Header(mode, width, height, tile_size, [])
    n_tiles = header.tiles_x * header.tiles_y
    for li, planes_expected in enumerate(expected_planes):
        planes, coding, quality, name_len = _LAYER.unpack(take(_LAYER.size, f"layer {li} record"))
        if planes != planes_expected:
            raise NicError(f"layer {li}: {planes} planes, mode {mode} needs {planes_expected}")
        if coding not in CODINGS:
            raise NicError(f"layer {li}: unknown coding {coding}")
        if coding in QUALITY_CODINGS and (li > 0 or mode in ("1", "I;16")):
            raise NicError(f"layer {li}: {CODINGS[coding]} coding is not allowed for this layer of mode {mode}")
        if coding == LOSSY and tile_size % 64:
            raise NicError(f"layer {li}: lossy coding needs a tile size that is a multiple of 64, not {tile_size}")
        if (coding in QUALITY_CODINGS) != (1 <= quality <= 100) or (coding not in QUALITY_CODINGS and quality != 0):
            raise NicError(f"layer {li}: invalid quality {quality} for {CODINGS[coding]} coding")
        if name_len > 64 or (name_len == 0) != (coding == STORED):
            raise NicError(f"layer {li}: invalid model name length {name_len}")
        name = take(name_len, "model name")
        if not set(name) <= NAME_CHARS:
            raise NicError(f"layer {li}: invalid characters in model name")
        model_hash = take(32, "model hash")
        if (coding == STORED) != (model_hash == bytes(32)):
            raise NicError(f"layer {li}: model hash does not fit {CODINGS[coding]} coding")
        # each tile record is 9 bytes: refuse counts the rest of the file cannot hold
        table = take(_TILE.size * n_tiles, f"layer {li} tile table ({n_tiles} tiles)")
        tiles = []
        for t in range(n_tiles):
            coder, length, crc = _TILE.unpack_from(table, t * _TILE.size)
            if coder not in CODERS_FOR_CODING[coding]:
                raise NicError(f"layer {li} tile {t}: coder {coder} not allowed for {CODINGS[coding]} coding")
            if coder == CODER_LOSSLESS_RGB_PLANES and planes != 3:
                raise NicError(f"layer {li} tile {t}: coder 6 needs a three-plane layer, not {planes}")
            tiles.append(Tile(coder, length, crc))
        header.layers.append(Layer(planes, coding, quality, name.decode(), model_hash, tiles))
    (n_meta,) = take(1, "metadata count")
    if n_meta > len(META_TAGS):
        raise NicError(f"invalid metadata count {n_meta}")
    for _ in range(n_meta):
        tag, length, raw_length, crc = _META.unpack(take(_META.size, "metadata record"))
        if tag not in META_TAGS or any(m.tag == tag for m in header.meta):
            raise NicError(f"invalid or repeated metadata tag {tag!r}")
        if raw_length > MAX_META_BYTES:
            raise NicError(f"metadata {tag.decode().strip()} too large ({raw_length} bytes)")
        header.meta.append(Meta(tag, length, raw_length, crc))
    (stored_crc,) = struct.unpack("<I", _read_exact(fp, 4, "header checksum"))
    if zlib.crc32(raw) != stored_crc:
        raise NicError("header checksum mismatch (file is corrupt)")
    header.header_length = len(raw) + 4
    _assign_offsets(header, fp)
    return header


def _assign_offsets(header: Header, fp: BinaryIO) -> None:
    """Place every payload and check they end exactly at the end of the file."""
    offset = header.header_length
    for layer in header.layers:
        for tile in layer.tiles:
            tile.offset = offset
            offset += tile.length
    for m in header.meta:
        m.offset = offset
        offset += m.length
    here = fp.tell()
    fp.seek(0, 2)
    size = fp.tell()
    fp.seek(here)
    if offset > size:
        raise NicError(f"truncated file: payloads need {offset} bytes, file has {size}")
    if offset < size:
        raise NicError(f"{size - offset} unexpected bytes after the last payload")


def read_payload(fp: BinaryIO, item: Tile | Meta, what: str) -> bytes:
    """Read one payload and verify its CRC."""
    fp.seek(item.offset)
    data = _read_exact(fp, item.length, what)
    if zlib.crc32(data) != item.crc:
        raise NicError(f"{what} is corrupt (checksum mismatch)")
    return data


def write(fp: BinaryIO, header: Header, payloads: list[list[bytes]], meta: dict[str, bytes]) -> int:
    """Write a whole file.  ``payloads[layer][tile]`` are the coded tiles (their coders
    already set in ``header``); ``meta`` maps "exif"/"icc_profile"/"xmp" to raw bytes.
    Returns the number of bytes written."""
    import zstandard

    out = bytearray(_FIXED.pack(MAGIC, VERSION, MODE_IDS[header.mode], header.width, header.height,
                                header.tile_size, len(header.layers), 0))
    for layer, tiles in zip(header.layers, payloads):
        name = layer.model_name.encode("ascii")
        out += _LAYER.pack(layer.planes, layer.coding, layer.quality, len(name)) + name + layer.model_hash
        for tile, data in zip(layer.tiles, tiles):
            out += _TILE.pack(tile.coder, len(data), zlib.crc32(data))
    blobs = [zstandard.ZstdCompressor(level=10).compress(data) for data in meta.values()]
    out.append(len(blobs))
    for key, data, blob in zip(meta, meta.values(), blobs):
        out += _META.pack(META_KEYS[key], len(blob), len(data), zlib.crc32(blob))
    out += struct.pack("<I", zlib.crc32(out))
    written = fp.write(out) or 0
    for tiles in payloads:
        for data in tiles:
            written += fp.write(data) or 0
    for blob in blobs:
        written += fp.write(blob) or 0
    return written


def read_meta(fp: BinaryIO, header: Header) -> dict[str, bytes]:
    """Decompress and verify every metadata chunk."""
    import zstandard

    out = {}
    for m in header.meta:
        name = META_TAGS[m.tag]
        blob = read_payload(fp, m, f"{name} metadata")
        try:
            data = zstandard.ZstdDecompressor().decompress(blob, max_output_size=m.raw_length)
        except zstandard.ZstdError as exc:
            raise NicError(f"{name} metadata is corrupt: {exc}") from None
        if len(data) != m.raw_length:
            raise NicError(f"{name} metadata has {len(data)} bytes, header says {m.raw_length}")
        out[name] = data
    return out
