"""Pack the training photos small enough to travel to an accelerator machine (the device
tool sends at most 64 MiB, the PNGs are ~170 MB): a window of at most 1.2 MP of each
photo at its native resolution (same aspect, seeded position), as JPEG at quality 92
without chroma subsampling, whose error (~42 dB) lies above the codec's operating range.

    python onnx_models/training/pack_photos.py OUT_DIR ../shared/data/train ~/.cache/nic-train-extra

A config then names OUT_DIR in "data"; list_images reads the packed JPEGs too.
"""

from __future__ import annotations

import math
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from run import list_images

PACK_QUALITY = 92
MAX_PIXELS = 1_200_000


def window(im: Image.Image, seed: int) -> Image.Image:
    """The photo, or a seeded window of it with the same aspect and at most MAX_PIXELS."""
    f = math.sqrt(MAX_PIXELS / (im.width * im.height))
    if f >= 1:
        return im
    w, h = int(im.width * f), int(im.height * f)
    rng = np.random.default_rng(seed)
    x0, y0 = int(rng.integers(0, im.width - w + 1)), int(rng.integers(0, im.height - h + 1))
    return im.crop((x0, y0, x0 + w, y0 + h))


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for path in list_images(sys.argv[2:]):
        target = out / f"{path.stem}.jpg"
        with Image.open(path) as im:
            window(im.convert("RGB"), zlib.crc32(path.name.encode())).save(
                target, quality=PACK_QUALITY, subsampling=0)
        total += target.stat().st_size
    print(f"{total / 1e6:.1f} MB in {out}")


if __name__ == "__main__":
    main()
