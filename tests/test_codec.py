"""The library API on its own (no Pillow plugin): round trips in every mode and size."""

from __future__ import annotations

import numpy as np
import pytest

import pillow_nic
from pillow_nic import container
from conftest import image_for_mode

MODES = ["1", "L", "LA", "RGB", "RGBA", "I;16"]
SIZES = [(1, 1), (1, 7), (7, 1), (2, 3), (17, 31), (97, 101), (300, 17)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", SIZES)
def test_lossless_round_trip(mode, size):
    arr = image_for_mode(mode, *size, seed=size[0] * 7 + size[1])
    data = pillow_nic.encode(arr, mode, lossless=True)
    out = pillow_nic.decode(data)
    assert out.mode == mode
    assert out.pixels.shape == arr.shape
    assert np.array_equal(out.pixels, arr)


@pytest.mark.parametrize("tile", [16, 32, 48])
def test_tiles_cover_image_exactly(tile):
    arr = image_for_mode("RGB", 70, 53)
    data = pillow_nic.encode(arr, "RGB", lossless=True, tile_size=tile)
    header = pillow_nic.read_info(data)
    assert header.tile_size == tile
    assert len(header.layers[0].tiles) == (-(-70 // tile)) * (-(-53 // tile))
    assert np.array_equal(pillow_nic.decode(data).pixels, arr)


def test_alpha_is_its_own_lossless_layer():
    arr = image_for_mode("RGBA", 40, 40)
    header = pillow_nic.read_info(pillow_nic.encode(arr, "RGBA", lossless=True))
    assert [layer.planes for layer in header.layers] == [3, 1]
    assert all(layer.coding != container.LOSSY for layer in header.layers)


def test_noise_never_grows_beyond_stored_size():
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    data = pillow_nic.encode(arr, "RGB", lossless=True)
    assert len(data) <= arr.nbytes + 200
    assert np.array_equal(pillow_nic.decode(data).pixels, arr)


def test_flat_image_is_tiny():
    arr = np.full((512, 512, 3), 77, np.uint8)
    data = pillow_nic.encode(arr, "RGB", lossless=True)
    assert len(data) < 400
    assert np.array_equal(pillow_nic.decode(data).pixels, arr)


def test_metadata_round_trip():
    meta = {"exif": b"II*\x00" + bytes(range(50)), "icc_profile": b"icc" * 100, "xmp": b"<x:xmpmeta/>"}
    data = pillow_nic.encode(image_for_mode("RGB", 9, 9), "RGB", lossless=True, metadata=meta)
    assert pillow_nic.decode(data).metadata == meta


@pytest.mark.parametrize("kwargs, message", [
    (dict(lossless=False, quality=0), "quality"),
    (dict(lossless=False, quality=101), "quality"),
    (dict(lossless=False, quality=50.5), "quality"),
    (dict(tile_size=8), "tile_size"),
    (dict(tile_size=100), "tile_size"),
    (dict(metadata={"comment": b"x"}), "metadata"),
    (dict(metadata={"exif": "text"}), "bytes"),
])
def test_invalid_options_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pillow_nic.encode(image_for_mode("RGB", 8, 8), "RGB", **kwargs)


@pytest.mark.parametrize("arr, mode", [
    (np.zeros((4, 4, 3), np.uint8), "CMYK"),
    (np.zeros((4, 4), np.uint8), "RGB"),
    (np.zeros((4, 4, 3), np.float32), "RGB"),
    (np.full((4, 4), 300, np.int32), "L"),
])
def test_bad_arrays_raise_value_error(arr, mode):
    with pytest.raises(ValueError):
        pillow_nic.encode(arr, mode, lossless=True)


def test_small_integer_arrays_are_accepted():
    arr = np.arange(16, dtype=np.int64).reshape(4, 4)
    assert np.array_equal(pillow_nic.decode(pillow_nic.encode(arr, "L", lossless=True)).pixels, arr)


def test_file_paths_and_objects(tmp_path):
    arr = image_for_mode("L", 20, 30)
    path = tmp_path / "a.nic"
    path.write_bytes(pillow_nic.encode(arr, "L", lossless=True))
    assert np.array_equal(pillow_nic.decode(path).pixels, arr)
    with open(path, "rb") as f:
        assert np.array_equal(pillow_nic.decode(f).pixels, arr)
        assert not f.closed
