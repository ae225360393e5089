"""Scale: encode and decode of 1, 12 and 48 megapixel images, with peak memory.

    python benchmarks/scale.py                  # 1, 12, 48 MP, lossless and lossy
    python benchmarks/scale.py --sizes 1 --modes lossy

Each measurement runs in a fresh subprocess so its peak RSS (ru_maxrss) is its own.
The test image is built by tiling resampled photos (the training photos when
../shared is present, else the bundled sample), so it has photographic content at
any size.  Cost should grow linearly in pixels (MP/s roughly constant).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def build_image(megapixels: float, seed: int = 0) -> np.ndarray:
    """A photographic RGB image of about ``megapixels`` (4:3), tiled from resampled photos."""
    rng = np.random.default_rng(seed)
    sources = sorted((ROOT.parent / "shared" / "data" / "train").glob("*.png")) or \
        [ROOT / "pillow_nic" / "samples" / "chapel.png"]
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    height = int(round(megapixels * 1e6 / width))
    out = np.empty((height, width, 3), np.uint8)
    y = 0
    while y < height:
        x = 0
        row_h = min(height - y, int(rng.integers(384, 1025)))
        while x < width:
            w = min(width - x, int(rng.integers(384, 1025)))
            with Image.open(sources[int(rng.integers(len(sources)))]) as im:
                tile = im.convert("RGB").resize((w, row_h), Image.LANCZOS)
            out[y:y + row_h, x:x + w] = np.asarray(tile)
            x += w
        y += row_h
    return out


CHILD = r"""
import json, resource, sys, time
import numpy as np
import pillow_nic
mode, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
if mode.startswith("encode"):
    arr = np.load(path)
    t = time.perf_counter()
    data = pillow_nic.encode(arr, "RGB", lossless=mode == "encode-lossless", quality=75)
    dt = time.perf_counter() - t
    open(out, "wb").write(data)
    px = arr.shape[0] * arr.shape[1]
else:
    t = time.perf_counter()
    dec = pillow_nic.decode(path)
    dt = time.perf_counter() - t
    px = dec.pixels.shape[0] * dec.pixels.shape[1]
print(json.dumps(dict(seconds=dt, megapixels=px / 1e6,
                      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def run_child(mode: str, path: Path, out: Path) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), str(out)], capture_output=True, text=True,
                         cwd=ROOT)
    if res.returncode:
        raise SystemExit(res.stderr)
    return json.loads(res.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1, 12, 48])
    ap.add_argument("--modes", nargs="+", default=["lossless", "lossy"], choices=["lossless", "lossy"])
    ap.add_argument("--work", default="/tmp/nic-scale")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for mp in args.sizes:
        arr = build_image(mp)
        src = work / f"{mp:g}mp.npy"
        np.save(src, arr)
        del arr
        for mode in args.modes:
            nic = work / f"{mp:g}mp-{mode}.nic"
            enc = run_child(f"encode-{mode}", src, nic)
            dec = run_child("decode", nic, work / "unused")
            bpp = 8 * nic.stat().st_size / (enc["megapixels"] * 1e6)
            rows.append(dict(megapixels=round(enc["megapixels"], 2), mode=mode, bpp=round(bpp, 3),
                             encode_mps=round(enc["megapixels"] / enc["seconds"], 2),
                             decode_mps=round(dec["megapixels"] / dec["seconds"], 2),
                             encode_peak_mb=round(enc["peak_rss_mb"]), decode_peak_mb=round(dec["peak_rss_mb"])))
            print(json.dumps(rows[-1]), flush=True)
            nic.unlink()
        src.unlink()
    print("\n| MP | mode | bpp | encode MP/s | decode MP/s | encode peak MB | decode peak MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['megapixels']} | {r['mode']} | {r['bpp']} | {r['encode_mps']} | {r['decode_mps']} | "
              f"{r['encode_peak_mb']} | {r['decode_peak_mb']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
