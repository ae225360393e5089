"""ONNX operators in NumPy, float32 throughout (as ONNX Runtime computes them).

Integer-exact graphs (the lossless predictor, the lossy entropy model) only do
float32 arithmetic on integers, or on integers times one power of two, whose sums
stay below 2**24 units, so these implementations give the same bits as ONNX
Runtime whatever the summation order.
"""

from __future__ import annotations

import numpy as np


def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def matmul(a, b):
    return _f32(a) @ _f32(b)


def gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    a, b = _f32(a), _f32(b)
    y = (a.T if transA else a) @ (b.T if transB else b)
    if alpha != 1.0:
        y *= np.float32(alpha)
    if c is not None:
        y += _f32(c) if beta == 1.0 else np.float32(beta) * _f32(c)
    return y


def _pads(pads, kh: int, kw: int) -> tuple[int, int, int, int]:
    """ONNX pads [top, left, bottom, right]."""
    return tuple(pads) if pads else (0, 0, 0, 0)


def conv(x, w, b=None, *, strides=(1, 1), pads=None, dilations=(1, 1), group=1, kernel_shape=None,
         auto_pad="NOTSET"):
    """2-D convolution as one matrix product over sliding windows (im2col)."""
    if group != 1 or tuple(dilations) != (1, 1) or auto_pad not in ("NOTSET", b"NOTSET"):
        raise NotImplementedError("Conv: only group=1, dilation 1, explicit pads")
    x = _f32(x)
    w = _f32(w)
    o, c, kh, kw = w.shape
    t, l, btm, r = _pads(pads, kh, kw)
    sh, sw = strides
    if kh == kw == 1 and (sh, sw) == (1, 1) and not any((t, l, btm, r)):
        n, _, h, wd = x.shape
        out = np.matmul(w[:, :, 0, 0], x.reshape(n, c, h * wd)).reshape(n, o, h, wd)
    else:
        xp = np.pad(x, ((0, 0), (0, 0), (t, btm), (l, r)))
        win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
        n, _, oh, ow = win.shape[:4]
        cols = win.transpose(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, oh * ow)  # (c, kh, kw) x pixels
        out = np.matmul(w.reshape(o, c * kh * kw), cols).reshape(n, o, oh, ow)
    if b is not None:
        out = out + _f32(b)[None, :, None, None]
    return np.ascontiguousarray(out, dtype=np.float32)


def conv_transpose(x, w, b=None, *, strides=(1, 1), pads=None, dilations=(1, 1), group=1, kernel_shape=None,
                   output_padding=None, auto_pad="NOTSET"):
    """2-D transposed convolution: one matrix product, then the taps are added into the
    output (col2im): in whole blocks when the kernel is a multiple of the stride."""
    if group != 1 or tuple(dilations) != (1, 1) or (output_padding and any(output_padding)):
        raise NotImplementedError("ConvTranspose: only group=1, dilation 1, no output padding")
    x = _f32(x)
    w = _f32(w)
    n, c, h, wd = x.shape
    _, o, kh, kw = w.shape
    sh, sw = strides
    t, l, btm, r = _pads(pads, kh, kw)
    full_h, full_w = (h - 1) * sh + kh, (wd - 1) * sw + kw
    if kh % sh == 0 and kw % sw == 0:
        # tap (di*sh + p, dj*sw + q) of input (a, b) lands on output (a + di, p, b + dj, q) in
        # units of the stride: sum the kh/sh x kw/sw shifted products with the (o, p, q) block
        # contiguous, then interleave once
        bh, bw = kh // sh, kw // sw
        wr = np.ascontiguousarray(w.reshape(c, o, bh, sh, bw, sw).transpose(0, 2, 4, 1, 3, 5))
        cols = np.tensordot(x, wr, axes=([1], [0]))  # (n, h, w, bh, bw, o, sh, sw)
        acc = np.zeros((n, h + bh - 1, wd + bw - 1, o, sh, sw), dtype=np.float32)
        for di in range(bh):
            for dj in range(bw):
                acc[:, di:di + h, dj:dj + wd] += cols[:, :, :, di, dj]
        out = acc.transpose(0, 3, 1, 4, 2, 5).reshape(n, o, full_h, full_w)
    else:
        cols = np.tensordot(x, w, axes=([1], [0]))  # (n, h, w, o, kh, kw)
        out = np.zeros((n, o, full_h, full_w), dtype=np.float32)
        for i in range(kh):
            for j in range(kw):
                out[:, :, i:i + (h - 1) * sh + 1:sh, j:j + (wd - 1) * sw + 1:sw] += \
                    cols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    out = out[:, :, t:full_h - btm, l:full_w - r]
    if b is not None:
        out = out + _f32(b)[None, :, None, None]
    return np.ascontiguousarray(out, dtype=np.float32)


def depth_to_space(x, *, blocksize, mode="DCR"):
    """Channel blocks to pixel blocks: "CRD" takes channel c*b*b + i*b + j to (c, i, j),
    "DCR" takes (i*b + j)*C' + c there."""
    n, c, h, w = x.shape
    b = blocksize
    if mode in ("CRD", b"CRD"):
        blocks = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        blocks = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    return np.ascontiguousarray(blocks.reshape(n, c // (b * b), h * b, w * b))


def slice_(x, starts, ends, axes=None, steps=None):
    """ONNX Slice: per axis, Python slicing start:end:step (ends beyond the size clamp)."""
    index = [slice(None)] * x.ndim
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[int(axis)] = slice(int(start), int(end), int(step))
    return np.ascontiguousarray(x[tuple(index)])


def constant(*, value=None, **kwargs):
    if value is None:
        raise NotImplementedError("Constant: only the 'value' attribute")
    return value


def _elementwise(fn):
    """A float32 elementwise op that may write into its first input when allowed."""
    def op(*args, out=None):
        return fn(*[_f32(a) if a is not None else None for a in args], out=out)
    return op


def _clip_into(x, lo=None, hi=None, out=None):
    return np.clip(x, -np.inf if lo is None else lo, np.inf if hi is None else hi, out=out)


#: Elementwise operators that can reuse the buffer of their first input.
INPLACE = {
    "Add": _elementwise(lambda a, b, out: np.add(a, b, out=out)),
    "Sub": _elementwise(lambda a, b, out: np.subtract(a, b, out=out)),
    "Mul": _elementwise(lambda a, b, out: np.multiply(a, b, out=out)),
    "Div": _elementwise(lambda a, b, out: np.divide(a, b, out=out)),
    "Floor": _elementwise(lambda a, out: np.floor(a, out=out)),
    "Abs": _elementwise(lambda a, out: np.abs(a, out=out)),
    "Sign": _elementwise(lambda a, out: np.sign(a, out=out)),
    "Relu": _elementwise(lambda a, out: np.maximum(a, np.float32(0), out=out)),
    "Clip": _elementwise(_clip_into),
}

OPS = {
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Constant": constant,
    "DepthToSpace": depth_to_space,
    "Slice": slice_,
    "MatMul": matmul,
    "Gemm": gemm,
    "Identity": lambda x: x,
    **INPLACE,
}
