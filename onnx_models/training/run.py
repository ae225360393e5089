"""What every training script shares: config, run folder, seeding, log, schedule, data files."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
#: the training photos as PNG (never Kodak): the default data, and the photos that
#: evaluations on training data crop from, whatever data a checkpoint was trained on
TRAINING_PHOTOS = ["../shared/data/train", "~/.cache/nic-train-extra"]


def start_run(description: str, device_options: bool = False
              ) -> tuple[dict, Path, np.random.Generator, object, argparse.Namespace]:
    """Parse the command line, seed everything, open the run's append-only log.  With
    ``device_options`` (scripts that support them) the command line also says where and
    how long this invocation runs (``--device``; ``--minutes``: checkpoint and stop, to
    resume later), which is not part of what is trained."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--config", required=True)
    ap.add_argument("--run-dir", default=None)
    if device_options:
        ap.add_argument("--device", default="cpu", help="torch device, e.g. cuda on an accelerator machine")
        ap.add_argument("--minutes", type=float, default=None, help="checkpoint and stop after this long")
    args = ap.parse_args()
    cfg = json.loads(Path(args.config).read_text())
    torch.set_num_threads(cfg.get("threads", 1))
    run_dir = Path(args.run_dir or ROOT / "onnx_models/training/runs" / cfg["name"])
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg["seed"])
    return cfg, run_dir, np.random.default_rng(cfg["seed"]), open(run_dir / "log.jsonl", "a"), args


CHECKPOINT_EVERY_S = 180


def resume(run_dir: Path, cfg: dict, model: torch.nn.Module, opt: torch.optim.Optimizer,
           rng: np.random.Generator, warm_start) -> tuple[int, np.random.Generator]:
    """(step, rng) to continue with: from the run's own checkpoint when it has one, else
    step 0 after ``warm_start(model, weights)`` from the model-only checkpoint named by
    ``init_from`` in the config, if any."""
    ckpt = run_dir / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu")  # the optimizer moves its state to the model's device
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        print(f"resumed at step {step}", flush=True)
        return step, np.random.default_rng(cfg["seed"] + step)
    if cfg.get("init_from"):
        warm_start(model, torch.load(ROOT / cfg["init_from"], map_location="cpu")["model"])
        print(f"initialised from {cfg['init_from']}", flush=True)
    return 0, rng


def save_checkpoint(run_dir: Path, cfg: dict, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    step: int) -> None:
    torch.save(dict(model=model.state_dict(), opt=opt.state_dict(), step=step, config=cfg),
               run_dir / "checkpoint.pt")


def log_record(log, rec: dict) -> None:
    """One JSON line to stdout and to the run's log."""
    print(json.dumps(rec), flush=True)
    log.write(json.dumps(rec) + "\n")
    log.flush()


def finish(run_dir: Path, cfg: dict, log, final: dict) -> None:
    """The final record: appended to the log and written, with the config, to final.json."""
    log.write(json.dumps(final) + "\n")
    (run_dir / "final.json").write_text(json.dumps(dict(config=cfg, **final), indent=1))


def learning_rate(cfg: dict, step: int) -> float:
    """Constant, then linear decay from ``decay_from`` of the run to 1 % at the end."""
    frac = step / cfg["steps"]
    if frac < cfg["decay_from"]:
        return cfg["lr"]
    return cfg["lr"] * max(0.01, (1 - frac) / (1 - cfg["decay_from"]))


def images_to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 images (an array, or a tensor on any device) as an (N, 3, H, W)
    float tensor in [0, 1] on the same device."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    return images.permute(0, 3, 1, 2).float() / 255


def list_images(dirs: list[str]) -> list[Path]:
    """PNG (and packed JPEG, pack_photos.py) files of the configured data folders (never
    Kodak), sorted.  Relative folders are relative to the repository root, whatever the
    working directory; a missing folder is an error, not an empty list."""
    files = []
    for d in dirs:
        folder = ROOT / Path(os.path.expanduser(d))  # an absolute path stays itself
        if "kodak" in folder.parts:
            raise SystemExit("refusing to train on Kodak: it is for evaluation only")
        if not folder.is_dir():
            raise SystemExit(f"data folder {folder} not found")
        files += sorted([*folder.glob("*.png"), *folder.glob("*.jpg")])
    return files
