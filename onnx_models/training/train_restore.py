"""Train a restoration network for a standard codec's decoded output (issue: hybrid profile,
`nic enhance`).  The codec is in the loop as data generation: every step compresses fresh
crops with the real encoder (Pillow) at random qualities and learns to undo its artefacts.

    python onnx_models/training/train_restore.py --config onnx_models/training/restore_jpeg_v1.json

Network: a stride-4 convolution (the 4x4 cells align with JPEG's 8x8 blocks), a quality
bias, 3x3 convolutions at quarter resolution, and a stride-4 transposed convolution back
to a residual added to the decoded image.  Data: the lossy run's pre-extracted crops of
../shared/data/train and the extra photos (never Kodak); the same held-out validation crops.
"""

from __future__ import annotations

import io
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (CHECKPOINT_EVERY_S, finish, images_to_tensor, learning_rate, log_record,  # noqa: E402
                 resume, save_checkpoint, start_run)
from train_lossy import load_crops  # noqa: E402


class Restorer(nn.Module):
    def __init__(self, channels: int, depth: int):
        super().__init__()
        self.head = nn.Conv2d(3, channels, 4, 4)
        self.quality_bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.body = nn.ModuleList(nn.Conv2d(channels, channels, 3, 1, 1) for _ in range(depth))
        self.tail = nn.ConvTranspose2d(channels, 3, 4, 4)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, image: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        """image (N,3,H,W) in [0,1], H and W multiples of 4; quality (N,1,1,1) = q/100."""
        h = F.relu(self.head(image) + quality * self.quality_bias)
        for conv in self.body:
            h = F.relu(conv(h))
        return torch.clamp(image + self.tail(h), 0, 1)


def grow_from(model: Restorer, state: dict) -> None:
    """Start from a shallower trained restorer: its layers, then identity convolutions
    (exact after a ReLU), so training resumes from the same function with more depth."""
    depth = len({k.split(".")[1] for k in state if k.startswith("body.")})
    own = model.state_dict()
    for key, value in state.items():
        if not key.startswith("body.") or int(key.split(".")[1]) < depth:
            own[key] = value
    with torch.no_grad():
        for conv in model.body[depth:]:
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[:, :, 1, 1] = torch.eye(conv.weight.shape[0])
    model.load_state_dict(own)
    for conv in model.body[depth:]:  # load_state_dict kept the identity kernels of the new layers
        assert conv.weight[:, :, 1, 1].diagonal().eq(1).all()


def degrade(crop: np.ndarray, codec: str, quality: int) -> np.ndarray:
    """The crop after a real round trip through ``codec`` at ``quality``."""
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, codec, quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def sample_quality(rng: np.random.Generator, low: int, high: int) -> int:
    """Log-uniform in [low, high]: low qualities, where artefacts are worst, get more steps."""
    return int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))


def main() -> None:
    cfg, run_dir, rng, log, _ = start_run(__doc__.splitlines()[0])
    crops_file = ROOT / cfg["crops_from"]
    # the lossy run's crops (extracted with seed 1): the same held-out validation crops
    crops = np.load(crops_file) if crops_file.exists() else \
        load_crops(cfg["data"], cfg["crops"], 128, np.random.default_rng(1))
    n_val = cfg["val_crops"]
    val, train = crops[:n_val], crops[n_val:]
    codec, (q_low, q_high) = cfg["codec"], cfg["quality_range"]
    val_q = cfg["val_quality"]
    val_in = np.stack([degrade(c, codec, val_q) for c in val])
    print(f"{len(train)} train / {len(val)} val crops", flush=True)

    model = Restorer(cfg["channels"], cfg["depth"])
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    step, rng = resume(run_dir, cfg, model, opt, rng, grow_from)

    def evaluate() -> dict:
        model.eval()
        with torch.no_grad():
            x, y = images_to_tensor(val_in), images_to_tensor(val)
            out = model(x, torch.full((len(x), 1, 1, 1), val_q / 100))
            base = F.mse_loss(x, y).item()
            mse = F.mse_loss(torch.round(out * 255) / 255, y).item()
        model.train()
        return dict(quality=val_q, psnr_codec=round(10 * math.log10(1 / base), 3),
                    psnr_restored=round(10 * math.log10(1 / mse), 3))

    t_start, last_ckpt, start_step = time.time(), time.time(), step
    p = cfg["patch"]
    while step < cfg["steps"]:
        lr = learning_rate(cfg, step)
        for g in opt.param_groups:
            g["lr"] = lr
        clean, dirty, qs = [], [], []
        for i in rng.integers(0, len(train), cfg["batch"]):
            y0, x0 = 8 * rng.integers(0, (128 - p) // 8 + 1, 2)  # block-aligned, as in a real file
            c = train[i, y0:y0 + p, x0:x0 + p]
            if rng.random() < 0.5:
                c = c[:, ::-1]
            q = sample_quality(rng, q_low, q_high)
            clean.append(c)
            dirty.append(degrade(np.ascontiguousarray(c), codec, q))
            qs.append(q / 100)
        x, y = images_to_tensor(np.stack(dirty)), images_to_tensor(np.stack(clean))
        out = model(x, torch.tensor(qs, dtype=torch.float32)[:, None, None, None])
        loss = F.mse_loss(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % cfg["log_every"] == 0:
            rec = dict(step=step, lr=lr, loss=round(loss.item() * 1e4, 4),
                       steps_per_s=round((step - start_step) / (time.time() - t_start), 2))
            if step % cfg["val_every"] == 0:
                rec["val"] = evaluate()
            log_record(log, rec)
        if time.time() - last_ckpt > CHECKPOINT_EVERY_S or step == cfg["steps"]:
            save_checkpoint(run_dir, cfg, model, opt, step)
            last_ckpt = time.time()
    finish(run_dir, cfg, log, dict(step=step, val=evaluate()))


if __name__ == "__main__":
    main()
