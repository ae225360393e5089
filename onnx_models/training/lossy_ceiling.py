"""Where a lossy checkpoint's quality is capped: per rate level, the PSNR of the
synthesis from unquantised latents (the transform's ceiling) beside the PSNR from
rounded latents, and how many latent channels carry anything.

Images: the central 512x512 of every 10th training photo at its native resolution
(never Kodak); these photos are seen in training, so the ceiling is, if anything,
optimistic.

    python onnx_models/training/lossy_ceiling.py onnx_models/training/checkpoints/lossy_v6_model.pt
    python onnx_models/training/lossy_ceiling.py onnx_models/training/checkpoints/lossy_native_v1_model.pt \
        --autoencoder-steps 1500
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import ROOT, TRAINING_PHOTOS, images_to_tensor, list_images  # noqa: E402
from train_lossy import LATENT_CLIP, load_codec  # noqa: E402

SIZE = 512


def central_crops(dirs: list[str], count: int) -> torch.Tensor:
    crops = []
    for path in list_images(dirs)[::10]:
        with Image.open(path) as im:
            if min(im.size) < SIZE:
                continue
            a = np.asarray(im.convert("RGB"))
        y0, x0 = (a.shape[0] - SIZE) // 2, (a.shape[1] - SIZE) // 2
        crops.append(a[y0:y0 + SIZE, x0:x0 + SIZE])
        if len(crops) == count:
            break
    return images_to_tensor(np.stack(crops))


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    return 10 * math.log10(1 / F.mse_loss(x_hat.clamp(0, 1), x).item())


def autoencoder_ceiling(model, x: torch.Tensor, crops: np.ndarray, steps: int) -> None:
    """Is the ceiling architectural?  Train analysis and synthesis as a plain autoencoder
    (top level's gains, no quantisation, no rate) on 256-pixel corners of ``crops`` and
    print the ceiling on ``x`` as it moves."""
    gain = (model.gain[-1].abs() * model.inv_gain[-1].abs()).detach()[None, :, None, None]
    transform = [p for name, p in model.named_parameters() if name.startswith(("analysis", "synthesis", "detail_"))]
    opt = torch.optim.Adam(transform, lr=1e-4)
    rng = np.random.default_rng(0)
    for step in range(1, steps + 1):
        batch = images_to_tensor(crops[rng.integers(0, len(crops), 4)][:, :256, :256])
        loss = F.mse_loss(model.synthesise(model.analyse(batch) * gain), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0:
            with torch.no_grad():
                print(f"autoencoder step {step}: {psnr(model.synthesise(model.analyse(x) * gain), x):.2f} dB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--autoencoder-steps", type=int, default=0,
                    help="then train as a plain autoencoder on this run's crops (runs/NAME/crops.npy)")
    ap.add_argument("--crops-of", default=None, help="run whose crops.npy the autoencoder trains on "
                    "(default: the checkpoint's own run)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, state = load_codec(ROOT / args.checkpoint)
    cfg = state["config"]
    x = central_crops(TRAINING_PHOTOS, args.images)
    print(f"{len(x)} crops of {SIZE}x{SIZE}; level: PSNR unquantised / rounded, channels used (>1 % / >10 % nonzero)")
    with torch.no_grad():
        y = model.analyse(x)
        for level in range(model.gain.shape[0]):
            gain = model.gain[level].abs()[None, :, None, None]
            inv_gain = model.inv_gain[level].abs()[None, :, None, None]
            z_hat = torch.clamp(torch.round(model.hyper_analysis(y * gain)), -LATENT_CLIP, LATENT_CLIP)
            mean = model.hyper_synthesis(z_hat, quantised=True)[0]
            symbols = torch.round(y * gain - mean)  # what the codec codes
            rounded = symbols + mean
            used = (symbols != 0).float().mean(dim=(0, 2, 3))
            print(f"{level}: {psnr(model.synthesise(y * gain * inv_gain), x):.2f} / "
                  f"{psnr(model.synthesise(rounded * inv_gain), x):.2f} dB, "
                  f"{int((used > 0.01).sum())} / {int((used > 0.1).sum())} of {model.m}")
    if args.autoencoder_steps:
        run = args.crops_of or cfg["name"]
        crops = np.load(Path(__file__).resolve().parent / "runs" / run / "crops.npy", mmap_mode="r")
        autoencoder_ceiling(model, x, crops, args.autoencoder_steps)


if __name__ == "__main__":
    main()
