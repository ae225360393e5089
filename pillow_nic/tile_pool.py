"""Coding learned-lossless tiles in worker processes.

The lossless coder spends about three quarters of its time in NumPy calls on
small arrays and in the rANS coder, all holding Python's GIL, so decoding tiles
on two threads was only 1.16x faster than on one.  Worker processes (the same
``lossless.encode_tile`` / ``decode_tile``, in ``python -m pillow_nic.tile_pool``)
scale with the cores instead.
They are started on first use, kept for later images and stopped after a minute
without work or at exit.
Workers are plain subprocesses fed over pipes, not ``multiprocessing``, whose
spawn and forkserver methods re-import the calling program's ``__main__``: a
Pillow plugin runs inside arbitrary scripts.

``NIC_PROCESSES=0`` turns the workers off (coding then uses threads).
"""

from __future__ import annotations

import atexit
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from .container import NicError

MIN_PIXELS = 1 << 20  # a cold start (about 0.25 s a worker) pays off from about 1 MP of lossless tiles
_LENGTH = struct.Struct("<Q")


def enabled() -> bool:
    return os.environ.get("NIC_PROCESSES", "1") != "0"


def _send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def _receive(stream):
    """The next message, or None at end of stream (the other side is gone)."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    size = _LENGTH.unpack(head)[0]
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)  # only ever from our own parent or child process


class _Worker:
    def __init__(self):
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen([sys.executable, "-m", "pillow_nic.tile_pool"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env)

    def call(self, request: tuple):
        try:
            _send(self.process.stdin, request)
        except (BrokenPipeError, OSError):
            reply = None
        else:
            reply = _receive(self.process.stdout)
        if reply is None:
            raise ChildProcessError("tile worker exited")
        status, value = reply
        if status == "error":
            raise NicError(value)
        return value

    def close(self) -> None:
        try:
            self.process.stdin.close()
            self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


class TilePool:
    """``size`` workers; ``encode`` and ``decode`` may be called from several threads at once."""

    def __init__(self, size: int):
        self.size = size
        self._idle: queue.Queue[_Worker] = queue.Queue()
        for _ in range(size):
            self._idle.put(_Worker())

    def encode(self, package, tile: np.ndarray, separate: bool = False) -> bytes:
        """``lossless.encode_tile(package, tile, separate=separate)`` (coder 5 or 6) in a worker process."""
        return self._call(package, "encode_tile", np.ascontiguousarray(tile), True, separate)

    def decode(self, package, data: bytes, shape: tuple[int, ...], index: int, calibrated: bool,
               separate: bool = False) -> np.ndarray:
        """``lossless.decode_tile`` in a worker process."""
        return self._call(package, "decode_tile", bytes(data), shape, index, calibrated, separate)

    def _call(self, package, job: str, *args):
        worker = self._idle.get()
        try:
            return worker.call((job, package.hash.hex(), package.runtime, args))
        except ChildProcessError:
            worker.close()
            worker = _Worker()  # replaces the dead one; this tile is coded here
            return _job(job)(package, *args)
        finally:
            self._idle.put(worker)

    def close(self) -> None:
        for _ in range(self.size):
            self._idle.get().close()


IDLE_STOP_S = 60.0  # workers hold ~175 MB each: stop them after a minute without work

_pool: TilePool | None = None
_users = 0  # images being coded with the pool now
_idle_timer: threading.Timer | None = None
_lock = threading.Lock()


def running() -> bool:
    return _pool is not None


@contextmanager
def borrowed(size: int) -> Iterator[TilePool]:
    """The shared pool for the coding of one image: started on demand with ``size``
    workers (restarted with that size when nothing uses it), stopped IDLE_STOP_S after
    its last use."""
    global _pool, _users, _idle_timer
    with _lock:
        if _idle_timer is not None:
            _idle_timer.cancel()
            _idle_timer = None
        if _pool is None or (_pool.size != size and _users == 0):
            if _pool is not None:
                _pool.close()
            _pool = TilePool(size)
        _users += 1
        current = _pool
    try:
        yield current
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                _idle_timer = threading.Timer(IDLE_STOP_S, _stop_if_idle)
                _idle_timer.daemon = True
                _idle_timer.start()


def _stop_if_idle() -> None:
    global _pool
    with _lock:
        if _users == 0 and _pool is not None:
            _pool.close()
            _pool = None


@atexit.register
def _shutdown() -> None:
    global _pool, _idle_timer
    with _lock:
        if _idle_timer is not None:
            _idle_timer.cancel()
            _idle_timer = None
        if _pool is not None:
            _pool.close()
            _pool = None


def _forget_after_fork() -> None:
    """A forked child must not talk to its parent's workers over the shared pipes."""
    global _pool, _users, _idle_timer, _lock
    _pool, _users, _idle_timer, _lock = None, 0, None, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def _job(name: str):
    """The lossless coder function a request names (nothing else can be called)."""
    from . import lossless

    return {"encode_tile": lossless.encode_tile, "decode_tile": lossless.decode_tile}[name]


def _serve() -> None:
    """Worker loop: answer each request until the parent closes the pipe."""
    from . import models

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes our pipe
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write into the reply stream
    while (request := _receive(stdin)) is not None:
        job, model_hash, runtime, args = request
        try:
            reply = ("ok", _job(job)(models.package_by_hash(model_hash, runtime), *args))
        except NicError as exc:
            reply = ("error", str(exc))
        _send(stdout, reply)


if __name__ == "__main__":
    _serve()
