"""Rate of lossy checkpoints against a reference at equal PSNR, per rate level, on the
held-out crops of one or more training runs (each run's first ``val_crops`` crops,
as its own validation uses them; never Kodak).

    python onnx_models/training/compare_lossy.py --crops lossy_v6 --photos 12 \\
        --reference checkpoints/lossy_v6_model.pt runs/lossy_v8/checkpoint.pt
    python onnx_models/training/compare_lossy.py --coded --crops lossy_native_v1 --photos 12 \\
        --reference checkpoints/lossy_native_v1_model.pt runs/lossy_coded_v1/checkpoint.pt

``--coded`` measures the rate as the file codes it (coded_rate_distortion); without it,
the training estimate (quantisation noise), which overcharges near-zero latents.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lossy_ceiling import SIZE, central_crops  # noqa: E402
from run import TRAINING_PHOTOS, images_to_tensor  # noqa: E402
from train_lossy import LATENT_CLIP, latent_tables, load_codec, table_rows  # noqa: E402

HERE = Path(__file__).resolve().parent


def rate_distortion(model, x: torch.Tensor) -> list[tuple[float, float]]:
    """(bpp, PSNR) per level: the training objective's rate estimate, quantised network."""
    out = []
    torch.manual_seed(0)  # the rate estimate draws quantisation noise
    with torch.no_grad():
        for level in range(model.gain.shape[0]):
            bits, sq = 0.0, 0.0
            for batch in x.split(8):
                x_hat, by, bz = model(batch, torch.full((len(batch),), level), True)
                bits += (by.sum() + bz.sum()).item()
                sq += F.mse_loss(x_hat.clamp(0, 1), batch, reduction="sum").item()
            out.append((bits / x[:, 0].numel(), 10 * math.log10(x.numel() / sq)))
    return out


def coded_rate_distortion(model, x: torch.Tensor) -> list[tuple[float, float]]:
    """(bpp, PSNR) per level as the format codes them (FORMAT.md, coder 3): rounded
    hyper-latents and latents, each costing -log2 of its integer table frequency, latents
    in uncoded rows free and decoded as their mean, table-row offsets applied.  Unlike
    the training estimate, a latent that is always 0 in a narrow row costs nothing."""
    family, uncoded = latent_tables()
    log_p = torch.from_numpy(np.log2(family / family.sum(axis=1, keepdims=True)))
    z_rows = model.z_table_rows()
    out = []
    with torch.no_grad(), model.coded_as_files():  # a checkerboard context sees its anchors as coded
        for level in range(model.gain.shape[0]):
            gain, inv_gain = (g[level].abs()[None, :, None, None] for g in (model.gain, model.inv_gain))
            bits, sq = 0.0, 0.0
            for batch in x.split(8):
                y = model.analyse(batch) * gain
                z_hat = torch.clamp(torch.round(model.hyper_analysis(y)), -LATENT_CLIP, LATENT_CLIP)
                mean, log_scale = model.latent_parameters(y, z_hat, torch.full((len(batch),), level), True)
                rows = table_rows(log_scale)
                s = torch.clamp(torch.round(y - mean), -LATENT_CLIP, LATENT_CLIP).long()
                s = torch.where(rows < uncoded, 0, s)
                bits -= log_p[rows, s + LATENT_CLIP].sum().item()
                zr = z_rows[level][None, :, None, None].expand_as(z_hat)
                bits -= log_p[zr, z_hat.long() + LATENT_CLIP].sum().item()
                x_hat = model.synthesise((s + mean) * inv_gain)
                sq += F.mse_loss(x_hat.clamp(0, 1), batch, reduction="sum").item()
            out.append((bits / x[:, 0].numel(), 10 * math.log10(x.numel() / sq)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", nargs="*", default=[], help="run names whose held-out crops to use")
    ap.add_argument("--photos", type=int, default=0, help="also: central crops of this many training photos (run.TRAINING_PHOTOS, lossy_ceiling)")
    ap.add_argument("--reference", required=True)
    ap.add_argument("--coded", action="store_true",
                    help="rate as the format codes it (coded_rate_distortion), not the training estimate")
    ap.add_argument("checkpoints", nargs="+")
    args = ap.parse_args()
    measure = coded_rate_distortion if args.coded else rate_distortion
    torch.set_num_threads(1)
    reference = load_codec(HERE / args.reference)[0]
    others = {path: load_codec(HERE / path)[0] for path in args.checkpoints}
    sets = {}
    for run in args.crops:
        cfg = json.loads((HERE / f"{run}.json").read_text())
        crops = np.load(HERE / "runs" / run / "crops.npy", mmap_mode="r")[:cfg["val_crops"]]
        sets[f"{run} held-out crops"] = images_to_tensor(np.array(crops))  # a copy: the memory map is read-only
    if args.photos:
        sets[f"central {SIZE}x{SIZE} of {args.photos} photos (every 10th, native resolution)"] = \
            central_crops(TRAINING_PHOTOS, args.photos)
    for name, x in sets.items():
        ref = measure(reference, x)
        log_rate, quality = np.log([r for r, _ in ref]), np.array([q for _, q in ref])
        print(f"{name}; {args.reference}: " + " ".join(f"({r:.4f}, {q:.2f})" for r, q in ref))
        for path, model in others.items():
            rd = measure(model, x)
            change = [r / math.exp(np.interp(q, quality, log_rate, left=np.nan, right=np.nan)) - 1 for r, q in rd]
            print(f"  {path}: " + " ".join(f"({r:.4f}, {q:.2f})" for r, q in rd)
                  + "  rate at equal PSNR: " + " ".join(f"{c * 100:+.1f}%" for c in change))


if __name__ == "__main__":
    main()
