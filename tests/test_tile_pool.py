"""Lossless tiles coded in worker processes: same bytes and pixels, errors and crashes handled."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import pillow_nic
from pillow_nic import codec, lossless, models, tile_pool

pytestmark = pytest.mark.skipif(models.default_model("lossless") is None, reason="no lossless model released")


@pytest.fixture
def pool():
    with tile_pool.borrowed(2) as workers:
        yield workers
    tile_pool._shutdown()


def test_worker_encodes_and_decodes_like_this_process(pool, photo):
    package = models.default_model("lossless")
    tile = photo[:96, :80]
    assert pool.encode(package, tile) == lossless.encode_tile(package, tile)
    for calibrated in (False, True):
        payload = lossless.encode_tile(package, tile, calibrated=calibrated)
        assert np.array_equal(pool.decode(package, payload, tile.shape, 0, calibrated), tile)


def test_corrupt_tile_raises_nic_error_from_the_worker(pool, photo):
    package = models.default_model("lossless")
    payload = lossless.encode_tile(package, photo[:64, :64])
    with pytest.raises(pillow_nic.NicError, match="tile 3"):
        pool.decode(package, payload[:-4] + b"\x01\x00\x00\x00", (64, 64, 3), 3, True)


def test_dead_worker_is_replaced_and_the_tile_still_decodes(pool, photo):
    package = models.default_model("lossless")
    tile = photo[:48, :48]
    payload = lossless.encode_tile(package, tile)
    for worker in list(pool._idle.queue):
        worker.process.kill()
        worker.process.wait()
    for _ in range(pool.size + 1):  # each dead worker falls back once, then fresh ones serve
        assert np.array_equal(pool.decode(package, payload, tile.shape, 0, True), tile)
    assert all(w.process.poll() is None for w in pool._idle.queue)


def test_images_code_through_a_running_pool(pool, photo, monkeypatch):
    monkeypatch.setattr(codec, "workers", lambda: 2)
    crop = photo[:160, :200]
    with codec._process_pool([(0, 0, 64, 64), (64, 0, 128, 64)]) as processes:
        assert processes is pool
    data = pillow_nic.encode(crop, "RGB", lossless=True, tile_size=64)
    assert np.array_equal(pillow_nic.decode(data).pixels, crop)
    monkeypatch.setenv("NIC_PROCESSES", "0")
    with codec._process_pool([(0, 0, 64, 64), (64, 0, 128, 64)]) as processes:
        assert processes is None
    assert pillow_nic.encode(crop, "RGB", lossless=True, tile_size=64) == data


def test_idle_workers_stop(monkeypatch):
    """Workers hold memory: they end once no image has used them for IDLE_STOP_S."""
    monkeypatch.setattr(tile_pool, "IDLE_STOP_S", 0.2)
    with tile_pool.borrowed(2) as workers:
        processes = [w.process for w in workers._idle.queue]
        time.sleep(0.4)
        assert tile_pool.running()  # in use: kept
    deadline = time.monotonic() + 10
    while tile_pool.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not tile_pool.running()
    assert all(p.poll() is not None for p in processes)


def test_forked_child_does_not_share_the_parents_workers(pool, photo):
    package = models.default_model("lossless")
    tile = photo[:32, :32]
    payload = lossless.encode_tile(package, tile)
    pid = os.fork()
    if pid == 0:  # child: a fresh state, no pool; exit code says so
        os._exit(0 if not tile_pool.running() else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert np.array_equal(pool.decode(package, payload, tile.shape, 0, True), tile)
