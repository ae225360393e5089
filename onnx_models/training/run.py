"""What every training script shares: config, run folder, seeding, log, schedule, data files."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]


def start_run(description: str) -> tuple[dict, Path, np.random.Generator, object]:
    """Parse ``--config``/``--run-dir``, seed everything, open the run's append-only log."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--config", required=True)
    ap.add_argument("--run-dir", default=None)
    args = ap.parse_args()
    cfg = json.loads(Path(args.config).read_text())
    torch.set_num_threads(cfg.get("threads", 1))
    run_dir = Path(args.run_dir or ROOT / "onnx_models/training/runs" / cfg["name"])
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg["seed"])
    return cfg, run_dir, np.random.default_rng(cfg["seed"]), open(run_dir / "log.jsonl", "a")


def learning_rate(cfg: dict, step: int) -> float:
    """Constant, then linear decay from ``decay_from`` of the run to 1 % at the end."""
    frac = step / cfg["steps"]
    if frac < cfg["decay_from"]:
        return cfg["lr"]
    return cfg["lr"] * max(0.01, (1 - frac) / (1 - cfg["decay_from"]))


def list_images(dirs: list[str]) -> list[Path]:
    """PNG files of the configured data folders (never Kodak), sorted."""
    files = []
    for d in dirs:
        folder = Path(os.path.expanduser(d))
        if "kodak" in folder.parts:
            raise SystemExit("refusing to train on Kodak: it is for evaluation only")
        files += sorted(folder.glob("*.png"))
    return files
