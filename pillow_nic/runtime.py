"""Choosing and loading the runtime that executes the ONNX graphs.

ONNX Runtime when it is importable, else the NumPy runtime in ``native_fallback``;
``NIC_RUNTIME=numpy|onnxruntime`` or an explicit ``runtime=`` argument forces one.
Both expose ``run(output_names, feeds) -> list of arrays``.
"""

from __future__ import annotations

import importlib.util
import os
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


def load(path: Path, runtime: str):
    """A session for the ONNX file at ``path`` on ``runtime``."""
    if runtime == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # tiles already run in parallel; one thread per call avoids oversubscription
        opts.intra_op_num_threads = int(os.environ.get("NIC_ORT_THREADS", "1"))
        opts.inter_op_num_threads = 1
        opts.enable_cpu_mem_arena = False  # the arena keeps every batch size ever seen: bounded memory instead
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    from native_fallback import NumpySession

    return NumpySession(path)
