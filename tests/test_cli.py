"""The nic command line: compress, decompress, info, compare, demo, exit codes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pillow_nic import cli
from conftest import synthetic


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "b.bmp", "sub/c.tiff"]):
        Image.fromarray(synthetic(20 + i, 30, 3, seed=i)).save(d / name)
    (d / "notes.txt").write_text("not an image")
    return d


def test_compress_directory_lossless_and_back(images, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["compress", str(images), "--lossless", "-o", str(out)]) == 0
    nics = sorted(str(p.relative_to(out)) for p in out.rglob("*.nic"))
    assert nics == ["a.nic", "b.nic", "sub/c.nic"]  # the tree's structure is kept
    assert (images / "a.png").exists()  # originals kept
    back = tmp_path / "back"
    assert cli.main(["decompress", str(out), "-o", str(back)]) == 0
    for src in ["a.png", "b.bmp", "sub/c.tiff"]:
        a = np.asarray(Image.open(images / src))
        b = np.asarray(Image.open(back / (src.rsplit(".", 1)[0] + ".png")))
        assert np.array_equal(a, b)


def test_compress_single_file_with_glob_and_delete(images, tmp_path):
    target = images / "a.png"
    assert cli.main(["compress", str(images / "a.*"), "--lossless", "--delete"]) == 0
    assert not target.exists()
    assert (images / "a.nic").exists()


def test_info_and_runtime(images, tmp_path, capsys):
    cli.main(["compress", str(images / "a.png"), "--lossless", "-o", str(tmp_path / "a.nic")])
    capsys.readouterr()
    assert cli.main(["info", str(tmp_path / "a.nic"), "--runtime"]) == 0
    out = capsys.readouterr().out
    assert "30x20" in out and "bpp" in out and "runtime:" in out and "compiled kernels:" in out


def test_compare(images, tmp_path, capsys):
    cli.main(["compress", str(images / "a.png"), "--lossless", "-o", str(tmp_path / "a.nic")])
    capsys.readouterr()
    assert cli.main(["compare", str(images / "a.png"), str(tmp_path / "a.nic")]) == 0
    out = capsys.readouterr().out
    assert "PSNR: inf dB" in out and "MS-SSIM: 1.0000" in out and "bpp:" in out


def test_missing_and_corrupt_inputs_fail_with_status_1(tmp_path, capsys):
    assert cli.main(["compress", str(tmp_path / "nope.png"), "--lossless"]) == 1
    bad = tmp_path / "bad.nic"
    bad.write_bytes(b"\x89NIC\r\n\x1a\n\x07garbage")
    assert cli.main(["decompress", str(bad)]) == 1
    assert cli.main(["info", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "nope.png" in err and "bad.nic" in err


def test_bad_usage_exits_2():
    with pytest.raises(SystemExit) as e:
        cli.main(["compress"])
    assert e.value.code == 2
    assert cli.main(["compress", "x.png", "-q", "0"]) == 2


def test_demo_round_trips_the_sample(tmp_path, capsys):
    assert cli.main(["demo", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "lossless" in out and "bit-exact" in out
    assert (tmp_path / "chapel_lossless.nic").exists()


def test_full_disk_leaves_no_partial_file(images, tmp_path, monkeypatch, capsys):
    import errno
    import os as os_module

    target = tmp_path / "a.nic"
    real_fsync = os_module.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os_module, "fsync", full)
    assert cli.main(["compress", str(images / "a.png"), "--lossless", "-o", str(target)]) == 1
    monkeypatch.setattr(os_module, "fsync", real_fsync)
    assert "No space left" in capsys.readouterr().err
    assert not target.exists()
    assert list(tmp_path.glob(".a.nic.*")) == []
    assert (images / "a.png").exists()
