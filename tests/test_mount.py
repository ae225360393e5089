"""A real FUSE mount of the photo store, used with ordinary tools (cp, rsync, threads),
killed mid-write and remounted.  Skips with a reason where FUSE is unavailable."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT


def fuse_unavailable() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is absent"
    if not (shutil.which("fusermount3") or shutil.which("fusermount")):
        return "fusermount is not installed (apt-get install fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy/libfuse unavailable: {exc}"
    return None


pytestmark = pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))


def is_mounted(path: Path) -> bool:
    """True also for a dead FUSE mount (whose stat fails), unlike os.path.ismount."""
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


class Mount:
    def __init__(self, backing: Path, mountpoint: Path, *options: str):
        self.backing, self.mountpoint, self.options = backing, mountpoint, options
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Mount":
        self.proc = subprocess.Popen([sys.executable, "-m", "fuse_mount.cli", str(self.backing), str(self.mountpoint),
                                      *self.options], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while not os.path.ismount(self.mountpoint):
            if self.proc.poll() is not None or time.time() > deadline:
                out = self.proc.stdout.read().decode() if self.proc.poll() is not None else ""
                self.stop()
                pytest.fail(f"mount did not appear: {out}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if is_mounted(self.mountpoint):
            subprocess.call([shutil.which("fusermount3") or "fusermount", "-u", "-z", str(self.mountpoint)])
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()
        self.proc = None


@pytest.fixture
def mounted(tmp_path):
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mnt.mkdir()
    m = Mount(backing, mnt).start()
    yield m
    m.stop()


def save_png(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(arr).save(path, "PNG")


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def make_tree(root: Path, photo: np.ndarray) -> list[Path]:
    (root / "sub dir" / "ünïcode").mkdir(parents=True)
    files = [root / "a.png", root / "sub dir" / "b c.png", root / "sub dir" / "ünïcode" / ".hidden.png"]
    for i, f in enumerate(files):
        save_png(f, photo[i * 40:i * 40 + 120, :160])
    (root / "notes.txt").write_text("not an image")
    Image.fromarray(photo[:64, :64]).save(root / "sub dir" / "pic.jpg", quality=90)
    return files


def test_cp_tree_in_and_out(mounted, tmp_path, photo):
    src = tmp_path / "src"
    make_tree(src, photo)
    subprocess.run(["cp", "-r", f"{src}/.", str(mounted.mountpoint)], check=True)
    out = tmp_path / "out"
    subprocess.run(["cp", "-r", str(mounted.mountpoint), str(out)], check=True)
    for f in src.rglob("*"):
        g = out / f.relative_to(src)
        assert g.exists(), g
        if f.suffix == ".png":
            assert np.array_equal(pixels(f), pixels(g))
        elif f.is_file():
            assert f.read_bytes() == g.read_bytes()
    assert (mounted.backing / "a.png.nic").exists()
    assert (mounted.backing / "sub dir" / "pic.jpg").read_bytes() == (src / "sub dir" / "pic.jpg").read_bytes()


def test_stat_size_equals_bytes_read(mounted, photo):
    target = mounted.mountpoint / "x.png"
    save_png(target, photo)
    data = target.read_bytes()
    assert os.stat(target).st_size == len(data)
    with open(target, "rb") as f:
        f.seek(1234)
        assert f.read(777) == data[1234:2011]


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_rsync(mounted, tmp_path, photo):
    src = tmp_path / "src"
    make_tree(src, photo)
    subprocess.run(["rsync", "-a", f"{src}/", f"{mounted.mountpoint}/"], check=True)
    assert (mounted.backing / "sub dir" / "b c.png.nic").exists()  # written as temp + rename: still compressed
    assert os.stat(mounted.mountpoint / "a.png").st_mtime_ns == os.stat(src / "a.png").st_mtime_ns
    back = tmp_path / "back"
    subprocess.run(["rsync", "-a", f"{mounted.mountpoint}/", f"{back}/"], check=True)
    assert np.array_equal(pixels(src / "sub dir" / "b c.png"), pixels(back / "sub dir" / "b c.png"))


def test_concurrent_readers_and_writers(mounted, photo):
    errors: list[str] = []

    def writer(i: int) -> None:
        for j in range(3):
            arr = np.roll(photo[:96, :128], i * 7 + j, axis=1)
            path = mounted.mountpoint / f"w{i}.png"
            save_png(path, arr)
            if not np.array_equal(pixels(path), arr):
                errors.append(f"writer {i} round {j}")

    save_png(mounted.mountpoint / "shared.png", photo[:100, :100])

    def reader() -> None:
        for _ in range(5):
            if not np.array_equal(pixels(mounted.mountpoint / "shared.png"), photo[:100, :100]):
                errors.append("reader")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)] + \
              [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert all(not t.is_alive() for t in threads)


def test_corrupt_file_gives_eio_and_mount_keeps_working(mounted, photo):
    (mounted.backing / "bad.png.nic").write_bytes(b"\x89NIC\r\n\x1a\n" + b"x" * 64)
    with pytest.raises(OSError) as e:
        (mounted.mountpoint / "bad.png").read_bytes()
    assert e.value.errno == 5
    save_png(mounted.mountpoint / "ok.png", photo[:50, :50])
    assert np.array_equal(pixels(mounted.mountpoint / "ok.png"), photo[:50, :50])


def test_kill_9_mid_write_leaves_old_or_new(tmp_path, photo):
    backing, mnt = tmp_path / "b", tmp_path / "m"
    backing.mkdir()
    mnt.mkdir()
    m = Mount(backing, mnt).start()
    old = photo[:128, :128]
    save_png(mnt / "a.png", old)
    f = open(mnt / "a.png", "wb")  # rewrite in progress...
    buf = io.BytesIO()
    Image.fromarray(photo[100:228, :128]).save(buf, "PNG")
    f.write(buf.getvalue()[:2000])
    f.flush()
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait()
    try:
        f.close()
    except OSError:
        pass
    m.stop()
    m = Mount(backing, mnt).start()
    try:
        assert not any(p.name.startswith(".nic-tmp-") for p in backing.iterdir())
        assert np.array_equal(pixels(mnt / "a.png"), old)
    finally:
        m.stop()


def test_sigint_unmounts_cleanly(tmp_path):
    backing, mnt = tmp_path / "b", tmp_path / "m"
    backing.mkdir()
    mnt.mkdir()
    m = Mount(backing, mnt).start()
    m.proc.send_signal(signal.SIGINT)
    assert m.proc.wait(timeout=10) == 0
    assert not is_mounted(mnt)
    m.stop()


def test_help_mentions_lossy_choice():
    out = subprocess.run([sys.executable, "-m", "fuse_mount.cli", "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "quality" in out and "lossy" in out
