"""Size and cost of every released model package: files, parameters, multiply-adds per pixel.

    python benchmarks/model_report.py

Multiply-adds are counted from the ONNX graphs (Conv, ConvTranspose, MatMul, Gemm) with shapes
inferred for a concrete input, then divided by the image pixels that input stands for.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pillow_nic import models  # noqa: E402

# role -> (input shapes for one 256x256 image, pixels they stand for); dimensions the graph
# fixes (channels: 128 latents in nic-lossy-1..7, 192 in nic-lossy-8) are taken from it
PROBES = {
    "decoder": ({"latents": [1, 128, 16, 16], "inv_gain": [1, 128, 1, 1]}, 256 * 256),
    "encoder": ({"image": [1, 3, 256, 256], "gain": [1, 128, 1, 1]}, 256 * 256),
    "hyper": ({"z": [1, 64, 4, 4]}, 256 * 256),
    "restore": ({"image": [1, 3, 256, 256], "quality": [1, 1, 1, 1]}, 256 * 256),
    "refine": ({"latents": [1, 128, 16, 16], "inv_gain": [1, 128, 1, 1], "image": [1, 3, 256, 256],
                "weight": [1, 1, 256, 256]}, 256 * 256),
}


def _dims(value_info) -> list[int]:
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


def macs(model: onnx.ModelProto, inputs: dict[str, list[int]]) -> int:
    """Multiply-adds of one run with the given input shapes."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for inp in model.graph.input:
        if inp.name in inputs:
            for d, v in zip(inp.type.tensor_type.shape.dim, inputs[inp.name]):
                if d.dim_value:  # fixed by the graph (channel counts): the probe's is a placeholder
                    continue
                d.ClearField("dim_param")
                d.dim_value = v
    inferred = shape_inference.infer_shapes(model)
    shapes = {vi.name: _dims(vi) for vi in list(inferred.graph.value_info) + list(inferred.graph.input)
              + list(inferred.graph.output)}
    weights = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    weights.update({k: v for k, v in shapes.items() if k not in weights})  # computed weights (GDN's |gamma|)
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            kernel = weights[node.input[1]]
            total += int(np.prod(shapes[node.output[0]])) * int(np.prod(kernel[1:]))
        elif node.op_type == "ConvTranspose":
            kernel = weights[node.input[1]]
            total += int(np.prod(shapes[node.input[0]])) * int(np.prod(kernel[1:]))
        elif node.op_type in ("MatMul", "Gemm"):
            a, b = shapes[node.input[0]], weights[node.input[1]]
            trans_b = any(attr.name == "transB" and attr.i for attr in node.attribute)
            total += int(np.prod(a)) * int(b[0] if trans_b else b[-1])
    return total


def main() -> int:
    print("| model | kind | files (bytes) | parameters | graph | MAC/pixel |")
    print("|---|---|---|---|---|---|")
    for entry in models.registered():
        files = {role: models.MODEL_DIR / rel for role, rel in entry["files"].items()}
        size = sum(p.stat().st_size for p in files.values())
        for role, path in files.items():
            if path.suffix != ".onnx":
                continue
            model = onnx.load(path)
            params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
            if role in PROBES:
                feeds, pixels = PROBES[role]
                cost = f"{macs(model, feeds) / pixels:,.0f}"
            else:  # lossless predictor: one row of features per pixel and plane
                cost = f"{macs(model, {'features': [1, model.graph.input[0].type.tensor_type.shape.dim[1].dim_value]}):,} per plane"
            print(f"| {entry['name']} | {entry['kind']} | {size:,} | {params:,} | {role} | {cost} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
