"""The model registry: released model packages, found by content hash.

``onnx_models/manifest.json`` lists every released package (never removed, never
changed).  A package is a set of files (ONNX graphs and integer probability
tables); its id is the SHA-256 over its files, so a `.nic` file names exactly
the bytes that coded it and a retrained model can never be mistaken for an old one.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from . import runtime as rt
from .container import HYBRID, LOSSLESS, LOSSY, Layer, NicError

#: coding -> the prefix of the package kinds it may name (a hybrid layer names a restoration
#: package; which one fits its base codec is checked by the hybrid coder)
KIND_FOR_CODING = {LOSSLESS: "lossless", LOSSY: "lossy", HYBRID: "restore-"}

MODEL_DIR = Path(__file__).resolve().parent.parent / "onnx_models"
MANIFEST = MODEL_DIR / "manifest.json"


def package_hash(files: dict[str, Path]) -> bytes:
    """SHA-256 over (role, SHA-256 of file) pairs, roles sorted."""
    h = hashlib.sha256()
    for role in sorted(files):
        h.update(role.encode() + b"\0" + hashlib.sha256(Path(files[role]).read_bytes()).digest())
    return h.digest()


@dataclass(eq=False)  # identity semantics: packages are cached singletons
class ModelPackage:
    name: str
    kind: str
    hash: bytes
    files: dict[str, Path]
    info: dict[str, Any]
    runtime: str
    _graphs: dict[tuple[str, bool], Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def graph(self, role: str, keep_buffers: bool = False):
        """A session for one ONNX graph of the package (cached, thread-safe to run);
        ``keep_buffers`` as in ``runtime.load`` (a role may have a session of each kind)."""
        with self._lock:
            key = (role, keep_buffers)
            if key not in self._graphs:
                self._graphs[key] = rt.load(self.files[role], self.runtime, keep_buffers)
            return self._graphs[key]

    @property
    def tables(self) -> dict[str, np.ndarray]:
        return _load_tables(self.files["tables"])


@lru_cache(maxsize=None)
def _load_tables(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@lru_cache(maxsize=1)
def _manifest() -> list[dict]:
    if not MANIFEST.exists():
        return []
    return json.loads(MANIFEST.read_text())["models"]


@lru_cache(maxsize=None)
def package_by_hash(hash_hex: str, runtime_name: str) -> ModelPackage:
    """The registered package with this content hash (KeyError if none), files verified."""
    for entry in _manifest():
        if entry["hash"] == hash_hex:
            files = {role: MODEL_DIR / rel for role, rel in entry["files"].items()}
            missing = [str(p) for p in files.values() if not p.exists()]
            if missing:
                raise NicError(f"model {entry['name']} is registered but its files are missing: {missing}")
            if package_hash(files).hex() != hash_hex:
                raise NicError(f"model {entry['name']}: files do not match their registered hash")
            return ModelPackage(entry["name"], entry["kind"], bytes.fromhex(hash_hex), files, entry, runtime_name)
    raise KeyError(hash_hex)


def model_for(layer: Layer, runtime: str | None = None) -> ModelPackage:
    """The package a layer was coded with, or NicError naming the unknown or unfitting model."""
    try:
        package = package_by_hash(layer.model_hash.hex(), rt.select(runtime))
    except KeyError:
        raise NicError(f"unknown model {layer.model_name!r} (sha256 {layer.model_hash.hex()[:16]}...): "
                       "this installation of nic cannot decode it; a newer release may") from None
    if not package.kind.startswith(KIND_FOR_CODING.get(layer.coding, "?")):
        raise NicError(f"model {package.name} is a {package.kind} package and cannot decode this layer's coding")
    return package


def default_model(kind: str, runtime: str | None = None) -> ModelPackage | None:
    """The newest released package of a kind ("lossless", "lossy", "lossy-ssim", ...), if any."""
    entries = [e for e in _manifest() if e["kind"] == kind and e.get("default", True)]
    if not entries:
        return None
    return package_by_hash(entries[-1]["hash"], rt.select(runtime))


def registered() -> list[dict]:
    """Manifest entries of every released package."""
    return list(_manifest())
