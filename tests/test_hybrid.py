"""The hybrid profile with the real restoration model: JPEG tiles restored on decode beat the
same JPEG decoded plainly, at nearly the same size; grey and alpha work; payloads whose base
codec file is wrong are refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import pillow_nic
from pillow_nic import container, hybrid, metrics, models

pytestmark = pytest.mark.skipif(models.default_model("restore-jpeg") is None, reason="no restoration model released")


def plain_jpeg(pixels: np.ndarray, quality: int) -> tuple[int, np.ndarray]:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality, optimize=True, subsampling="4:2:0")
    buf.seek(0)
    with Image.open(buf) as im:
        return len(buf.getvalue()), np.asarray(im)


def test_hybrid_beats_its_base_codec_at_the_same_size(photo):
    data = pillow_nic.encode(photo, "RGB", lossless=False, quality=15, profile="hybrid")
    size, plain = plain_jpeg(photo, 15)
    out = pillow_nic.decode(data).pixels
    assert len(data) <= size + 200  # the container around one JPEG per tile
    assert metrics.psnr(photo, out) > metrics.psnr(photo, plain) + 0.3


def test_header_names_the_restoration_model(photo):
    header = pillow_nic.read_info(pillow_nic.encode(photo, "RGB", lossless=False, quality=30, profile="hybrid"))
    layer = header.layers[0]
    assert layer.coding == container.HYBRID and layer.quality == 30
    assert layer.model_name == models.default_model("restore-jpeg").name
    assert {t.coder for t in layer.tiles} == {container.CODER_STANDARD}


def test_grey_and_alpha(photo):
    grey = np.asarray(Image.fromarray(photo).convert("L"))
    out = pillow_nic.decode(pillow_nic.encode(grey, "L", lossless=False, quality=20, profile="hybrid")).pixels
    assert out.shape == grey.shape and metrics.psnr(grey, out) > 25
    rgba = np.concatenate([photo, (np.arange(photo.shape[1]) % 256).astype(np.uint8)[None, :, None]
                           .repeat(photo.shape[0], 0)], axis=2)
    back = pillow_nic.decode(pillow_nic.encode(rgba, "RGBA", lossless=False, quality=20, profile="hybrid",
                                               tile_size=128)).pixels
    assert np.array_equal(back[..., 3], rgba[..., 3])


def test_pillow_save_profile(photo, tmp_path):
    Image.fromarray(photo).save(tmp_path / "h.nic", quality=25, profile="hybrid")
    with Image.open(tmp_path / "h.nic") as im:
        assert im.size == (photo.shape[1], photo.shape[0])
    with pytest.raises(ValueError, match="unknown profile"):
        Image.fromarray(photo).save(tmp_path / "x.nic", quality=25, profile="fancy")


def with_payload(data: bytes, payload: bytes) -> bytes:
    """``data`` (one tile) with its tile payload replaced, lengths and checksums recomputed."""
    header = container.read_header(io.BytesIO(data))
    out = io.BytesIO()
    container.write(out, header, [[payload]], {})
    return out.getvalue()


@pytest.mark.parametrize("payload, match", [
    (b"", "unknown base codec"),
    (b"\x09" + b"x" * 20, "unknown base codec"),
    (b"\x01" + b"not a jpeg at all", "corrupt JPEG"),
])
def test_bad_base_codec_payloads_are_refused(photo, payload, match):
    crop = np.ascontiguousarray(photo[:64, :96])
    data = pillow_nic.encode(crop, "RGB", lossless=False, quality=20, profile="hybrid")
    with pytest.raises(pillow_nic.NicError, match=match):
        pillow_nic.decode(with_payload(data, payload))


def test_base_codec_file_of_the_wrong_size_or_type_is_refused(photo):
    crop = np.ascontiguousarray(photo[:64, :96])
    data = pillow_nic.encode(crop, "RGB", lossless=False, quality=20, profile="hybrid")
    wrong_size = hybrid.encode_tile(np.ascontiguousarray(photo[:64, :80]), 20, hybrid.JPEG)
    with pytest.raises(pillow_nic.NicError, match="expected 96x64 RGB"):
        pillow_nic.decode(with_payload(data, wrong_size))
    png = io.BytesIO()
    Image.fromarray(crop).save(png, "PNG")
    with pytest.raises(pillow_nic.NicError, match="corrupt JPEG"):
        pillow_nic.decode(with_payload(data, b"\x01" + png.getvalue()))
    huge = bytearray(hybrid.encode_tile(crop, 20, hybrid.JPEG))
    sof = huge.index(b"\xff\xc0") if b"\xff\xc0" in huge else huge.index(b"\xff\xc2")
    huge[sof + 5:sof + 9] = (65000).to_bytes(2, "big") * 2  # a frame header claiming 65000x65000
    with pytest.raises(pillow_nic.NicError):
        pillow_nic.decode(with_payload(data, bytes(huge)))
    truncated = hybrid.encode_tile(crop, 20, hybrid.JPEG)[:300]
    with pytest.raises(pillow_nic.NicError):
        pillow_nic.decode(with_payload(data, truncated))


def test_cli_compress_with_the_hybrid_profile(photo, tmp_path, capsys):
    from pillow_nic import cli

    src = tmp_path / "p.png"
    Image.fromarray(photo).save(src)
    assert cli.main(["compress", str(src), "-q", "20", "--profile", "hybrid", "-o", str(tmp_path / "p.nic")]) == 0
    assert cli.main(["info", str(tmp_path / "p.nic")]) == 0
    out = capsys.readouterr().out
    assert "hybrid quality 20" in out and "standard-codec" in out


@pytest.mark.parametrize("h, w, mode", [(1, 1, "RGB"), (5, 17, "RGB"), (1, 1, "L"), (3, 2, "RGBA"), (37, 53, "RGB"),
                                        (41, 30, "L")])
def test_odd_sizes(photo, h, w, mode):
    """Tiny tiles fall back to raw samples (never bigger than stored); others are JPEG."""
    rgb = np.ascontiguousarray(photo[100:100 + h, 100:100 + w])
    pixels = {"RGB": rgb, "L": np.asarray(Image.fromarray(rgb).convert("L")),
              "RGBA": np.concatenate([rgb, np.full((h, w, 1), 200, np.uint8)], axis=2)}[mode]
    data = pillow_nic.encode(pixels, mode, lossless=False, quality=30, profile="hybrid")
    out = pillow_nic.decode(data).pixels
    assert out.shape == pixels.shape
    assert len(data) <= pixels.size + 300
    if h * w >= 1000:
        assert pillow_nic.read_info(data).layers[0].tiles[0].coder == container.CODER_STANDARD
        assert metrics.psnr(pixels, out) > 25
