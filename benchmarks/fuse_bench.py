"""The photo store: space saved and read throughput of a real `nic-mount`, beside a plain folder.

    python benchmarks/fuse_bench.py                     # Kodak (and the training photos) if present
    python benchmarks/fuse_bench.py --images DIR

Copies the images into a fresh mount (lossless), reports the backing size against the
originals, then reads every file back cold (a new mount: nothing cached), again (the
mount's decoded-file cache), and the same PNGs from a plain folder; each as raw bytes
and as bytes + Pillow decode.  MB/s counts bytes returned, MP/s image pixels.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def mount(backing: Path, mnt: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "fuse_mount.cli", str(backing), str(mnt)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while not os.path.ismount(mnt):
        if time.time() > deadline or proc.poll() is not None:
            raise SystemExit("mount did not appear")
        time.sleep(0.05)
    return proc


def unmount(mnt: Path, proc: subprocess.Popen) -> None:
    subprocess.call([shutil.which("fusermount3") or "fusermount", "-u", str(mnt)])
    proc.wait(timeout=30)


def read_all(files: list[Path], decode: bool) -> tuple[float, int, int]:
    """(seconds, bytes, pixels) to read (and optionally decode) every file."""
    total_bytes = pixels = 0
    t = time.perf_counter()
    for f in files:
        data = f.read_bytes()
        total_bytes += len(data)
        if decode:
            with Image.open(f) as im:
                im.load()
                pixels += im.width * im.height
    return time.perf_counter() - t, total_bytes, pixels


def folder_size(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def bench(images: list[Path], label: str) -> list[str]:
    pixels = 0
    for p in images:
        with Image.open(p) as im:
            pixels += im.width * im.height
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        backing, mnt, plain = Path(tmp, "backing"), Path(tmp, "mnt"), Path(tmp, "plain")
        for d in (backing, mnt, plain):
            d.mkdir()
        for p in images:
            shutil.copyfile(p, plain / p.name)
        proc = mount(backing, mnt)
        t = time.perf_counter()
        for p in images:
            shutil.copyfile(p, mnt / p.name)
        write_s = time.perf_counter() - t
        unmount(mnt, proc)
        original, stored = folder_size(plain), folder_size(backing)
        rows.append(f"| {label} | {len(images)} | {original / 1e6:.1f} MB | {stored / 1e6:.1f} MB | "
                    f"{100 * (1 - stored / original):.1f} % | {pixels / 1e6 / write_s:.2f} MP/s |")
        reads = []
        for decode in (False, True):
            proc = mount(backing, mnt)  # cold: a fresh mount has an empty cache
            files = [mnt / p.name for p in images]
            cold = read_all(files, decode)
            warm = read_all(files, decode)
            unmount(mnt, proc)
            plain_read = read_all([plain / p.name for p in images], decode)
            what = "read + Pillow decode" if decode else "read bytes"
            for name, (s, b, _) in (("mount, cold", cold), ("mount, cached", warm), ("plain PNG folder", plain_read)):
                reads.append(f"| {label} | {what} | {name} | {b / 1e6 / s:.1f} MB/s | {pixels / 1e6 / s:.2f} MP/s |")
        rows.append(reads)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", action="append", help="folder of PNGs (repeatable)")
    ap.add_argument("--limit", type=int)
    args = ap.parse_args(argv)
    sets = args.images or [str(ROOT.parent / "shared/data/kodak"), str(ROOT.parent / "shared/data/train")]
    space, reads = [], []
    for folder in sets:
        images = sorted(Path(folder).glob("*.png"))[:args.limit]
        if not images:
            continue
        summary, read_rows = bench(images, Path(folder).name)
        space.append(summary)
        reads += read_rows
    print("| set | images | originals | backing | saved | write (copy in) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(space))
    print("\n| set | what | source | MB/s | MP/s |")
    print("|---|---|---|---|---|")
    print("\n".join(reads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
