"""The NumPy runtime: selection, ONNX parsing without `onnx`, operator coverage, and a
decode with onnxruntime hidden entirely."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from native_fallback import NumpySession, UnsupportedOperator
from native_fallback.onnx_reader import OnnxFormatError, read_model
from pillow_nic import models, runtime

ROOT = Path(__file__).resolve().parents[1]


def graph_files() -> list[Path]:
    return sorted(ROOT.glob("onnx_models/*/*.onnx"))


def test_selection_rules(monkeypatch):
    monkeypatch.delenv("NIC_RUNTIME", raising=False)
    assert runtime.select() == ("onnxruntime" if runtime.onnxruntime_available() else "numpy")
    assert runtime.select("numpy") == "numpy"
    monkeypatch.setenv("NIC_RUNTIME", "numpy")
    assert runtime.select() == "numpy"
    monkeypatch.setenv("NIC_RUNTIME", "tensorflow")
    with pytest.raises(ValueError, match="unknown runtime"):
        runtime.select()


@pytest.mark.skipif(not graph_files(), reason="no released models")
@pytest.mark.parametrize("path", graph_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_graph_matches_onnxruntime(path):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) else 16 for d in inp.shape]
        if inp.name in ("image",):
            shape = [1, 3, 64, 64]
        if inp.name == "weight":  # the refinement's per-pixel weights
            shape = [1, 1, 64, 64]
        if inp.name in ("latents",):
            shape = [1, shape[1], 4, 4]
        if inp.name == "z":
            shape = [1, shape[1], 2, 3]
        feeds[inp.name] = (rng.integers(-30, 30, shape) if inp.name in ("features", "z")
                           else rng.random(shape)).astype(np.float32)
    expected = session.run(None, feeds)
    got = NumpySession(path).run(None, feeds)
    for e, g in zip(expected, got):
        if path.stem == "hyper" or path.stem.startswith(("diag", "edge")):
            assert np.array_equal(e, g)  # integer-exact graphs: identical bits
        else:
            assert np.allclose(e, g, atol=1e-4)


def _tiny_model(op: str) -> bytes:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    node = helper.make_node(op, ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    return helper.make_model(graph).SerializeToString()


def test_unknown_operator_is_refused_at_load_naming_it(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(_tiny_model("Softmax"))
    with pytest.raises(UnsupportedOperator, match="Softmax"):
        NumpySession(path)


def test_known_operator_runs(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(_tiny_model("Floor"))
    (y,) = NumpySession(path).run(None, {"x": np.array([1.5, -1.5], np.float32)})
    assert np.array_equal(y, [1.0, -2.0])


@pytest.mark.parametrize("data", [b"", b"\x08", b"\xff" * 20, b"\x3a\x05abc"])
def test_garbage_is_a_format_error(data):
    with pytest.raises(OnnxFormatError):
        read_model(data)


HIDE_ORT = """
import builtins, sys, json
real_import = builtins.__import__
def fake_import(name, *args, **kwargs):
    if name == "onnxruntime" or name.startswith("onnxruntime."):
        raise ImportError("hidden for the test")
    return real_import(name, *args, **kwargs)
builtins.__import__ = fake_import
import importlib.util
real_find = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name == "onnxruntime" else real_find(name, *a)
import numpy as np, pillow_nic
from pillow_nic import runtime
out = pillow_nic.decode(sys.argv[1])
print(json.dumps(dict(runtime=runtime.select(), shape=list(out.pixels.shape), sum=int(out.pixels.sum()),
                      ort_loaded="onnxruntime" in sys.modules)))
"""


@pytest.mark.skipif(models.default_model("lossless") is None, reason="no lossless model released")
def test_decodes_with_onnxruntime_hidden(tmp_path, photo):
    import pillow_nic

    crop = photo[:64, :80]
    path = tmp_path / "x.nic"
    path.write_bytes(pillow_nic.encode(crop, "RGB", lossless=True))
    env = dict(os.environ)
    env.pop("NIC_RUNTIME", None)
    result = subprocess.run([sys.executable, "-c", HIDE_ORT, str(path)], capture_output=True, text=True, env=env,
                            cwd=ROOT, check=True)
    info = json.loads(result.stdout)
    assert info == dict(runtime="numpy", shape=[64, 80, 3], sum=int(crop.astype(np.int64).sum()),
                        ort_loaded=False)
