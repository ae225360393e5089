"""JPEG restoration (`nic enhance`) with the real released model: it raises PSNR of a
low-quality JPEG, reads the quality from the file, keeps metadata, refuses non-JPEG input,
and decodes within one level under the NumPy runtime."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pillow_nic import cli, metrics, models, restore

pytestmark = pytest.mark.skipif(models.default_model("restore-jpeg") is None, reason="no restoration model released")


def jpeg(pixels: np.ndarray, quality: int, **kwargs) -> Image.Image:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality, **kwargs)
    buf.seek(0)
    return Image.open(buf)


@pytest.mark.parametrize("quality", [1, 5, 10, 37, 50, 75, 95, 100])
def test_quality_is_read_from_the_tables(photo, quality):
    assert restore.jpeg_quality(jpeg(photo[:32, :32], quality)) == quality


def test_restoration_raises_psnr_at_low_quality(photo):
    im = jpeg(photo, 10)
    plain = np.asarray(im.convert("RGB"))
    restored = np.asarray(restore.enhance_jpeg(im))
    assert restored.shape == photo.shape
    assert metrics.psnr(photo, restored) > metrics.psnr(photo, plain) + 0.3


def test_blocks_leave_no_seams(photo):
    """Restoring in blocks equals restoring the whole image at once (within one level)."""
    package = models.default_model("restore-jpeg")
    decoded = np.asarray(jpeg(photo, 10).convert("RGB"))
    whole = restore.restore(decoded, 10, package)
    original_block = restore.BLOCK
    try:
        restore.BLOCK = 128
        blocks = restore.restore(decoded, 10, package, workers=2)
    finally:
        restore.BLOCK = original_block
    assert np.abs(whole.astype(int) - blocks).max() <= 1


def test_numpy_runtime_within_one_level(photo):
    decoded = np.asarray(jpeg(photo[:128, :192], 20).convert("RGB"))
    a = restore.restore(decoded, 20, models.default_model("restore-jpeg", "onnxruntime"))
    b = restore.restore(decoded, 20, models.default_model("restore-jpeg", "numpy"))
    assert np.abs(a.astype(int) - b).max() <= 1


def test_enhance_cli_keeps_metadata_and_refuses_other_formats(photo, tmp_path, capsys):
    src = tmp_path / "in.jpg"
    exif = Image.Exif()
    exif[0x010E] = "a description"
    Image.fromarray(photo).save(src, "JPEG", quality=15, exif=exif.tobytes())
    assert cli.main(["enhance", str(src), "-o", str(tmp_path / "out.png")]) == 0
    with Image.open(tmp_path / "out.png") as out:
        assert out.size == (photo.shape[1], photo.shape[0])
        assert out.getexif()[0x010E] == "a description"
    png = tmp_path / "in.png"
    Image.fromarray(photo).save(png)
    bad = tmp_path / "fake.jpg"
    png.rename(bad)
    assert cli.main(["enhance", str(bad), "-o", str(tmp_path / "x.png")]) == 1
    assert "restores JPEG files" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
