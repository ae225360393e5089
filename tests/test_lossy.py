"""Lossy mode with the real released model: rate follows quality, both runtimes decode
the same latents, reconstructions agree within one level, alpha stays lossless."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import pillow_nic
from pillow_nic import container, lossy, metrics, models
from conftest import image_for_mode

pytestmark = pytest.mark.skipif(models.default_model("lossy") is None, reason="no lossy model released")


@pytest.fixture(scope="module")
def crop(photo) -> np.ndarray:
    return photo[:192, :256]


def test_rate_and_quality_increase_with_quality(crop):
    sizes, psnrs = [], []
    for q in (5, 30, 60, 95):
        data = pillow_nic.encode(crop, "RGB", lossless=False, quality=q)
        sizes.append(len(data))
        psnrs.append(metrics.psnr(crop, pillow_nic.decode(data).pixels))
    assert sizes == sorted(sizes) and len(set(sizes)) == 4
    assert psnrs == sorted(psnrs)
    assert psnrs[-1] > 24


def test_header_records_lossy_layer(crop):
    data = pillow_nic.encode(crop, "RGB", lossless=False, quality=42)
    layer = pillow_nic.read_info(data).layers[0]
    assert layer.coding == container.LOSSY and layer.quality == 42
    assert {t.coder for t in layer.tiles} == {container.CODER_LOSSY}
    assert layer.model_name.startswith("nic-lossy")


def test_numpy_runtime_decodes_within_one_level(crop):
    data = pillow_nic.encode(crop, "RGB", lossless=False, quality=50)
    a = pillow_nic.decode(data, runtime="onnxruntime").pixels.astype(int)
    b = pillow_nic.decode(data, runtime="numpy").pixels.astype(int)
    assert np.abs(a - b).max() <= 1


def test_numpy_encoded_file_decodes_with_onnxruntime(crop):
    data = pillow_nic.encode(crop, "RGB", lossless=False, quality=50, runtime="numpy")
    out = pillow_nic.decode(data, runtime="onnxruntime").pixels
    assert metrics.psnr(crop, out) > 20


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (63, 65), (130, 70)])
def test_odd_sizes(size):
    arr = image_for_mode("RGB", *size)
    out = pillow_nic.decode(pillow_nic.encode(arr, "RGB", lossless=False, quality=80)).pixels
    assert out.shape == arr.shape


def test_rgba_alpha_is_exact_and_grey_stays_grey(crop):
    alpha = np.tile(np.arange(crop.shape[1], dtype=np.uint8), (crop.shape[0], 1))
    rgba = np.dstack([crop, alpha])
    out = pillow_nic.decode(pillow_nic.encode(rgba, "RGBA", lossless=False, quality=70)).pixels
    assert np.array_equal(out[..., 3], alpha)
    grey = crop[..., 1]
    out = pillow_nic.decode(pillow_nic.encode(grey, "L", lossless=False, quality=70))
    assert out.mode == "L" and out.pixels.shape == grey.shape
    assert metrics.psnr(grey, out.pixels) > 20


def test_pillow_save_quality(crop):
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, "NIC", quality=60)
    buf.seek(0)
    with Image.open(buf) as im:
        assert im.info["lossless"] is False
        assert metrics.psnr(crop, np.asarray(im)) > 20


def test_corrupt_lossy_payload_with_valid_checksum(crop):
    """Payloads that cannot be whole are refused.  (Words appended to or taken from a
    valid stream are caught only by chance: the rANS stream has no end marker, so whether
    its garbage ends with words left over depends on the model and image; the container's
    checksums are what catch damage.)"""
    package = models.default_model("lossy")
    tile = lossy._analyse(package, crop, (0, 0, crop.shape[1], crop.shape[0]), lossy._lossy_for(package).gains(50)[0])
    payload = lossy.encode_tile(package, tile, 50)
    shape = crop.shape[:2]
    assert lossy.decode_latents(package, payload, shape, 50, 0).shape[2:] == tile.y.shape[2:]
    with pytest.raises(pillow_nic.NicError):
        lossy.decode_latents(package, payload[:6], shape, 50, 0)
    with pytest.raises(pillow_nic.NicError):
        lossy.decode_latents(package, payload, (shape[0] + 64, shape[1]), 50, 0)
    for damaged in (payload + b"\x01", payload + bytes(4)):  # a partial word; a final zero word
        with pytest.raises(pillow_nic.NicError):
            lossy.decode_latents(package, damaged, shape, 50, 0)


def test_tile_size_must_be_a_multiple_of_64(crop):
    with pytest.raises(ValueError, match="multiple of 64"):
        pillow_nic.encode(crop, "RGB", lossless=False, quality=50, tile_size=96)


def test_no_seams_at_tile_borders(photo):
    """Error along tile borders is no larger than elsewhere (tiles of 128 on a 381x512 photo)."""
    data = pillow_nic.encode(photo, "RGB", lossless=False, quality=60, tile_size=128)
    out = pillow_nic.decode(data).pixels.astype(np.float64)
    err = ((out - photo) ** 2).mean(axis=2)
    # squared error of the pixel pairs straddling a border vs all other horizontally adjacent pairs
    jump = np.abs(np.diff(out - photo, axis=1)).mean(axis=2)
    border_cols = [c - 1 for c in range(128, photo.shape[1], 128)]
    border = jump[:, border_cols].mean()
    inner = np.delete(jump, border_cols, axis=1).mean()
    assert border <= 1.25 * inner, (border, inner)
    border_rows = [r - 1 for r in range(128, photo.shape[0], 128)]
    assert err[border_rows + [r + 1 for r in border_rows]].mean() <= 1.25 * err.mean()


def test_target_size_is_met_with_the_highest_fitting_quality(crop):
    sizes = {q: len(pillow_nic.encode(crop, "RGB", lossless=False, quality=q)) for q in (40, 41)}
    target = sizes[40] + (sizes[41] - sizes[40]) // 2 if sizes[41] > sizes[40] else sizes[40]
    data = pillow_nic.encode(crop, "RGB", lossless=False, target_size=target)
    assert len(data) <= target
    assert pillow_nic.read_info(data).layers[0].quality >= 40
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, "NIC", target_size=target)
    assert len(buf.getvalue()) <= target
    with pytest.raises(ValueError):
        pillow_nic.encode(crop, "RGB", lossless=True, target_size=1000)


def test_tune_selects_the_model_trained_for_it(crop):
    with pytest.raises(ValueError, match="unknown tune"):
        Image.fromarray(crop).save(io.BytesIO(), "NIC", quality=50, tune="butteraugli")
    with pytest.raises(ValueError, match="learned profile only"):
        pillow_nic.encode(crop, "RGB", lossless=False, quality=50, profile="hybrid", tune="ssim")
    ssim_model = models.default_model("lossy-ssim")
    if ssim_model is None:
        pytest.skip("no lossy-ssim model released")
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, "NIC", quality=50, tune="ssim")
    layer = pillow_nic.read_info(buf.getvalue()).layers[0]
    assert layer.model_hash == ssim_model.hash
    psnr_layer = pillow_nic.read_info(pillow_nic.encode(crop, "RGB", lossless=False, quality=50)).layers[0]
    assert psnr_layer.model_hash == models.default_model("lossy").hash
    with Image.open(buf) as im:
        out = np.asarray(im.convert("RGB"))
    assert metrics.ms_ssim(crop, out) > 0.9


@pytest.mark.parametrize("rows,cols", [(1, 1), (7, 9), (8, 48), (32, 48), (33, 49), (100, 250)])
def test_synthesis_blocks_cover_the_canvas_once(rows, cols):
    cover = np.zeros((rows, cols), int)
    blocks = lossy.synthesis_blocks(rows, cols)
    for r0, r1, c0, c1 in blocks:
        assert r1 - r0 <= lossy.BLOCK_ROWS and c1 - c0 <= lossy.BLOCK_COLS
        cover[r0:r1, c0:c1] += 1
    assert (cover == 1).all()
    if 8 <= rows <= lossy.BLOCK_ROWS and cols <= lossy.BLOCK_COLS:
        assert len(blocks) == 2  # one block would leave a core idle


def test_blockwise_synthesis_equals_whole_canvas(photo):
    """Blocks grown by HALO latents give the pixels of one synthesis of the whole canvas
    (FORMAT.md, coder 3), so block borders cannot show."""
    package = models.default_model("lossy")
    data = pillow_nic.encode(photo, "RGB", lossless=False, quality=60, tile_size=128)
    blocks = pillow_nic.decode(data).pixels
    fp = io.BytesIO(data)
    header = container.read_header(fp)
    container.read_meta(fp, header)
    _, inv_gain = lossy._lossy_for(package).gains(60)
    canvas = np.zeros((1, len(inv_gain), -(-photo.shape[0] // 64) * 4, -(-photo.shape[1] // 64) * 4), np.float32)
    for ti, tile in enumerate(header.layers[0].tiles):
        x0, y0, x1, y1 = header.tile_box(ti)
        payload = container.read_payload(fp, tile, f"tile {ti}")
        lat = lossy.decode_latents(package, payload, (y1 - y0, x1 - x0), 60, ti)
        canvas[:, :, y0 // 16:y0 // 16 + lat.shape[2], x0 // 16:x0 // 16 + lat.shape[3]] = lat
    (image,) = package.graph("decoder").run(["image"], {"latents": canvas, "inv_gain": inv_gain[None, :, None, None]})
    whole = np.clip(np.round(image[0].transpose(1, 2, 0) * 255), 0, 255)[:photo.shape[0], :photo.shape[1]]
    assert len(lossy.synthesis_blocks(canvas.shape[2], canvas.shape[3])) > 1
    assert np.abs(whole - blocks.astype(np.float64)).max() <= 1


def test_layer_naming_a_package_of_another_kind_is_refused(crop):
    """A lossy layer that names the lossless package (valid hash, wrong kind) is refused
    cleanly, not with a missing-graph crash."""
    data = pillow_nic.encode(crop, "RGB", lossless=False, quality=50)
    fp = io.BytesIO(data)
    header = container.read_header(fp)
    payloads = [[container.read_payload(fp, t, "tile") for t in header.layers[0].tiles]]
    other = models.default_model("lossless")
    layer = header.layers[0]
    header.layers[0] = container.Layer(layer.planes, layer.coding, layer.quality, other.name, other.hash, layer.tiles)
    out = io.BytesIO()
    container.write(out, header, payloads, {})
    with pytest.raises(pillow_nic.NicError, match="cannot decode this layer"):
        pillow_nic.decode(out.getvalue())


class _WithTables:
    """A released lossy package seen with some of its tables changed or left out."""

    def __init__(self, package, without: tuple[str, ...] = (), **tables):
        self.package = package
        self.runtime = package.runtime
        self.files = package.files
        self.tables = {k: v for k, v in dict(package.tables, **tables).items() if k not in without}

    def graph(self, role: str, keep_buffers: bool = False):
        return self.package.graph(role, keep_buffers)


def _analysed_tile(package, crop: np.ndarray, quality: int):
    """The encoder's analysis of the crop's top-left 192x128 as one tile at ``quality``, and
    its latents' means (1/8 units) and table rows."""
    gain = lossy._lossy_for(package).gains(quality)[0]
    tile = lossy._analyse(package, crop[:128, :192], (0, 0, 192, 128), gain)
    mean8, rows = lossy._hyper(package, np.clip(np.round(tile.z), -127, 127).astype(np.int64))
    return tile, mean8, rows


def test_latents_in_uncoded_rows_are_zero_and_cost_nothing(crop):
    """With ``uncoded_rows`` the latents predicted in the lowest table rows are not coded:
    they decode as their mean exactly, every other latent decodes as before, and the
    payload is no larger."""
    package = _WithTables(models.default_model("lossy"), without=REFINE_HINTS, uncoded_rows=np.int32(0))
    tile, mean8, rows = _analysed_tile(package, crop, 100)
    skipping = _WithTables(package, uncoded_rows=np.int32(5))
    coded = [lossy.encode_tile(p, tile, 100) for p in (package, skipping)]
    full, skipped = (lossy.decode_latents(p, d, (128, 192), 100, 0)[0].astype(np.float32)
                     for p, d in zip((package, skipping), coded))
    uncoded = rows < 5
    assert 0.01 < uncoded.mean() < 0.99  # the test covers both kinds of latents
    np.testing.assert_array_equal(skipped[uncoded], mean8[uncoded] / 8)
    np.testing.assert_array_equal(skipped[~uncoded], full[~uncoded])
    assert len(coded[1]) <= len(coded[0])


@pytest.mark.parametrize("value", [-1, 65])
def test_uncoded_rows_outside_the_table_family_are_refused(value):
    package = _WithTables(models.default_model("lossy"), uncoded_rows=np.int32(value))
    with pytest.raises(pillow_nic.NicError, match="uncoded table rows"):
        lossy._Lossy(package)


HINTS = ("rdoq_lambda", "synthesis_energy")
REFINE_HINTS = ("refine_lambda", "synthesis_energy", "synthesis_coupling")


def _released(name: str):
    entry = next(e for e in models.registered() if e["name"] == name)
    return models.package_by_hash(entry["hash"], "onnxruntime")


def test_optimised_rounding_moves_symbols_one_step_toward_zero_and_saves_bits(crop):
    """With a package's rounding hints (FORMAT.md, encoder hints; nic-lossy-9) some nonzero
    symbols move one step toward zero, no other symbol changes, each move lowers the tile's
    bits + weighted squared error, and the payload shrinks; it still decodes."""
    package = _released("nic-lossy-9")
    hinted = lossy._lossy_for(package)
    assert hinted.optimised_rounding and not hinted.refines
    quality = 60
    tile, mean8, rows = _analysed_tile(package, crop, quality)
    residual = tile.y[0] - mean8 / 8
    nearest = np.clip(np.round(residual), -127, 127).astype(np.int64)
    chosen = lossy.rounded_symbols(hinted, residual, rows, quality)
    moved = chosen != nearest
    assert 0 < moved.sum() < (nearest != 0).sum()
    np.testing.assert_array_equal(chosen[moved], nearest[moved] - np.sign(nearest[moved]))

    def cost(symbols):
        per_latent = hinted.bits[rows, symbols + 127] + \
            hinted.error_weights(quality)[:, None, None] * (symbols - residual) ** 2
        return per_latent[moved].sum()

    assert cost(chosen) < cost(nearest)
    plain = _WithTables(package, without=HINTS)
    payloads = [lossy.encode_tile(p, tile, quality) for p in (package, plain)]
    assert len(payloads[0]) < len(payloads[1])
    decoded = lossy.decode_latents(package, payloads[0], (128, 192), quality, 0)[0].astype(np.float32)
    coded = rows >= hinted.uncoded_rows
    np.testing.assert_array_equal(decoded[coded], (chosen + mean8 / 8)[coded])


@pytest.mark.parametrize("change", [dict(rdoq_lambda=np.ones(3, np.float32)),
                                    dict(synthesis_energy=np.zeros((6, 192), np.float32))])
def test_malformed_rounding_hints_are_refused(change):
    package = _WithTables(_released("nic-lossy-9"), **change)
    with pytest.raises(pillow_nic.NicError, match="rounding hints"):
        lossy._Lossy(package)


def _squared_error(package, latents: np.ndarray, inv_gain: np.ndarray, image: np.ndarray) -> float:
    (x_hat,) = package.graph("decoder").run(["image"], {"latents": latents.astype(np.float32),
                                                         "inv_gain": inv_gain[None, :, None, None]})
    return float(((x_hat.astype(np.float64) - image) ** 2).sum())


def test_refine_graph_is_the_gradient_of_the_decoders_squared_error(crop):
    """The package's refine graph (FORMAT.md, encoder hints) matches central differences of
    the decoder graph's squared error on real latents."""
    package = models.default_model("lossy")
    hinted = lossy._lossy_for(package)
    assert hinted.refines, "the default lossy package carries refinement hints"
    quality = 60
    gain, inv_gain = hinted.gains(quality)
    tile = lossy._analyse(package, crop[:64, :64], (0, 0, 64, 64), gain)
    latents = np.round(tile.window_y)
    (grad,) = package.graph("refine").run(["gradient"], {
        "latents": latents, "inv_gain": inv_gain[None, :, None, None], "image": tile.window,
        "weight": np.ones_like(tile.real)})
    rng = np.random.default_rng(3)
    strongest = np.argsort(np.abs(grad).ravel())[::-1][:20]
    for flat in rng.choice(strongest, 6, replace=False):
        step = np.zeros(latents.size, np.float32)
        step[flat] = 0.05
        step = step.reshape(latents.shape)
        numeric = (_squared_error(package, latents + step, inv_gain, tile.window)
                   - _squared_error(package, latents - step, inv_gain, tile.window)) / 0.1
        assert numeric == pytest.approx(grad.ravel()[flat], rel=0.05)


def test_refinement_moves_coded_symbols_and_lowers_rate_plus_error(crop):
    """The refinement moves some coded symbols, each by at most one step per visit, leaves
    the uncoded ones 0; measured by real decoding, bits + λ·255²/3·squared error falls
    against the same package without refinement hints, and the payload decodes to the
    refined symbols."""
    package = models.default_model("lossy")
    hinted = lossy._lossy_for(package)
    plain = _WithTables(package, without=REFINE_HINTS)
    quality = 60
    _, inv_gain = hinted.gains(quality)
    tile, mean8, rows = _analysed_tile(package, crop, quality)
    mean = mean8.astype(np.float32) / 8
    nearest = lossy.rounded_symbols(lossy._lossy_for(plain), tile.y[0] - mean, rows, quality)
    refined = lossy.refined_symbols(package, hinted, tile, nearest, mean, rows, quality)
    coded = rows >= hinted.uncoded_rows
    moved = (refined != nearest) & coded
    assert moved.sum() > 10 and not refined[~coded].any()
    assert np.abs(refined - nearest).max() <= lossy.REFINE_SWEEPS // 4
    image = tile.window[..., :128, :192]
    weight = hinted.between_levels(hinted.log_refine_lambda, quality) * 255 ** 2 / 3

    def cost(payload: bytes) -> float:
        latents = lossy.decode_latents(package, payload, (128, 192), quality, 0).astype(np.float32)
        return 8 * len(payload) + weight * _squared_error(package, latents, inv_gain, image)

    payloads = [lossy.encode_tile(p, tile, quality) for p in (package, plain)]
    assert cost(payloads[0]) < cost(payloads[1])
    decoded = lossy.decode_latents(package, payloads[0], (128, 192), quality, 0)[0].astype(np.float32)
    np.testing.assert_array_equal(decoded[coded], (refined + mean)[coded])


@pytest.mark.parametrize("change", [dict(refine_lambda=np.ones(3, np.float32)),
                                    dict(synthesis_coupling=np.full((192, 192, 3, 3), np.nan, np.float32)),
                                    dict(synthesis_energy=-np.ones((6, 192), np.float32))])
def test_malformed_refinement_hints_are_refused(change):
    package = _WithTables(models.default_model("lossy"), **change)
    with pytest.raises(pillow_nic.NicError, match="refinement hints"):
        lossy._Lossy(package)


def test_encoder_keeps_onnxruntime_buffers_only_for_images_up_to_the_limit():
    """Held buffers speed encoding up but cost memory that must stay bounded on very large
    images (issue 7: 48 MP within 512 MB): above lossy.KEPT_IMAGE pixels the encoder's
    graphs give their buffers back."""
    package = models.default_model("lossy")
    gain = lossy._lossy_for(package).gains(50)[0]
    side = int(np.sqrt(lossy.KEPT_IMAGE)) + 1
    large = np.zeros((side, side, 3), np.uint8)
    assert not lossy._analyse(package, large, (0, 0, 64, 64), gain).keep_buffers
    assert lossy._analyse(package, large[:512, :512], (0, 0, 64, 64), gain).keep_buffers
