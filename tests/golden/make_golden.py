"""Write golden `.nic` files for formats/models not yet covered.  Existing files are never
rewritten: they lock the format and every released model forever.

    python tests/golden/make_golden.py
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))

import pillow_nic  # noqa: E402
from conftest import clipped_sky, image_for_mode  # noqa: E402


def pixel_hash(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def latent_hash(data: bytes) -> str:
    """Hash of every coder-3 tile's dequantised latents (exact on every runtime and machine);
    for a hybrid layer, of its coder-4 payloads (the base codec's files)."""
    from pillow_nic import container, lossy, models

    h = hashlib.sha256()
    header = pillow_nic.read_info(data)
    fp = io.BytesIO(data)
    layer = header.layers[0]
    package = models.model_for(layer)
    for ti, tile in enumerate(layer.tiles):
        if tile.coder == container.CODER_LOSSY:
            x0, y0, x1, y1 = header.tile_box(ti)
            payload = container.read_payload(fp, tile, f"tile {ti}")
            h.update(lossy.decode_latents(package, payload, (y1 - y0, x1 - x0), layer.quality, ti).tobytes())
        elif tile.coder == container.CODER_STANDARD:
            h.update(container.read_payload(fp, tile, f"tile {ti}"))
    return h.hexdigest()


CASES = {
    # name: (mode, height, width, encode options)
    "stored_rgb_19x23": ("RGB", 19, 23, dict(lossless=True, tile_size=16)),
    "stored_la_9x40": ("LA", 9, 40, dict(lossless=True, tile_size=16)),
    "stored_i16_12x12": ("I;16", 12, 12, dict(lossless=True)),
    "stored_1_33x5": ("1", 33, 5, dict(lossless=True)),
    # model nic-lossless-1 (fa2f94af1375)
    "lossless1_rgb_61x77": ("RGB", 61, 77, dict(lossless=True, tile_size=48)),
    "lossless1_rgba_40x33": ("RGBA", 40, 33, dict(lossless=True)),
    "lossless1_l_50x50": ("L", 50, 50, dict(lossless=True)),
    # model nic-lossless-2 (755f8d1e367a): quarter-level means
    "lossless2_rgb_70x45": ("RGB", 70, 45, dict(lossless=True, tile_size=32)),
    "lossless2_la_33x64": ("LA", 33, 64, dict(lossless=True)),
    # model nic-lossy-1 (33aabb332aa3): four tiles synthesised across their borders
    "lossy1_rgb_100x130": ("RGB", 100, 130, dict(lossless=False, quality=40, tile_size=64)),
    "lossy1_la_70x64": ("LA", 70, 64, dict(lossless=False, quality=80)),
    # hybrid coding, JPEG base restored by nic-restore-jpeg-1 (0e46e6499ceb)
    "hybrid_restore1_rgb_72x100": ("RGB", 72, 100, dict(lossless=False, quality=20, profile="hybrid",
                                                         tile_size=48)),
    "hybrid_restore1_l_50x40": ("L", 50, 40, dict(lossless=False, quality=10, profile="hybrid")),
    # model nic-lossy-2 (c8d1afbfbde8) and nic-restore-jpeg-2 (9cea389a562d)
    "lossy2_rgba_90x70": ("RGBA", 90, 70, dict(lossless=False, quality=1, tile_size=64)),
    "hybrid_restore2_rgb_64x64": ("RGB", 64, 64, dict(lossless=False, quality=35, profile="hybrid")),
    # model nic-lossless-3 (c5eaa737cf9a)
    "lossless3_rgb_57x66": ("RGB", 57, 66, dict(lossless=True, tile_size=32)),
    "lossless3_l_40x23": ("L", 40, 23, dict(lossless=True)),
    # session 3: lossless schedule 2 (split edge pass), lossy with a deeper encoder, tune="ssim"
    "lossless4_rgb_57x66": ("RGB", 57, 66, dict(lossless=True, tile_size=32)),
    "lossless4_la_41x30": ("LA", 41, 30, dict(lossless=True)),
    "lossy3_rgb_100x130": ("RGB", 100, 130, dict(lossless=False, quality=50, tile_size=64)),
    "lossyssim1_rgb_70x64": ("RGB", 70, 64, dict(lossless=False, quality=60, tune="ssim")),
    # session 4: coder 5 (per-pass calibration of the scale rows), nic-lossless-4
    "lossless4cal_rgb_57x66": ("RGB", 57, 66, dict(lossless=True, tile_size=32)),
    "lossless4cal_l_45x31": ("L", 45, 31, dict(lossless=True)),
    # nic-lossy-4 (8e7655690814): nic-lossy-2 fine-tuned on 256-pixel crops
    "lossy4_rgb_96x130": ("RGB", 96, 130, dict(lossless=False, quality=70, tile_size=64)),
    # session 5: nic-lossy-5 (nic-lossy-4's architecture, trained on larger crops)
    "lossy5_rgb_128x72": ("RGB", 128, 72, dict(lossless=False, quality=55, tile_size=64)),
    # session 6: nic-lossy-6 (nic-lossy-5 trained on native-resolution crops, magnitude gains)
    "lossy6_rgb_80x112": ("RGB", 80, 112, dict(lossless=False, quality=20, tile_size=64)),
    # session 7: nic-lossy-7 (nic-lossy-6's networks; latents in the 5 lowest table rows not coded)
    "lossy7_rgb_96x128": ("RGB", 96, 128, dict(lossless=False, quality=75, tile_size=64)),
    # nic-lossless-6 (nic-lossless-4 trained on native-resolution crops, tables refitted)
    "lossless6_rgb_57x66": ("RGB", 57, 66, dict(lossless=True, tile_size=32)),
    "lossless6_l_45x31": ("L", 45, 31, dict(lossless=True)),
    # session 8: nic-lossless-8 (64-64 networks, lossless_v10, tables refitted)
    "lossless8_rgb_57x66": ("RGB", 57, 66, dict(lossless=True, tile_size=32)),
    "lossless8_la_41x30": ("LA", 41, 30, dict(lossless=True)),
    # session 8: coder 6 (R, G, B as separate planes) on a blown sky beside an ordinary tile
    "lossless8planes_rgb_48x96": ("RGB", 48, 96, dict(lossless=True, tile_size=48)),
    # session 11: nic-lossy-8 (192 latents straight into the synthesis, two encoder blocks)
    "lossy8_rgb_112x96": ("RGB", 112, 96, dict(lossless=False, quality=35, tile_size=64)),
    # session 12: nic-lossy-9 (nic-lossy-8's networks; the encoder's rate-distortion optimised rounding)
    "lossy9_rgb_96x112": ("RGB", 96, 112, dict(lossless=False, quality=55, tile_size=64)),
    # session 13: nic-lossy-10 (nic-lossy-8's networks; sub-pixel synthesis graph, the encoder's
    # latent refinement across four tiles)
    "lossy10_rgb_128x96": ("RGB", 128, 96, dict(lossless=False, quality=65, tile_size=64)),
}

#: cases whose pixels are not image_for_mode's: name -> (height, width, seed) -> pixels
PIXELS = {
    "lossless8planes_rgb_48x96": lambda h, w, seed: np.concatenate(
        [clipped_sky(h, w // 2, seed), image_for_mode("RGB", h, w - w // 2, seed)], axis=1),
}


def main() -> None:
    index_path = HERE / "golden.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    for name, (mode, h, w, opts) in CASES.items():
        if name in index:
            continue
        arr = PIXELS.get(name, lambda h, w, seed: image_for_mode(mode, h, w, seed))(h, w, len(name))
        data = pillow_nic.encode(arr, mode, metadata={"xmp": name.encode()}, **opts)
        (HERE / f"{name}.nic").write_bytes(data)
        entry = dict(mode=mode, size=[w, h], file_sha256=hashlib.sha256(data).hexdigest())
        if opts.get("lossless", True):
            entry["pixels_sha256"] = pixel_hash(arr)
        else:
            # lossy pixels may differ by one level between runtimes and CPUs: keep a reference
            # decode, and lock the latents (what the entropy coder produced) exactly
            reference = pillow_nic.decode(data).pixels
            np.save(HERE / f"{name}.reference.npy", reference)
            entry["latents_sha256"] = latent_hash(data)
        index[name] = entry
        print("wrote", name)
    index_path.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
