"""Export a restoration training run as a model package (one ONNX graph, ``restore``).

    python onnx_models/training/export_restore.py onnx_models/training/runs/restore_jpeg_v1 \
        --name nic-restore-jpeg-1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from export import release  # noqa: E402
from train_restore import Restorer  # noqa: E402


def export_restore(run_dir: Path, name: str) -> None:
    state = torch.load(run_dir / "checkpoint.pt")
    cfg = state["config"]
    reach = 3 + 4 * cfg["depth"]  # within a 4-pixel cell, then one cell per 3x3 layer
    if reach >= 32:
        raise SystemExit(f"the network reaches {reach} pixels; FORMAT.md allows restoration packages < 32")
    model = Restorer(cfg["channels"], cfg["depth"])
    model.load_state_dict(state["model"])
    model.eval()
    tmp = Path(tempfile.mkdtemp())
    torch.onnx.export(model, (torch.rand(1, 3, 64, 96), torch.full((1, 1, 1, 1), 0.1)), tmp / "restore.onnx",
                      input_names=["image", "quality"], output_names=["restored"],
                      dynamic_axes={"image": {2: "h", 3: "w"}}, opset_version=17, dynamo=False)
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    val = [r["val"] for r in log if "val" in r][-1]
    macs = (3 * 16 * cfg["channels"] + cfg["depth"] * 9 * cfg["channels"] ** 2 + 16 * cfg["channels"] * 3) / 16
    record = dict(config=cfg, step=state["step"], log_tail=log[-3:],
                  summary=dict(codec=cfg["codec"], steps=state["step"], val=val, macs_per_pixel=round(macs)))
    release(f"restore-{cfg['codec'].lower()}", name, {"restore": tmp / "restore.onnx"}, record)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--name", required=True)
    args = ap.parse_args()
    export_restore(args.run_dir, args.name)


if __name__ == "__main__":
    main()
