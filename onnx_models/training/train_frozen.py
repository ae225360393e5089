"""Fine-tune parts of a lossy codec over its frozen analysis transform.

    python onnx_models/training/train_frozen.py --config onnx_models/training/lossy_ctx_v4.json

The analysis and gains come from ``init_from`` and never move, so the analysis runs once
per crop before training (a cache of latents before gains) and a step costs only the
parts that train: the entropy model (hyper-analysis, hyper-synthesis, hyper-latent
scales, the optional checkerboard context) at latent resolution, and, if the config names
it, the synthesis.  On two CPU cores that makes an entropy model (the checkerboard
context) or a decoder refit trainable in an hour.  The loss is the usual rate + λ·MSE per
level, each level divided by the warm start's rate there, so every level counts alike;
with the synthesis frozen, λ·MSE is left out (a latent's reconstruction moves only with
its predicted mean).  The rate is the noisy estimate unless the config asks for the coded
rate: with y fixed, the coded rate of a rounded latent does not move with its mean (the
gradient reaches the mean only through nonzero symbols), so predicted means barely learn
under it (lossy_ctx_v3, RUNS.md).  Validation reports the coded rate and the PSNR.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from run import (CHECKPOINT_EVERY_S, finish, images_to_tensor, learning_rate, log_record, resume,
                 save_checkpoint, start_run)
from train_lossy import DOWNSCALES, Codec, distortion, grow, load_crops

TRAINABLE = ("hyper_analysis.", "hs.", "z_log_scale", "ctx_", "synthesis.")  # parameter name prefixes
ENTROPY_MODEL = TRAINABLE[:4]  # what trains unless the config says


def frozen_latents(model: Codec, crops: np.ndarray, batch: int = 8) -> np.ndarray:
    """(N, M, h, w) float16 latents of the crops before gains (the frozen analysis)."""
    with torch.no_grad():
        return np.concatenate([model.analyse(images_to_tensor(crops[i:i + batch])).half().numpy()
                               for i in range(0, len(crops), batch)])


def level_rates(model: Codec, latents: torch.Tensor, crops: np.ndarray) -> list[dict]:
    """Per level: coded bits per pixel of the latents and PSNR of their crops."""
    out = []
    pixels = latents.shape[2] * latents.shape[3] * 256
    torch.manual_seed(0)  # the hyper-latents' rate estimate draws noise
    with torch.no_grad(), model.coded_as_files():
        for lv in range(model.gain.shape[0]):
            bits, sq = 0.0, 0.0
            for i in range(0, len(latents), 16):
                y0 = latents[i:i + 16].float()
                x_hat, by, bz = model.reconstruct(y0, torch.full((len(y0),), lv, dtype=torch.long), True)
                bits += (by.sum() + bz.sum()).item()
                sq += F.mse_loss(x_hat.clamp(0, 1), images_to_tensor(crops[i:i + 16]), reduction="sum").item()
            out.append(dict(level=lv, bpp=round(bits / (len(latents) * pixels), 4),
                            psnr=round(10 * math.log10(3 * len(latents) * pixels / sq), 3)))
    return out


def main() -> None:
    cfg, run_dir, rng, log, opts = start_run(__doc__.splitlines()[0])
    if not cfg.get("init_from"):
        raise SystemExit("a fine-tune over a frozen analysis needs init_from (the codec it starts from)")
    model = Codec(cfg)
    prefixes = tuple(cfg.get("trainable", ENTROPY_MODEL))  # e.g. the context alone, the hyperprior kept
    if not all(prefix.startswith(TRAINABLE) for prefix in prefixes):
        raise SystemExit(f"only these train over a frozen analysis: {TRAINABLE}")
    with_synthesis = any(prefix.startswith("synthesis") for prefix in prefixes)
    trainable = [(name, p) for name, p in model.named_parameters() if name.startswith(prefixes)]
    for p in model.parameters():
        p.requires_grad_(False)
    for _, p in trainable:
        p.requires_grad_(True)
    groups = [dict(params=[p for name, p in trainable if not name.startswith("ctx_")]),
              dict(params=[p for name, p in trainable if name.startswith("ctx_")],
                   lr_scale=cfg.get("context_lr_scale", 1.0))]
    opt = torch.optim.Adam(groups, lr=cfg["lr"])
    step, rng = resume(run_dir, cfg, model, opt, rng, grow)

    t0 = time.time()
    cache = run_dir / "latents.npy"
    if cache.exists():
        latents, crops = np.load(cache), np.load(run_dir / "crops.npy", mmap_mode="r")
    else:
        crops = load_crops(cfg["data"], cfg["crops"], cfg["patch"], rng, tuple(cfg.get("scales", DOWNSCALES)))
        rng.shuffle(crops)  # the held-out crops: a sample of every photo, not the first photos
        latents = frozen_latents(model, crops)  # the analysis is frozen: the same at any step
        np.save(cache, latents)
        np.save(run_dir / "crops.npy", crops)
    n_val = cfg["val_crops"]
    val, train = torch.from_numpy(latents[:n_val]), torch.from_numpy(latents[n_val:])
    val_crops = np.array(crops[:n_val])
    train_crops = torch.from_numpy(np.array(crops[n_val:])) if with_synthesis else None  # the distortion's targets
    print(f"{len(train)} train / {len(val)} val latents, {time.time() - t0:.0f}s", flush=True)

    reference_file = run_dir / "reference_bpp.json"  # the warm start's rates weigh the levels
    if not reference_file.exists():
        start = level_rates(model, val, val_crops)
        log_record(log, dict(step=step, val=start))
        reference_file.write_text(json.dumps([r["bpp"] for r in start]))
    level_weight = 1 / torch.tensor(json.loads(reference_file.read_text()))
    lambdas = torch.tensor(cfg["lambdas"])

    levels, b, total = model.gain.shape[0], cfg["batch"], cfg["steps"]
    t_start, last_ckpt, start_step = time.time(), time.time(), step
    while step < total:
        lr = learning_rate(cfg, step)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        pick = torch.from_numpy(rng.integers(0, len(train), b))
        y0 = train[pick].float()
        level = torch.from_numpy(rng.integers(0, levels, b))
        if with_synthesis:
            x_hat, by, bz = model.reconstruct(y0, level, True)
            weighted_distortion = lambdas[level] * distortion(x_hat, images_to_tensor(train_crops[pick]), "mse")
        else:  # the reconstruction does not move: rate alone
            _, by, bz = model.code_latents(y0 * model.gain[level].abs()[:, :, None, None], level, True)
            weighted_distortion = 0
        bpp = (by.flatten(1).sum(1) + bz.flatten(1).sum(1)) / (y0.shape[2] * y0.shape[3] * 256)
        # relative to each level's rate: every level counts alike
        loss = ((bpp + weighted_distortion) * level_weight[level]).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
        opt.step()
        step += 1
        if step % cfg["log_every"] == 0:
            rec = dict(step=step, lr=lr, loss=round(loss.item(), 4), bpp=round(bpp.mean().item(), 4),
                       steps_per_s=round((step - start_step) / (time.time() - t_start), 2))
            if step % cfg["val_every"] == 0:
                rec["val"] = level_rates(model, val, val_crops)
            log_record(log, rec)
        if time.time() - last_ckpt > CHECKPOINT_EVERY_S or step == total:
            save_checkpoint(run_dir, cfg, model, opt, step)
            last_ckpt = time.time()
    finish(run_dir, cfg, log, dict(step=step, val=level_rates(model, val, val_crops)))


if __name__ == "__main__":
    main()
