"""A minimal reader for the ONNX protobuf files nic ships, with no dependency on ``onnx``.

Only the parts of the schema the runtime needs: the graph's nodes (op type,
inputs, outputs, attributes), initializers (dense tensors) and input/output
names.  Field numbers follow onnx.proto3.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

# TensorProto.DataType -> numpy dtype
DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
          10: np.float16, 11: np.float64}


class OnnxFormatError(ValueError):
    """The file is not an ONNX model this reader understands."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise OnnxFormatError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise OnnxFormatError("varint too long")


def fields(buf: bytes):
    """Yield (field number, wire type, value) of a protobuf message; value is int or bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        else:
            raise OnnxFormatError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise OnnxFormatError("truncated message")
        yield num, wire, val


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _ints(wire: int, val) -> list[int]:
    if wire == 0:
        return [_signed(val)]
    out, pos = [], 0
    while pos < len(val):
        v, pos = _varint(val, pos)
        out.append(_signed(v))
    return out


def _floats(wire: int, val) -> list[float]:
    if wire == 5:
        return [struct.unpack("<f", val)[0]]
    return list(np.frombuffer(val, "<f4"))


def parse_tensor(buf: bytes) -> tuple[str, np.ndarray]:
    dims: list[int] = []
    dtype = 1
    name = ""
    raw = None
    floats: list[float] = []
    int_data: list[int] = []
    for num, wire, val in fields(buf):
        if num == 1:
            dims += _ints(wire, val)
        elif num == 2:
            dtype = val
        elif num == 8:
            name = val.decode()
        elif num == 9:
            raw = val
        elif num == 4:
            floats += _floats(wire, val)
        elif num in (5, 7):
            int_data += _ints(wire, val)
    if dtype not in DTYPES:
        raise OnnxFormatError(f"tensor {name}: unsupported data type {dtype}")
    np_dtype = np.dtype(DTYPES[dtype]).newbyteorder("<")
    if raw is not None:
        arr = np.frombuffer(raw, np_dtype).copy()
    elif floats:
        arr = np.array(floats, np_dtype)
    else:
        arr = np.array(int_data, np_dtype)
    if arr.size != int(np.prod(dims)):
        raise OnnxFormatError(f"tensor {name}: {arr.size} values for shape {dims}")
    return name, arr.reshape(dims).astype(DTYPES[dtype])


def _attribute(buf: bytes):
    name, value = "", None
    ints: list[int] = []
    floats: list[float] = []
    for num, wire, val in fields(buf):
        if num == 1:
            name = val.decode()
        elif num == 2:
            value = struct.unpack("<f", val)[0]
        elif num == 3:
            value = _signed(val)
        elif num == 4:
            value = val.decode()
        elif num == 5:
            value = parse_tensor(val)[1]
        elif num == 7:
            floats += _floats(wire, val)
        elif num == 8:
            ints += _ints(wire, val)
    if ints:
        value = ints
    elif floats:
        value = floats
    return name, value


@dataclass
class Node:
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)


@dataclass
class Graph:
    nodes: list[Node]
    initializers: dict[str, np.ndarray]
    inputs: list[str]
    outputs: list[str]


def _value_info_name(buf: bytes) -> str:
    for num, _, val in fields(buf):
        if num == 1:
            return val.decode()
    return ""


def read_model(data: bytes) -> Graph:
    graph_buf = None
    for num, wire, val in fields(data):
        if num == 7 and wire == 2:
            graph_buf = val
    if graph_buf is None:
        raise OnnxFormatError("no graph in model")
    nodes, inits, inputs, outputs = [], {}, [], []
    for num, _, val in fields(graph_buf):
        if num == 1:
            node = Node("", [], [])
            for n2, _, v2 in fields(val):
                if n2 == 1:
                    node.inputs.append(v2.decode())
                elif n2 == 2:
                    node.outputs.append(v2.decode())
                elif n2 == 4:
                    node.op_type = v2.decode()
                elif n2 == 5:
                    k, v = _attribute(v2)
                    node.attrs[k] = v
                elif n2 == 7 and v2:
                    raise OnnxFormatError(f"operator domain {v2.decode()!r} is not supported")
            nodes.append(node)
        elif num == 5:
            name, arr = parse_tensor(val)
            inits[name] = arr
        elif num == 11:
            inputs.append(_value_info_name(val))
        elif num == 12:
            outputs.append(_value_info_name(val))
    inputs = [i for i in inputs if i not in inits]
    return Graph(nodes, inits, inputs, outputs)
