"""Decode and encode throughput of nic and the peers on the same images, same run.

    python -m pytest benchmarks/test_throughput.py --benchmark-columns=mean,rounds
    python -m pytest benchmarks --quick       # smoke mode (CI)

Each benchmark's ``extra_info`` holds megapixels per second and bits per pixel;
``benchmarks/summarise.py`` turns a ``--benchmark-json`` file into ratio tables.
Lossy codecs run at a setting near 0.5 bpp on Kodak; nic runs single-threaded
("1 thread") and with all cores ("all cores"), the peers single-threaded; nic also
decodes under its NumPy runtime (native_fallback).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import peers

MID_SETTING = {"nic": 60, "nic-ssim": 60, "jpeg": 35, "jpeg+enhance": 35, "nic-hybrid": 35, "webp": 30, "avif": 50, "jpegxl": 40}
LOSSY = {c.name: c for c in peers.lossy_codecs()}
LOSSLESS = {c.name: c for c in peers.lossless_codecs(include_slow=False)}


def _uses_nic(codec) -> bool:
    """nic itself, or a peer whose decode runs nic's restoration network."""
    return codec.name.startswith("nic") or codec.name.endswith("+enhance")


def _cases():
    for name in LOSSY:
        yield pytest.param(LOSSY[name], MID_SETTING[name], id=name)
    for name in LOSSLESS:
        yield pytest.param(LOSSLESS[name], None, id=name)


@pytest.fixture(params=["1", "all"], ids=["1 thread", "all cores"])
def threads(request, monkeypatch):
    monkeypatch.setenv("NIC_THREADS", request.param if request.param != "all" else str(os.cpu_count() or 1))
    return request.param


@pytest.fixture(params=["onnxruntime", "numpy"])
def runtime(request, monkeypatch):
    monkeypatch.setenv("NIC_RUNTIME", request.param)
    return request.param


def _run(benchmark, fn, quick):
    if quick:
        return benchmark.pedantic(fn, rounds=1, iterations=1)
    return benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("codec, setting", list(_cases()))
def test_decode(benchmark, codec, setting, images, threads, runtime, quick):
    if not _uses_nic(codec) and (threads == "all" or runtime == "numpy"):
        pytest.skip("peers are measured single-threaded, once")
    coded = [codec.encode(rgb, setting) for _, rgb in images]
    pixels = sum(rgb.shape[0] * rgb.shape[1] for _, rgb in images)
    out = _run(benchmark, lambda: [codec.decode(d) for d in coded], quick)
    assert all(o.shape == rgb.shape for o, (_, rgb) in zip(out, images))
    benchmark.extra_info.update(codec=codec.name, setting=setting, threads=threads, runtime=runtime,
                                megapixels=pixels / 1e6, bpp=8 * sum(map(len, coded)) / pixels)


@pytest.mark.parametrize("codec, setting", list(_cases()))
def test_encode(benchmark, codec, setting, images, threads, quick):
    if threads == "all" and not _uses_nic(codec):
        pytest.skip("peers are measured single-threaded")
    pixels = sum(rgb.shape[0] * rgb.shape[1] for _, rgb in images)
    coded = _run(benchmark, lambda: [codec.encode(rgb, setting) for _, rgb in images], quick)
    if codec.lossless:
        assert all(np.array_equal(codec.decode(d), rgb) for d, (_, rgb) in zip(coded, images))
    benchmark.extra_info.update(codec=codec.name, setting=setting, threads=threads, megapixels=pixels / 1e6,
                                bpp=8 * sum(map(len, coded)) / pixels)


@pytest.mark.parametrize("codec", [c for name, c in LOSSLESS.items() if name.startswith("nic")],
                         ids=lambda c: c.name)
def test_decode_worker_processes(benchmark, codec, images, quick, monkeypatch):
    """nic lossless on all cores with its tile worker processes already running, as in a
    long-lived process (the photo store, a server); a one-off decode starts them only for
    images of 1 MP and more (``pillow_nic.tile_pool``)."""
    from pillow_nic import tile_pool

    cores = os.cpu_count() or 1
    monkeypatch.setenv("NIC_THREADS", str(cores))
    monkeypatch.setenv("NIC_RUNTIME", "onnxruntime")
    coded = [codec.encode(rgb, None) for _, rgb in images]
    pixels = sum(rgb.shape[0] * rgb.shape[1] for _, rgb in images)
    with tile_pool.borrowed(cores):  # started before, kept running through the rounds
        out = _run(benchmark, lambda: [codec.decode(d) for d in coded], quick)
    assert all(np.array_equal(o, rgb) for o, (_, rgb) in zip(out, images))
    benchmark.extra_info.update(codec=codec.name, setting=None, threads="all, worker processes",
                                runtime="onnxruntime", megapixels=pixels / 1e6, bpp=8 * sum(map(len, coded)) / pixels)
