"""Pillow integration: Image.open / im.save with Pillow's conventions."""

from __future__ import annotations

import io
import threading
import warnings

import pytest
from PIL import Image

from pillow_nic.NicImagePlugin import _accept
from conftest import image_for_mode, synthetic


def save_bytes(im: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "NIC", **kwargs)
    return buf.getvalue()


def pil_image(mode: str, h: int = 23, w: int = 31) -> Image.Image:
    arr = image_for_mode(mode, h, w)
    if mode == "I;16":
        return Image.frombytes("I;16", (w, h), arr.astype("<u2").tobytes())
    if mode == "1":
        return Image.fromarray(arr.astype(bool))
    return Image.fromarray(arr, mode)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "RGB", "RGBA", "I;16"])
def test_lossless_round_trip_through_files(tmp_path, mode):
    im = pil_image(mode)
    path = tmp_path / "x.nic"
    im.save(path, lossless=True)
    with Image.open(path) as back:
        assert back.format == "NIC"
        assert back.mode == mode and back.size == im.size
        assert back.info["lossless"] is True
        assert back.tobytes() == im.tobytes()


def test_palette_images_are_converted():
    im = pil_image("RGB").quantize(16)
    with Image.open(io.BytesIO(save_bytes(im, lossless=True))) as back:
        assert back.mode == "RGB"
        assert back.tobytes() == im.convert("RGB").tobytes()
    im.info["transparency"] = 0
    with Image.open(io.BytesIO(save_bytes(im, lossless=True))) as back:
        assert back.mode == "RGBA"


@pytest.mark.parametrize("mode", ["CMYK", "F", "I", "YCbCr"])
def test_unsupported_modes_raise_value_error(mode):
    with pytest.raises(ValueError, match="cannot write mode"):
        save_bytes(Image.new(mode, (4, 4)), lossless=True)


@pytest.mark.parametrize("kwargs", [dict(quality=0), dict(quality=101), dict(quality="high"),
                                    dict(quality=True), dict(lossless="yes")])
def test_invalid_options(kwargs):
    with pytest.raises(ValueError):
        save_bytes(pil_image("RGB"), **kwargs)


def test_open_is_lazy_and_header_only():
    data = save_bytes(pil_image("RGB", 64, 64), lossless=True)
    im = Image.open(io.BytesIO(data))
    assert im.size == (64, 64) and im.mode == "RGB"
    assert im.getpixel((5, 5)) == tuple(image_for_mode("RGB", 64, 64)[5, 5])


def test_metadata_in_info_is_kept_by_default_and_overridable():
    im = pil_image("RGB")
    exif = Image.Exif()
    exif[0x010F] = "nic camera"
    im.info["icc_profile"] = b"fake-icc" * 10
    im.info["xmp"] = b"<x:xmpmeta>hello</x:xmpmeta>"
    data = save_bytes(im, lossless=True, exif=exif)
    with Image.open(io.BytesIO(data)) as back:
        assert back.info["icc_profile"] == b"fake-icc" * 10
        assert back.info["xmp"] == b"<x:xmpmeta>hello</x:xmpmeta>"
        assert back.getexif()[0x010F] == "nic camera"
    # explicit options win; the Exif\0\0 prefix form is accepted
    data = save_bytes(im, lossless=True, icc_profile=b"other", exif=b"Exif\x00\x00" + exif.tobytes())
    with Image.open(io.BytesIO(data)) as back:
        assert back.info["icc_profile"] == b"other"
        assert back.getexif()[0x010F] == "nic camera"


def test_xmp_as_str():
    data = save_bytes(pil_image("L"), lossless=True, xmp="<x/>")
    with Image.open(io.BytesIO(data)) as back:
        assert back.info["xmp"] == b"<x/>"


def test_accept():
    assert _accept(b"\x89NIC\r\n\x1a\n\x01")
    assert not _accept(b"\x89PNG\r\n\x1a\n")
    assert not _accept(b"")


def test_registration():
    assert Image.registered_extensions()[".nic"] == "NIC"
    assert Image.MIME["NIC"] == "image/x-nic"


def test_no_resource_warning(tmp_path):
    path = tmp_path / "x.nic"
    pil_image("RGB").save(path, lossless=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        im = Image.open(path)
        im.load()
        del im
        with Image.open(path) as im:
            im.load()


def test_caller_file_object_is_not_closed_and_reusable(tmp_path):
    path = tmp_path / "x.nic"
    pil_image("RGB").save(path, lossless=True)
    with open(path, "rb") as f:
        with Image.open(f) as im:
            im.load()
        assert not f.closed
        f.seek(0)
        with Image.open(f) as im:
            assert im.size == (31, 23)
            im.load()


def test_threads_decode_concurrently(tmp_path):
    path = tmp_path / "x.nic"
    pil_image("RGB", 80, 80).save(path, lossless=True)
    expected = image_for_mode("RGB", 80, 80).tobytes()
    errors = []

    def work():
        for _ in range(5):
            with Image.open(path) as im:
                if im.tobytes() != expected:
                    errors.append("mismatch")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_thumbnail_and_convert_work():
    data = save_bytes(Image.fromarray(synthetic(64, 96, 3)), lossless=True)
    with Image.open(io.BytesIO(data)) as im:
        im.thumbnail((32, 32))
        assert im.size == (32, 21)
        assert im.convert("L").mode == "L"
