"""Choosing and loading the runtime that executes the ONNX graphs.

ONNX Runtime when it is importable, else the NumPy runtime in ``native_fallback``;
``NIC_RUNTIME=numpy|onnxruntime`` or an explicit ``runtime=`` argument forces one.
Both expose ``run(output_names, feeds) -> list of arrays``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

RUNTIMES = ("onnxruntime", "numpy")


def onnxruntime_available() -> bool:
    try:
        return importlib.util.find_spec("onnxruntime") is not None
    except (ImportError, ValueError):
        return False


def select(requested: str | None = None) -> str:
    """The runtime to use: the argument, else $NIC_RUNTIME, else the best available."""
    choice = requested or os.environ.get("NIC_RUNTIME") or ""
    if choice:
        if choice not in RUNTIMES:
            raise ValueError(f"unknown runtime {choice!r}; choose one of {', '.join(RUNTIMES)}")
        if choice == "onnxruntime" and not onnxruntime_available():
            raise ValueError("runtime 'onnxruntime' requested but onnxruntime is not installed")
        return choice
    return "onnxruntime" if onnxruntime_available() else "numpy"


_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20


@lru_cache(maxsize=1)
def bound_heap() -> bool:
    """Serve allocations of 1 MiB and more by mmap (glibc), so freed model buffers go back
    to the system.  glibc's default threshold adapts upwards after large frees and then
    keeps them on the heap: RSS grew with image size (a 4 MP lossy encode peaked at
    660 MB; 180 MB with this).  Once per process; a no-op where mallopt is absent."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


def load(path: Path, runtime: str, keep_buffers: bool = False):
    """A session for the ONNX file at ``path`` on ``runtime``.

    ``keep_buffers``: the caller bounds the graph's input shapes, so ONNX Runtime's arena
    may keep buffers between calls (bounded memory, and no page faults on fresh buffers:
    the lossy synthesis runs 40 % faster)."""
    bound_heap()
    if runtime == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # tiles already run in parallel; one thread per call avoids oversubscription
        opts.intra_op_num_threads = int(os.environ.get("NIC_ORT_THREADS", "1"))
        opts.inter_op_num_threads = 1
        # otherwise no arena: it keeps every batch size ever seen; bounded memory instead
        opts.enable_cpu_mem_arena = keep_buffers
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    from native_fallback import NumpySession

    return NumpySession(path)
