"""Export trained networks to ONNX and release them as immutable model packages.

A package is a folder ``onnx_models/<name>-<hash12>/`` holding the ONNX graphs, the
integer probability tables (``tables.npz``) and ``training.json``; it is added to
``onnx_models/manifest.json`` under the SHA-256 of its files.  Nothing here ever
overwrites a released package.

    python onnx_models/training/export.py lossless onnx_models/training/runs/lossless_v1 --name nic-lossless-1
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pillow_nic import interlace, intnet, models, tables  # noqa: E402
from pillow_nic.lossless_model import PLANES, model_key  # noqa: E402

OPSET = 17


def intnet_graph(layers: list[intnet.IntLayer], n_in: int, name: str) -> onnx.ModelProto:
    """ONNX graph of an integer-exact MLP, one Gemm, Clip and Floor per layer.

    The division by 2**shift is folded into the Gemm's weights and bias: scaling by a
    power of two is exact, and every partial sum, a multiple of 2**-shift below
    2**(24-shift), is still exactly representable, so the Gemm computes ``z / 2**shift``
    exactly in any summation order.  Clipping before flooring equals clipping after it
    (the caps are integers), and ONNX Runtime fuses a Gemm with its Clip: 1.7x faster
    than MatMul, Add, Mul, Floor, Clip on this machine."""
    nodes, inits = [], []
    h = "features"
    for i, layer in enumerate(layers):
        scale = 2.0 ** -np.asarray(layer.shift, np.float64)
        inits += [numpy_helper.from_array((layer.weight * scale).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array((layer.bias * scale).astype(np.float32), f"b{i}")]
        nodes.append(helper.make_node("Gemm", [h, f"w{i}", f"b{i}"], [f"z{i}"]))
        h = f"z{i}"
        if layer.clip_max is not None:
            lo, hi = f"lo{i}", f"hi{i}"
            inits += [numpy_helper.from_array(np.array(0, np.float32), lo),
                      numpy_helper.from_array(np.array(layer.clip_max, np.float32), hi)]
            nodes.append(helper.make_node("Clip", [h, lo, hi], [f"c{i}"]))
            h = f"c{i}"
        nodes.append(helper.make_node("Floor", [h], [f"a{i}"]))
        h = f"a{i}"
    nodes.append(helper.make_node("Identity", [h], ["pred"]))
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", n_in])],
        [helper.make_tensor_value_info("pred", TensorProto.FLOAT, ["n", layers[-1].weight.shape[1]])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="nic")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def load_int_layers(path: Path) -> dict[str, list[intnet.IntLayer]]:
    z = np.load(path)
    out: dict[str, list[intnet.IntLayer]] = {}
    for key in sorted({name.split("/")[0] for name in z.files}):
        n = len({name.split("/")[1] for name in z.files if name.startswith(key + "/")})
        layers = []
        for i in range(n):
            pre = f"{key}/{i}/"
            clip = z[pre + "clip_max"] if pre + "clip_max" in z.files else None
            layers.append(intnet.IntLayer(z[pre + "weight"].astype(np.float32), z[pre + "bias"].astype(np.float32),
                                          z[pre + "shift"].astype(np.int64), int(clip) if clip is not None else None))
        out[key] = layers
    return out


def release(kind: str, name: str, files: dict[str, Path], record: dict) -> str:
    """Copy files into a new package folder and register it; returns the hash."""
    digest = models.package_hash(files).hex()
    manifest_path = models.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    if any(e["hash"] == digest for e in manifest["models"]):
        print("already released:", digest)
        return digest
    if any(e["name"] == name for e in manifest["models"]):
        raise SystemExit(f"model name {name} already released with other content: pick a new name")
    folder = models.MODEL_DIR / f"{name}-{digest[:12]}"
    folder.mkdir()
    rel = {}
    for role, src in files.items():
        dst = folder / f"{role}{src.suffix}"
        shutil.copyfile(src, dst)
        rel[role] = str(dst.relative_to(models.MODEL_DIR))
    (folder / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    manifest["models"].append(dict(name=name, kind=kind, hash=digest, files=rel, training=record.get("summary", {})))
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    assert models.package_hash({r: models.MODEL_DIR / p for r, p in rel.items()}).hex() == digest
    print(f"released {name} ({digest[:12]}) in {folder}")
    return digest


def export_lossless(run_dir: Path, name: str) -> None:
    nets = load_int_layers(run_dir / "int_layers.npz")
    final = json.loads((run_dir / "final.json").read_text())
    tmp = Path(tempfile.mkdtemp())
    files = {}
    schedule = final["config"].get("schedule", 1)
    for kind in interlace.SCHEDULES[schedule]:
        for plane in range(PLANES):
            key = model_key(kind, plane)
            layers = nets[key]
            intnet.check_exact(layers, input_bound=510)
            path = tmp / f"{key}.onnx"
            onnx.save(intnet_graph(layers, layers[0].weight.shape[0], key), path)
            files[key] = path
    offsets = 2 ** final["config"].get("mean_bits", 1)
    fam = {f"family{r}": tables.build_family(r, offsets, "logistic").astype(np.int32) for r in (255, 510)}
    if schedule != 1:
        fam["schedule"] = np.array(schedule, np.int64)
    np.savez_compressed(tmp / "tables.npz", **fam)
    files["tables"] = tmp / "tables.npz"
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    record = dict(config=final["config"], final=final, log_tail=log[-5:],
                  summary=dict(steps=final["step"], val_bpp=final["val_bpp_quantised"]))
    release("lossless", name, files, record)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["lossless", "lossy"])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--name", required=True)
    args = ap.parse_args()
    if args.kind == "lossless":
        export_lossless(args.run_dir, args.name)
    else:
        from export_lossy import export_lossy
        export_lossy(args.run_dir, args.name)


if __name__ == "__main__":
    main()
