"""NumPy-only runtime for nic's ONNX models.

``NumpySession(path).run(output_names, feeds)`` mirrors ONNX Runtime's session API
for the operators nic's models use.  An operator outside that set is refused
when the model is loaded, naming it, never half-way through a decode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import ops
from .onnx_reader import OnnxFormatError, read_model

__all__ = ["NumpySession", "OnnxFormatError", "UnsupportedOperator"]


class UnsupportedOperator(ValueError):
    """A model uses an ONNX operator the NumPy runtime does not implement."""


class NumpySession:
    def __init__(self, path: str | Path):
        self.graph = read_model(Path(path).read_bytes())
        missing = sorted({n.op_type for n in self.graph.nodes if n.op_type not in ops.OPS})
        if missing:
            raise UnsupportedOperator(f"{Path(path).name}: operator(s) not supported by the NumPy runtime: "
                                      f"{', '.join(missing)}")

        # values computed inside the graph and read exactly once may be overwritten in place
        uses: dict[str, int] = {}
        for node in self.graph.nodes:
            for name in node.inputs:
                uses[name] = uses.get(name, 0) + 1
        produced = {name for node in self.graph.nodes for name in node.outputs}
        outputs = set(self.graph.outputs)
        self._reusable = {name for name in produced if uses.get(name) == 1 and name not in outputs}

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        values = dict(self.graph.initializers)
        for name in self.graph.inputs:
            if name not in feeds:
                raise ValueError(f"missing input {name!r}")
            values[name] = np.asarray(feeds[name])
        for node in self.graph.nodes:
            args = [values[i] if i else None for i in node.inputs]
            kwargs = dict(node.attrs)
            first = args[0] if args else None
            if (node.op_type in ops.INPLACE and node.inputs[0] in self._reusable and first.dtype == np.float32
                    and all(a is None or np.broadcast_shapes(first.shape, np.shape(a)) == first.shape for a in args)):
                kwargs["out"] = first
            results = ops.OPS[node.op_type](*args, **kwargs)
            if not isinstance(results, tuple):
                results = (results,)
            for name, value in zip(node.outputs, results):
                values[name] = value
        return [values[n] for n in (output_names or self.graph.outputs)]
