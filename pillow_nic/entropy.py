"""Entropy coding: constriction's rANS coder over integer table families.

Both learned coders predict, for a batch of symbols, which table of a family
codes each symbol.  Symbols are coded grouped by table (ascending table index,
each group in batch order), so each group is a single vectorised coder call and
the decoder, which knows the table indices before it decodes, can mirror it.
"""

from __future__ import annotations

from typing import Sequence

import constriction
import numpy as np

from .container import NicError


def categorical_models(family: np.ndarray) -> list:
    """A constriction model per table of ``family`` (..., alphabet) of integer frequencies."""
    flat = family.reshape(-1, family.shape[-1])
    return [constriction.stream.model.Categorical(row.astype(np.float64), perfect=False) for row in flat]


def group_by_table(tables: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """(permutation sorting symbols by table, stably; [(table, start, end)] of each group)."""
    keys = tables.astype(np.int16) if tables.size and tables.max() < 1 << 15 else tables
    order = np.argsort(keys, kind="stable")  # a radix sort for int16 keys
    counts = np.bincount(keys) if len(keys) else np.zeros(0, np.int64)
    used = np.flatnonzero(counts)
    ends = np.cumsum(counts[used])
    return order, list(zip(used.tolist(), (ends - counts[used]).tolist(), ends.tolist()))


class Encoder:
    """Collects (model, symbols) steps in decoding order; ``finish`` codes them all."""

    def __init__(self):
        self.steps: list[tuple[object, np.ndarray]] = []

    def add(self, model, symbols: np.ndarray) -> None:
        self.steps.append((model, np.asarray(symbols, dtype=np.int32)))

    def add_grouped(self, models: Sequence, tables: np.ndarray, symbols: np.ndarray) -> None:
        """Symbols coded under ``models[tables[i]]``, grouped by table."""
        order, groups = group_by_table(tables)
        ordered = symbols[order]
        for table, s, e in groups:
            self.add(models[table], ordered[s:e])

    def finish(self) -> bytes:
        """The compressed words, little-endian uint32 (rANS is a stack: encode in reverse)."""
        coder = constriction.stream.stack.AnsCoder()
        for model, symbols in reversed(self.steps):
            coder.encode_reverse(symbols, model)
        return coder.get_compressed().astype("<u4").tobytes()


class Decoder:
    def __init__(self, data: bytes | memoryview, what: str):
        if len(data) % 4:
            raise NicError(f"{what}: entropy-coded data is not a whole number of words")
        self.coder = constriction.stream.stack.AnsCoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
        self.what = what

    def decode(self, model, count: int) -> np.ndarray:
        return self.coder.decode(model, count)

    def decode_grouped(self, models: Sequence, tables: np.ndarray) -> np.ndarray:
        """Inverse of ``Encoder.add_grouped``: symbols in batch order."""
        order, groups = group_by_table(tables)
        ordered = np.empty(len(tables), dtype=np.int64)
        for table, s, e in groups:
            ordered[s:e] = self.coder.decode(models[table], e - s)
        out = np.empty_like(ordered)
        out[order] = ordered
        return out

    def check_finished(self) -> None:
        if not self.coder.is_empty():
            raise NicError(f"{self.what}: unused data after the last symbol (corrupt data)")
