"""Lossless mode with the real released model: bit-exact round trips everywhere,
identical bits under ONNX Runtime and the NumPy runtime, sane compression."""

from __future__ import annotations

import io

import numpy as np
import pytest

import pillow_nic
from pillow_nic import container, interlace, intnet, lossless, models
from pillow_nic.colour import rgb_to_ycocg, ycocg_to_rgb
from conftest import SAMPLE, clipped_sky, image_for_mode, kodak_files, needs_kodak

RUNTIMES = ["onnxruntime", "numpy"]
pytestmark = pytest.mark.skipif(models.default_model("lossless") is None, reason="no lossless model released")


def learned_coders(data: bytes) -> set[int]:
    header = pillow_nic.read_info(data)
    return {t.coder for layer in header.layers for t in layer.tiles}


def test_ycocg_is_reversible_on_the_whole_cube():
    v = np.arange(0, 256, 5)
    rgb = np.stack(np.meshgrid(v, v, v), axis=-1).reshape(-1, 1, 3).astype(np.uint8)
    assert np.array_equal(ycocg_to_rgb(*rgb_to_ycocg(rgb)), rgb)


SIZES = [(1, 1), (1, 9), (13, 1), (2, 3), (17, 33), (64, 64), (100, 37)]


@pytest.mark.parametrize("schedule", sorted(interlace.SCHEDULES))
def test_interlace_passes_cover_every_pixel_once(schedule):
    for h, w in SIZES:
        seen = np.zeros((h, w), int)
        levels = interlace.num_levels(h, w)
        seen[::1 << levels, ::1 << levels] += 1
        for p in interlace.passes(h, w, schedule):
            for view in interlace.target_views(seen, p):
                view += 1
        assert (seen == 1).all(), (h, w)


@pytest.mark.parametrize("schedule", sorted(interlace.SCHEDULES))
def test_contexts_see_only_coded_pixels(schedule):
    """Features of every pass are unchanged when the pixels not yet coded change."""
    rng = np.random.default_rng(schedule)
    for h, w in SIZES:
        plane = rng.integers(0, 256, (h, w)).astype(np.int32)
        known = np.zeros((h, w), bool)
        levels = interlace.num_levels(h, w)
        known[::1 << levels, ::1 << levels] = True
        for p in interlace.passes(h, w, schedule):
            scrambled = np.where(known, plane, rng.integers(0, 256, (h, w))).astype(np.int32)
            expected, base = interlace.PassContext(p).features(plane)
            got, got_base = interlace.PassContext(p).features(scrambled)
            assert expected.shape[0] == interlace.num_features(p.kind, 0)
            assert np.array_equal(expected, got) and np.array_equal(base, got_base), (h, w, p)
            for view in interlace.target_views(known, p):
                view[...] = True


@pytest.mark.skipif(not intnet.compiled_available(), reason="the compiled kernel (pillow_nic._intmlp) is not built here")
@pytest.mark.parametrize("schedule", sorted(interlace.SCHEDULES))
def test_compiled_gathering_equals_numpy(schedule):
    """The kernel's feature gathering gives the NumPy gathering's features, bases and cross
    features for every pass and plane, at odd sizes, one-pixel strips and the sample range."""
    rng = np.random.default_rng(schedule)
    for h, w in SIZES + [(1, 64), (64, 1), (5, 9), (255, 257)]:
        planes = [rng.integers(lo, 256, (h, w)).astype(np.int32) for lo in (0, -255, -255)]
        planes[1][0, 0], planes[2][-1, -1] = -255, 255
        for p in interlace.passes(h, w, schedule):
            ours, reference = interlace.PassContext(p, compiled=True), interlace.PassContext(p)
            for plane in planes:
                got, got_base = ours.features(plane)
                expected, base = reference.features(plane)
                assert np.array_equal(got, expected) and np.array_equal(got_base, base), (h, w, p)
                ours.add_coded(plane)
                reference.add_coded(plane)


@pytest.mark.skipif(not intnet.compiled_available(), reason="the compiled kernel (pillow_nic._intmlp) is not built here")
@pytest.mark.parametrize("lattice, neighbour, message", [
    ((0, 0, 2, 2, 5, 4), (0, 0, 0, 0), "leaves the plane"),
    ((0, 0, 2, 2, 4, 4), (1, 0, 0, 0), "names no lattice"),
    ((0, 0, 2, 2, 4, 4), (0, 0, 0, 3), "names no lattice or feature row"),
])
def test_compiled_gathering_refuses_indices_outside_its_buffers(lattice, neighbour, message):
    from pillow_nic import _intmlp

    plane = np.zeros((8, 8), np.int32)
    columns, base = np.zeros((2, 4), np.int16), np.zeros(4, np.int32)
    with pytest.raises(ValueError, match=message):
        _intmlp.gather(plane, 8, 8, np.array([lattice], np.int32), np.array([neighbour], np.int32),
                       np.zeros(4, np.int32), 2, 2, columns, 2, 4, 0, base)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_clipped_channel_tiles_use_coder_6_and_round_trip(photo, runtime):
    """A blown sky (R and G at 255) is coded with R, G and B as separate planes, smaller
    than through YCoCg, and decodes exactly; ordinary tiles keep coder 5."""
    sky = clipped_sky(80, 80)
    image = np.concatenate([sky, photo[:80, :80]], axis=1)
    data = pillow_nic.encode(image, "RGB", lossless=True, tile_size=80, runtime=runtime)
    coders = [t.coder for t in pillow_nic.read_info(data).layers[0].tiles]
    assert coders == [container.CODER_LOSSLESS_RGB_PLANES, container.CODER_LOSSLESS_CALIBRATED]
    assert np.array_equal(pillow_nic.decode(data, runtime=runtime).pixels, image)
    package = models.default_model("lossless", runtime)
    assert len(lossless.encode_tile(package, sky, separate=True)) < 0.7 * len(lossless.encode_tile(package, sky))


@pytest.mark.parametrize("h, w", [(1, 1), (2, 3), (17, 33), (64, 1)])
def test_separate_planes_round_trip_at_odd_sizes(h, w):
    package = models.default_model("lossless")
    tile = image_for_mode("RGB", h, w, seed=h * w)
    data = lossless.encode_tile(package, tile, separate=True)
    assert np.array_equal(lossless.decode_tile(package, data, tile.shape, 0, separate=True), tile)
    with pytest.raises(pillow_nic.NicError, match="RGB tiles only"):
        lossless.decode_tile(package, data, (h, w), 0, separate=True)


def test_clipped_channel_rule():
    tile = image_for_mode("RGB", 16, 16)
    assert not lossless.clipped_channel(tile[..., 0]) and not lossless.clipped_channel(np.full((16, 16, 3), 128))
    tile[:2, :, 1] = 255  # an eighth of the green samples
    assert lossless.clipped_channel(tile)
    tile[:2, :1, 1] = 254
    assert not lossless.clipped_channel(tile)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_photo_round_trip_is_exact_and_small(photo, runtime):
    data = pillow_nic.encode(photo, "RGB", lossless=True, runtime=runtime)
    assert container.CODER_LOSSLESS_CALIBRATED in learned_coders(data)
    assert np.array_equal(pillow_nic.decode(data, runtime=runtime).pixels, photo)
    png_bytes = SAMPLE.stat().st_size  # the bundled sample as an optimised PNG
    assert len(data) < 0.85 * png_bytes


def test_runtimes_produce_identical_bits_and_cross_decode(photo):
    crop = photo[:200, :300]
    a = pillow_nic.encode(crop, "RGB", lossless=True, runtime="onnxruntime")
    b = pillow_nic.encode(crop, "RGB", lossless=True, runtime="numpy")
    assert a == b
    assert np.array_equal(pillow_nic.decode(a, runtime="numpy").pixels, crop)
    assert np.array_equal(pillow_nic.decode(b, runtime="onnxruntime").pixels, crop)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 17), (31, 7), (65, 129)])
def test_modes_and_odd_sizes(mode, size):
    arr = image_for_mode(mode, *size, seed=sum(size))
    data = pillow_nic.encode(arr, mode, lossless=True)
    assert np.array_equal(pillow_nic.decode(data).pixels, arr)


def test_real_alpha_and_grey(photo):
    grey = photo[..., 1]
    yy, xx = np.mgrid[:photo.shape[0], :photo.shape[1]]
    alpha = np.clip((xx - 100) * 2, 0, 255).astype(np.uint8)
    rgba = np.dstack([photo, alpha])
    for arr, mode in ((grey, "L"), (rgba, "RGBA")):
        data = pillow_nic.encode(arr, mode, lossless=True)
        assert container.CODER_LOSSLESS_CALIBRATED in learned_coders(data)
        assert np.array_equal(pillow_nic.decode(data).pixels, arr)


def test_flat_and_noise_pick_the_cheaper_coder():
    flat = np.full((128, 128, 3), 200, np.uint8)
    assert len(pillow_nic.encode(flat, "RGB", lossless=True)) < 300
    noise = np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    data = pillow_nic.encode(noise, "RGB", lossless=True)
    assert len(data) <= noise.nbytes + 200
    assert np.array_equal(pillow_nic.decode(data).pixels, noise)


def test_corrupt_payload_with_valid_checksum_is_rejected(photo):
    crop = photo[:64, :64]
    package = models.default_model("lossless")
    payload = bytearray(lossless.encode_tile(package, crop))
    for pos in (0, len(payload) // 2, len(payload) - 4):
        bad = bytearray(payload)
        bad[pos] ^= 0xFF
        try:
            out = lossless.decode_tile(package, bytes(bad), crop.shape, 0)
        except pillow_nic.NicError:
            continue
        assert not np.array_equal(out, crop) or bytes(bad) == bytes(payload)
    with pytest.raises(pillow_nic.NicError):
        lossless.decode_tile(package, bytes(payload[:-4]) + b"\x01", crop.shape, 0)


@needs_kodak
def test_kodak_image_round_trip_is_exact():
    from PIL import Image

    with Image.open(kodak_files()[0]) as im:
        arr = np.asarray(im.convert("RGB"))
    data = pillow_nic.encode(arr, "RGB", lossless=True)
    assert np.array_equal(pillow_nic.decode(io.BytesIO(data)).pixels, arr)
    assert 8 * len(data) / (arr.shape[0] * arr.shape[1]) < 12.0


def test_package_schedule_and_networks_are_validated():
    package = models.default_model("lossless")
    tables = dict(package.tables)
    with pytest.raises(container.NicError, match="unknown pass schedule 9"):
        lossless._Tables(dict(tables, schedule=np.array(9)), set(package.files))
    schedule_1_networks = {f"{kind}{plane}" for kind in ("diag", "edge") for plane in range(3)}
    with pytest.raises(container.NicError, match="lacks the networks edge_h0"):
        lossless._Tables(dict(tables, schedule=np.array(2)), schedule_1_networks)


def test_calibration_search_finds_the_cheapest_calibration():
    """The encoder's grouped search agrees with costing every calibration directly."""
    package = models.default_model("lossless")
    tables = lossless._tables_for(package)
    rng = np.random.default_rng(5)
    for radius, n, row_range in ((255, 3000, (20, 40)), (510, 500, (0, 64)), (255, 1, (63, 64))):
        table = rng.integers(*row_range, n) * tables.offsets + rng.integers(0, tables.offsets, n)
        symbols = np.clip(np.round(rng.laplace(radius, 6.0, n)), 0, 2 * radius).astype(np.int64)
        direct = [tables.costs[radius][lossless._calibrated(table, i, tables), symbols].sum()
                  for i in range(len(lossless.CALIBRATED_ROWS))]
        chosen = lossless._best_calibration(table, symbols, radius, tables)
        assert np.isclose(direct[chosen], min(direct))


def test_calibration_pays_on_noise_the_network_misjudges(photo):
    """Grain the training photos lack: calibrated tiles are smaller, both coders decode."""
    package = models.default_model("lossless")
    rng = np.random.default_rng(2)
    grainy = np.clip(photo[:128, :128] + rng.normal(0, 6, (128, 128, 3)), 0, 255).astype(np.uint8)
    plain = lossless.encode_tile(package, grainy, calibrated=False)
    calibrated = lossless.encode_tile(package, grainy, calibrated=True)
    assert len(calibrated) < 0.98 * len(plain)
    for payload, flag in ((plain, False), (calibrated, True)):
        assert np.array_equal(lossless.decode_tile(package, payload, grainy.shape, 0, calibrated=flag), grainy)


@pytest.mark.skipif(not intnet.compiled_available(), reason="the compiled kernel is not built here")
def test_compiled_kernel_codes_the_same_bits_as_onnxruntime(photo, monkeypatch):
    """Where the compiled kernel runs the released networks, files are byte for byte those
    ONNX Runtime's float graphs give, and each decodes the other's."""
    pytest.importorskip("onnxruntime")
    package = models.default_model("lossless", "onnxruntime")
    assert lossless._compiled(package) is not None  # the released graphs are of the kernel's form
    compiled = pillow_nic.encode(photo, "RGB", lossless=True, runtime="onnxruntime")
    monkeypatch.setenv("NIC_KERNEL", "0")
    lossless._compiled.cache_clear()
    try:
        assert lossless._compiled(package) is None
        graphs = pillow_nic.encode(photo, "RGB", lossless=True, runtime="onnxruntime")
        assert compiled == graphs
        assert np.array_equal(pillow_nic.decode(compiled, runtime="onnxruntime").pixels, photo)
    finally:
        lossless._compiled.cache_clear()
