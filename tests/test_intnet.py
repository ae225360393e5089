"""The integer-exact MLP contract: the exported ONNX graph (weights pre-scaled by
2**-shift, Gemm + Clip + Floor) gives exactly the reference arithmetic of
``pillow_nic.intnet`` on ONNX Runtime and on the NumPy runtime, even for inputs that
drive every sum to the edge of the exact range."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from native_fallback import NumpySession
from pillow_nic import intnet

ROOT = Path(__file__).resolve().parents[1]
INPUT_BOUND = 510


def random_layers(rng: np.random.Generator, sizes: list[int]) -> list[intnet.IntLayer]:
    """Integer layers whose worst-case sums come close to 2**24 (per-column shifts)."""
    layers = []
    bound = INPUT_BOUND
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        weight = rng.integers(-127, 128, (a, b)).astype(np.float32)
        # scale the columns so that the worst case reaches ~90 % of the exact limit
        worst = np.abs(weight).sum(axis=0) * bound
        weight = np.round(weight * np.minimum(1.0, 0.9 * intnet.EXACT_LIMIT / worst / 2)).astype(np.float32)
        bias = rng.integers(-1000, 1000, b).astype(np.float32)
        shift = rng.integers(0, 12, b)
        layers.append(intnet.IntLayer(weight, bias, shift, None if last else 2047))
        bound = 2047
    intnet.check_exact(layers, INPUT_BOUND)
    return layers


def test_exported_graph_is_exact_on_both_runtimes(tmp_path):
    pytest.importorskip("onnx")
    sys.path.insert(0, str(ROOT / "onnx_models" / "training"))
    from export import intnet_graph

    import onnx

    rng = np.random.default_rng(7)
    layers = random_layers(rng, [27, 32, 32, 2])
    path = tmp_path / "net.onnx"
    onnx.save(intnet_graph(layers, 27, "net"), path)
    x = np.concatenate([rng.integers(-INPUT_BOUND, INPUT_BOUND + 1, (4000, 27)),
                        np.full((1, 27), INPUT_BOUND), np.full((1, 27), -INPUT_BOUND),
                        np.sign(layers[0].weight.T) * INPUT_BOUND]).astype(np.float32)
    expected = intnet.run_numpy(layers, x)
    assert np.array_equal(NumpySession(path).run(["pred"], {"features": x})[0], expected)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert np.array_equal(session.run(["pred"], {"features": x})[0], expected)


needs_kernel = pytest.mark.skipif(not intnet.compiled_available(),
                                  reason="the compiled kernel (pillow_nic._intmlp) is not built here")


def test_kernel_is_built_where_required():
    """CI sets NIC_REQUIRE_KERNEL=1, so the kernel tests below cannot quietly skip there."""
    if os.environ.get("NIC_REQUIRE_KERNEL") == "1":
        assert intnet.compiled_available()


def _edge_inputs(rng, layers, n):
    fan_in = layers[0].weight.shape[0]
    return np.concatenate([rng.integers(-INPUT_BOUND, INPUT_BOUND + 1, (n, fan_in)),
                           np.full((1, fan_in), INPUT_BOUND), np.full((1, fan_in), -INPUT_BOUND),
                           np.sign(layers[0].weight.T) * INPUT_BOUND]).astype(np.float32)


@needs_kernel
@pytest.mark.parametrize("fan_in", [17, 22])
@pytest.mark.parametrize("rows", [1, 15, 17, 3000])
def test_kernel_reads_the_exported_graph_and_computes_the_reference(tmp_path, fan_in, rows):
    """Unfolding the exported graph and running the compiled kernel (vectorised and
    portable paths) gives exactly the reference arithmetic, at the edges of the exact range
    and for row counts that are not multiples of the vector width."""
    pytest.importorskip("onnx")
    sys.path.insert(0, str(ROOT / "onnx_models" / "training"))
    from export import intnet_graph

    import onnx

    rng = np.random.default_rng(fan_in * rows)
    layers = random_layers(rng, [fan_in, 48, 48, 2])
    path = tmp_path / "net.onnx"
    onnx.save(intnet_graph(layers, fan_in, "net"), path)
    x = _edge_inputs(rng, layers, rows)
    expected = intnet.run_numpy(layers, x).astype(np.int32).T
    network = intnet.CompiledNetwork(intnet.layers_from_graph(path))
    assert np.array_equal(network.run(x.T), expected)
    assert np.array_equal(network.run(x.T, portable=True), expected)


def test_layers_from_graph_refuses_other_graphs():
    from pillow_nic import models

    package = models.default_model("lossy")
    if package is None:
        pytest.skip("no lossy model released")
    with pytest.raises(ValueError):
        intnet.layers_from_graph(package.files["decoder"])


def test_unfold_recovers_integer_layers():
    weight = np.array([[3, -5], [127, 2]], np.float32)
    bias = np.array([7, -1], np.float32)
    shift = np.array([4, 0])
    w, b, s = intnet.unfold(weight * 2.0 ** -shift, bias * 2.0 ** -shift)
    assert np.array_equal(w * 2.0 ** -s, weight * 2.0 ** -shift) and np.array_equal(b * 2.0 ** -s, bias * 2.0 ** -shift)
    assert list(s) == [4, 0]
    with pytest.raises(ValueError):
        intnet.unfold(np.array([[2.0 ** -40]], np.float32), np.array([0], np.float32))
