"""Bad input gets a clear error: every header offset truncated, every header byte flipped,
and each field made invalid on its own (with a correct checksum, so the field check itself
is what fires).  Both the library API and Image.open are checked."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import zstandard
from PIL import Image

import pillow_nic
from pillow_nic import NicError, container, models
from conftest import image_for_mode

META = {"exif": b"II*\x00exif-data", "xmp": b"<xmp/>"}


@pytest.fixture(scope="module")
def good() -> bytes:
    """A stored-coding RGBA file (no model), so field offsets are known."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "default_model", lambda kind, runtime=None: None)
        return pillow_nic.encode(image_for_mode("RGBA", 40, 37), "RGBA", lossless=True, tile_size=16,
                                 metadata=META)


def header_length(data: bytes) -> int:
    return container.read_header(io.BytesIO(data)).header_length


def with_crc(data: bytes, hl: int | None = None) -> bytes:
    """Recompute the header checksum after a deliberate edit (``hl``: header length)."""
    hl = hl or header_length_unchecked(data)
    body = data[:hl - 4]
    return body + struct.pack("<I", zlib.crc32(body)) + data[hl:]


def header_length_unchecked(data: bytes) -> int:
    """Walk the header fields without validating them (to place the checksum)."""
    n_layers = data[20]
    w, h, ts = struct.unpack_from("<IIH", data, 10)
    tiles = (-(-w // ts)) * (-(-h // ts)) if ts else 0
    pos = 22
    for _ in range(n_layers):
        pos += 4 + data[pos + 3] + 32 + 9 * tiles
    pos += 1 + 16 * data[pos]
    return pos + 4


def patch(data: bytes, offset: int, fmt: str, value) -> bytes:
    hl = header_length_unchecked(data)
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, *(value if isinstance(value, tuple) else (value,)))
    return with_crc(bytes(b), hl)


def assert_rejected(data: bytes, match: str | None = None):
    with pytest.raises((NicError, Image.DecompressionBombError)) as info:
        pillow_nic.decode(data)
    if match:
        assert match in str(info.value)
    with pytest.raises((OSError, Image.DecompressionBombError)):
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    return info.value


def test_good_file_decodes(good):
    assert pillow_nic.decode(good).mode == "RGBA"


def test_truncated_at_every_header_offset(good):
    hl = header_length(good)
    for cut in range(hl):
        with pytest.raises(NicError, match="truncated|bad magic"):
            pillow_nic.read_info(good[:cut])


def test_truncated_in_payload(good):
    hl = header_length(good)
    for cut in range(hl, len(good), 7):
        assert_rejected(good[:cut], "truncated")


def test_every_flipped_header_byte_is_caught(good):
    hl = header_length(good)
    for i in range(hl):
        b = bytearray(good)
        b[i] ^= 0x40
        with pytest.raises((NicError, Image.DecompressionBombError)):
            pillow_nic.decode(bytes(b))


def test_flipped_payload_byte(good):
    hl = header_length(good)
    for i in range(hl, len(good), 11):
        b = bytearray(good)
        b[i] ^= 0x01
        assert_rejected(bytes(b), "checksum")


@pytest.mark.parametrize("offset, fmt, value, match", [
    (8, "<B", 2, "unsupported NIC format version 2"),
    (8, "<B", 0, "version 0"),
    (9, "<B", 9, "invalid mode id"),
    (10, "<I", 0, "invalid image size"),
    (14, "<I", 0, "invalid image size"),
    (18, "<H", 8, "invalid tile size"),
    (18, "<H", 24, "invalid tile size"),
    (20, "<B", 1, "layers"),
    (21, "<B", 1, "reserved"),
    (22, "<B", 1, "planes"),
    (23, "<B", 7, "unknown coding"),
    (24, "<B", 5, "quality"),
])
def test_invalid_fields(good, offset, fmt, value, match):
    assert_rejected(patch(good, offset, fmt, value), match)


def test_huge_dimensions_are_a_decompression_bomb(good):
    data = patch(good, 10, "<II", (0xFFFF_FFFF, 0xFFFF_FFFF))
    with pytest.raises(Image.DecompressionBombError):
        pillow_nic.read_info(data)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))


def test_dimensions_over_max_image_pixels(monkeypatch):
    data = pillow_nic.encode(image_for_mode("L", 64, 64), "L", lossless=True)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(Image.DecompressionBombError):
        pillow_nic.decode(data)


def test_bad_magic_is_not_identified(good):
    data = b"\x89NIX" + good[4:]
    with pytest.raises(NicError, match="not a NIC file"):
        pillow_nic.decode(data)
    with pytest.raises(Image.UnidentifiedImageError):
        Image.open(io.BytesIO(data))


def test_empty_and_tiny_files():
    for data in (b"", b"\x89", container.MAGIC, container.MAGIC + b"\x01"):
        with pytest.raises(NicError, match="truncated|bad magic"):
            pillow_nic.decode(data)


def test_bad_header_checksum(good):
    hl = header_length(good)
    b = bytearray(good)
    b[hl - 1] ^= 0xFF
    assert_rejected(bytes(b), "header checksum mismatch")


def test_trailing_bytes(good):
    assert_rejected(good + b"\x00", "unexpected bytes")


def stored_tile_record_offset(good: bytes) -> int:
    """Offset of layer 0's first tile record (stored coding, no model name)."""
    assert good[25] == 0  # model name length
    return 22 + 4 + 32


def test_tile_coder_not_allowed_for_coding(good):
    assert_rejected(patch(good, stored_tile_record_offset(good), "<B", 2), "not allowed")


def test_rgb_planes_coder_needs_three_planes():
    data = pillow_nic.encode(image_for_mode("L", 40, 37), "L", lossless=True)
    assert data[23] == container.LOSSLESS
    first_tile = 22 + 4 + data[25] + 32
    assert data[first_tile] == container.CODER_LOSSLESS_CALIBRATED
    assert_rejected(patch(data, first_tile, "<B", container.CODER_LOSSLESS_RGB_PLANES), "three-plane")


def test_unknown_model_hash_is_named(good):
    # turn layer 0 into a lossless layer naming a model nobody has
    b = bytearray(good)
    rec = 22
    name = b"nic-lossless-unknown"
    b[rec + 1] = container.LOSSLESS
    b[rec + 3] = len(name)
    b[rec + 4:rec + 4 + 32] = b"\x11" * 32
    b[rec + 4:rec + 4] = name
    err = assert_rejected(with_crc(bytes(b)), "unknown model")
    assert "nic-lossless-unknown" in str(err)


def test_model_name_characters(good):
    b = bytearray(good)
    b[22 + 1] = container.LOSSLESS
    b[22 + 3] = 3
    b[22 + 4:22 + 4] = b"a/b"
    b[22 + 7:22 + 7 + 32] = b"\x22" * 32
    assert_rejected(with_crc(bytes(b)), "invalid characters")


def test_stored_layer_with_model_hash(good):
    b = bytearray(good)
    b[22 + 4] = 1
    assert_rejected(with_crc(bytes(b)), "model hash")


def meta_record_offset(good: bytes) -> int:
    return header_length(good) - 4 - 16 * len(META)


def test_bad_metadata_tag(good):
    b = bytearray(good)
    b[meta_record_offset(good):meta_record_offset(good) + 4] = b"JUNK"
    assert_rejected(with_crc(bytes(b)), "metadata tag")


def test_repeated_metadata_tag(good):
    b = bytearray(good)
    off = meta_record_offset(good)
    b[off + 16:off + 20] = b[off:off + 4]
    assert_rejected(with_crc(bytes(b)), "repeated")


def test_metadata_count_too_large(good):
    assert_rejected(patch(good, meta_record_offset(good) - 1, "<B", 9), "metadata count")


def test_metadata_too_large(good):
    assert_rejected(patch(good, meta_record_offset(good) + 8, "<I", 1 << 30), "too large")


def test_metadata_length_mismatch(good):
    assert_rejected(patch(good, meta_record_offset(good) + 8, "<I", 3), "metadata")


def rebuild(header_edit, tile_payload: bytes, coder: int) -> bytes:
    """A one-tile L file whose single tile is the given payload, checksums correct."""
    header = container.Header("L", 4, 4, 16, [container.Layer(1, container.STORED, tiles=[
        container.Tile(coder, len(tile_payload), 0)])])
    header_edit(header)
    out = io.BytesIO()
    container.write(out, header, [[tile_payload]], {})
    return out.getvalue()


def test_corrupt_zstd_tile_with_valid_crc():
    assert_rejected(rebuild(lambda h: None, b"not zstd at all", container.CODER_ZSTD), "zstd")


def test_zstd_tile_with_wrong_sample_count():
    blob = zstandard.ZstdCompressor().compress(bytes(15))
    assert_rejected(rebuild(lambda h: None, blob, container.CODER_ZSTD), "sample bytes")


def test_raw_tile_with_wrong_sample_count():
    assert_rejected(rebuild(lambda h: None, bytes(17), container.CODER_RAW), "sample bytes")


def test_rebuilt_valid_file_decodes():
    data = rebuild(lambda h: None, bytes(range(16)), container.CODER_RAW)
    assert np.array_equal(pillow_nic.decode(data).pixels, np.arange(16).reshape(4, 4))
