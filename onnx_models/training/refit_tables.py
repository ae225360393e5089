"""Refit a lossless package's probability tables to the residuals its networks really see.

The networks name, per pixel, a table (scale row, mean offset); the released tables are
discretised logistics.  Where the real residuals are not logistic (heavier tails, skew),
tables re-estimated from counts code them in fewer bits.  This keeps the networks and
replaces only ``tables.npz``: the result is a new package (a new model id).

    python onnx_models/training/refit_tables.py --model nic-lossless-2 --name nic-lossless-3

Data: the training photos (every 10th held out for validation, as in the training runs),
each downscaled so its longer side is at most 1024 pixels, coded in 256-pixel tiles.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from export import release  # noqa: E402
from run import TRAINING_PHOTOS, list_images  # noqa: E402

from pillow_nic import interlace, lossless, models, tables  # noqa: E402

TILE = 256


def load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = min(1.0, 1024 / max(im.size))
        if scale < 1:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
        return np.asarray(im)


def count(package, images: list[np.ndarray]) -> dict[int, np.ndarray]:
    """Per radius, (tables, 2R+1) counts of the coded symbols of every image."""
    t = lossless._tables_for(package)
    n_tables = tables.SCALE_BINS * t.offsets
    counts = {r: np.zeros((n_tables, 2 * r + 1), np.int64) for r in (255, 510)}
    for rgb in images:
        for y in range(0, rgb.shape[0], TILE):
            for x in range(0, rgb.shape[1], TILE):
                planes = lossless._to_planes(rgb[y:y + TILE, x:x + TILE])
                specs = lossless._plane_specs(len(planes))
                for p, plane, spec, centre, table in lossless._predictions(package, planes, specs, t):
                    symbols = interlace.target_values(plane, p) - centre + spec.radius
                    flat = table.astype(np.int64) * (2 * spec.radius + 1) + symbols
                    counts[spec.radius] += np.bincount(flat, minlength=counts[spec.radius].size).reshape(
                        counts[spec.radius].shape)
    return counts


def refit(family: np.ndarray, counts: np.ndarray, prior: float) -> np.ndarray:
    """Tables from counts, each smoothed towards its logistic with ``prior`` pseudo-counts."""
    rows, offsets, bins = family.shape
    model = family.reshape(rows * offsets, bins) / float(1 << tables.PRECISION)
    out = np.empty_like(family.reshape(rows * offsets, bins))
    for i in range(rows * offsets):
        pmf = (counts[i] + prior * model[i]) / (counts[i].sum() + prior)
        out[i] = tables.quantise_pmf(pmf)
    return out.reshape(family.shape)


def bits(family: np.ndarray, counts: np.ndarray) -> float:
    freq = family.reshape(counts.shape).astype(np.float64)
    return float(-(counts * np.log2(freq / (1 << tables.PRECISION))).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nic-lossless-2")
    ap.add_argument("--name", help="release the refitted package under this name")
    ap.add_argument("--priors", default="10,100,1000,10000")
    args = ap.parse_args()
    entry = next(e for e in models.registered() if e["name"] == args.model)
    package = models.package_by_hash(entry["hash"], "onnxruntime")
    files = list_images(TRAINING_PHOTOS)
    val_files, train_files = files[::10], [f for i, f in enumerate(files) if i % 10]
    t0 = time.time()
    train = count(package, [load(f) for f in train_files])
    val_images = [load(f) for f in val_files]
    val = count(package, val_images)
    pixels = sum(im.shape[0] * im.shape[1] for im in val_images)
    print(f"counted {len(train_files)} train / {len(val_files)} val images in {time.time() - t0:.0f}s")
    old = {r: package.tables[f"family{r}"] for r in (255, 510)}
    base = sum(bits(old[r], val[r]) for r in old) / pixels
    print(f"released tables: {base:.4f} bpp on validation (learned symbols only)")
    best = None
    for prior in (float(p) for p in args.priors.split(",")):
        new = {r: refit(old[r], train[r], prior) for r in old}
        bpp = sum(bits(new[r], val[r]) for r in old) / pixels
        print(f"prior {prior:g}: {bpp:.4f} bpp ({(bpp / base - 1) * 100:+.2f} %)")
        if best is None or bpp < best[0]:
            best = (bpp, prior, new)
    if args.name:
        bpp, prior, new = best
        tmp = Path(tempfile.mkdtemp())
        kept = {k: v for k, v in package.tables.items() if not k.startswith("family")}  # e.g. the schedule
        np.savez_compressed(tmp / "tables.npz", **kept, **{f"family{r}": new[r].astype(np.int32) for r in new})
        roles = {role: models.MODEL_DIR / rel for role, rel in entry["files"].items() if role != "tables"}
        roles["tables"] = tmp / "tables.npz"
        record = dict(refit_of=entry["name"], prior=prior, train_images=len(train_files),
                      val_images=len(val_files), val_bpp_before=round(base, 4), val_bpp_after=round(bpp, 4),
                      summary=dict(refit_of=entry["name"], val_gain_percent=round((bpp / base - 1) * 100, 2)))
        release("lossless", args.name, roles, record)


if __name__ == "__main__":
    main()
