"""The photo store's core, without FUSE: what is compressed, what is served, crash safety."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from fuse_mount import serve
from pillow_nic import models
from fuse_mount.store import NIC_SUFFIX, TEMP_PREFIX, PhotoStore


def png_bytes(arr: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", **kwargs)
    return buf.getvalue()


def write(store: PhotoStore, path: str, data: bytes) -> None:
    fh = store.create(path, 0o644)
    store.write(path, data, 0, fh)
    store.release(path, fh)


def read_all(store: PhotoStore, path: str) -> bytes:
    fh = store.open(path, os.O_RDONLY)
    try:
        return store.read(path, 1 << 30, 0, fh)
    finally:
        store.release(path, fh)


@pytest.fixture
def store(tmp_path):
    return PhotoStore(tmp_path)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "1", "I;16"])
def test_served_png_is_pixel_identical_and_size_is_exact(store, tmp_path, photo, mode):
    arr = photo[:90, :120]
    im = Image.fromarray(arr).convert(mode) if mode != "I;16" else \
        Image.fromarray((arr[..., 0].astype(np.uint16) * 257))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    write(store, "/a.png", buf.getvalue())
    assert (tmp_path / ("a.png" + NIC_SUFFIX)).exists() or (tmp_path / "a.png").exists()
    data = read_all(store, "/a.png")
    assert store.getattr("/a.png")["st_size"] == len(data)
    with Image.open(io.BytesIO(data)) as back:
        assert back.mode == im.mode
        assert back.tobytes() == im.tobytes()


def test_photo_is_stored_compressed(store, tmp_path, photo):
    data = png_bytes(photo)
    write(store, "/p.png", data)
    assert not (tmp_path / "p.png").exists()
    assert (tmp_path / "p.png.nic").stat().st_size < len(data)
    assert store.listdir("/") == ["p.png"]


def test_metadata_is_kept(store, photo):
    im = Image.fromarray(photo[:64, :64])
    exif = Image.Exif()
    exif[0x010F] = "maker"
    buf = io.BytesIO()
    im.save(buf, "PNG", icc_profile=b"icc-profile-bytes" * 20, exif=exif)
    write(store, "/m.png", buf.getvalue())
    with Image.open(io.BytesIO(read_all(store, "/m.png"))) as back:
        assert back.info["icc_profile"] == b"icc-profile-bytes" * 20
        assert back.getexif()[0x010F] == "maker"


def test_files_that_cannot_be_served_identically_are_kept_byte_for_byte(store, tmp_path, photo):
    text_png = io.BytesIO()
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "keep me")
    Image.fromarray(photo[:32, :32]).save(text_png, "PNG", pnginfo=info)
    palette_png = io.BytesIO()
    Image.fromarray(photo[:32, :32]).quantize(8).save(palette_png, "PNG")
    palette = palette_png.getvalue()
    for name, data in [("/t.png", text_png.getvalue()), ("/p.png", palette), ("/x.jpg", b"\xff\xd8jpeg"),
                       ("/notes.txt", b"hello"), ("/fake.png", b"not a png at all")]:
        write(store, name, data)
        assert (tmp_path / name[1:]).read_bytes() == data
        assert read_all(store, name) == data


def test_incompressible_image_is_not_grown(store, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = png_bytes(noise, compress_level=9)
    write(store, "/n.png", data)
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= len(data)
    with Image.open(io.BytesIO(read_all(store, "/n.png"))) as im:
        assert np.array_equal(np.asarray(im), noise)


def test_ppm_round_trip(store, photo):
    buf = io.BytesIO()
    Image.fromarray(photo[:50, :70]).save(buf, "PPM")
    write(store, "/a.ppm", buf.getvalue())
    assert read_all(store, "/a.ppm") == buf.getvalue()  # binary PPM is served byte-identical


def test_partial_reads_and_offsets(store, photo):
    write(store, "/a.png", png_bytes(photo[:80, :80]))
    whole = read_all(store, "/a.png")
    fh = store.open("/a.png", os.O_RDONLY)
    parts = [store.read("/a.png", 1000, off, fh) for off in range(0, len(whole), 1000)]
    store.release("/a.png", fh)
    assert b"".join(parts) == whole


def test_rewrite_rename_unlink(store, tmp_path, photo):
    write(store, "/a.png", png_bytes(photo[:40, :40]))
    write(store, "/a.png", png_bytes(photo[40:80, :40]))
    with Image.open(io.BytesIO(read_all(store, "/a.png"))) as im:
        assert np.array_equal(np.asarray(im), photo[40:80, :40])
    write(store, "/b.png", png_bytes(photo[:10, :10]))
    store.rename("/a.png", "/b.png")  # over an existing file
    assert store.listdir("/") == ["b.png"]
    with Image.open(io.BytesIO(read_all(store, "/b.png"))) as im:
        assert np.array_equal(np.asarray(im), photo[40:80, :40])
    store.rename("/b.png", "/c.ppm")  # another format's name: old format's bytes kept
    assert read_all(store, "/c.ppm").startswith(serve.PNG_SIGNATURE)
    store.unlink("/c.ppm")
    assert store.listdir("/") == []


def test_truncate_and_append(store, photo):
    write(store, "/t.txt", b"hello world")
    store.truncate("/t.txt", 5)
    assert read_all(store, "/t.txt") == b"hello"
    fh = store.open("/t.txt", os.O_WRONLY)
    store.write("/t.txt", b"!", 5, fh)
    store.release("/t.txt", fh)
    assert read_all(store, "/t.txt") == b"hello!"


def test_directories(store):
    store.mkdir("/d", 0o755)
    write(store, "/d/x.txt", b"x")
    assert store.listdir("/d") == ["x.txt"]
    with pytest.raises(OSError):
        store.rmdir("/d")
    store.unlink("/d/x.txt")
    store.rmdir("/d")


def test_paths_cannot_escape(store):
    for bad in ("/../etc/passwd", "/a/../../x", "/" + TEMP_PREFIX + "x"):
        with pytest.raises(OSError):
            store.getattr(bad)


def test_corrupt_nic_gives_eio_and_the_rest_works(store, tmp_path, photo):
    write(store, "/good.png", png_bytes(photo[:30, :30]))
    (tmp_path / "bad.png.nic").write_bytes(b"\x89NIC\r\n\x1a\n" + b"junk" * 10)
    with pytest.raises(OSError) as e:
        read_all(store, "/bad.png")
    assert e.value.errno == 5
    assert read_all(store, "/good.png")


def test_crash_leftovers_are_cleaned_and_old_version_survives(tmp_path, photo):
    store = PhotoStore(tmp_path)
    write(store, "/a.png", png_bytes(photo[:128, :128]))
    before = (tmp_path / "a.png.nic").read_bytes()
    # a writer that never released (the process died): only its staging file exists
    fh = store.create("/a.png", 0o644)
    store.write("/a.png", b"partial", 0, fh)
    assert (tmp_path / "a.png.nic").read_bytes() == before
    assert any(p.name.startswith(TEMP_PREFIX) for p in tmp_path.iterdir())
    reopened = PhotoStore(tmp_path)
    assert not any(p.name.startswith(TEMP_PREFIX) for p in tmp_path.iterdir())
    assert reopened.listdir("/") == ["a.png"]
    assert (tmp_path / "a.png.nic").read_bytes() == before


@pytest.mark.skipif(models.default_model("lossy") is None, reason="no lossy model released")
def test_lossy_option(tmp_path, photo):
    store = PhotoStore(tmp_path, quality=60)
    write(store, "/q.png", png_bytes(photo))
    with Image.open(io.BytesIO(read_all(store, "/q.png"))) as im:
        assert im.size == (photo.shape[1], photo.shape[0])


def test_temp_file_renamed_to_image_name_is_compressed(store, tmp_path, photo):
    write(store, "/.upload.tmp", png_bytes(photo))
    assert (tmp_path / ".upload.tmp").exists()
    store.rename("/.upload.tmp", "/final.png")
    assert (tmp_path / "final.png.nic").exists() and not (tmp_path / ".upload.tmp").exists()
    with Image.open(io.BytesIO(read_all(store, "/final.png"))) as im:
        assert np.array_equal(np.asarray(im), photo)
