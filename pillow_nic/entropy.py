"""Entropy coding: constriction's rANS coder over integer table families.

Both learned coders predict, for a batch of symbols, which table of a family
codes each symbol.  Symbols are coded grouped by table (ascending table index,
each group in batch order), so each group is a single vectorised coder call and
the decoder, which knows the table indices before it decodes, can mirror it.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cached_property

import constriction
import numpy as np

from .container import NicError

PRECISION = 24  # bits of constriction's probabilities (its default AnsCoder and models)


def _compiled_decoder():
    """The compiled decoder module (``_rans``), or None where it is not built or
    ``NIC_KERNEL=0`` turns the compiled paths off."""
    if os.environ.get("NIC_KERNEL", "1") == "0" or importlib.util.find_spec("pillow_nic._rans") is None:
        return None
    from . import _rans

    return _rans


class TableSet:
    """Probability tables for the rANS coder: a constriction model per table (the encoder
    and the reference decoder) and each table's cumulative frequencies as constriction
    quantises them, for the compiled decoder (``_rans.c``), which decodes the same stream
    several times faster."""

    def __init__(self, models: list, cdfs: np.ndarray):
        self.models = models
        self._cdfs = cdfs  # (tables, alphabet + 1) int64

    @classmethod
    def categorical(cls, family: np.ndarray) -> TableSet:
        """A table per row of ``family`` (..., alphabet) of integer frequencies.

        constriction quantises a categorical's probabilities p to left cumulatives
        floor(P_i * (2**24 - n) / sum p) + i (P_i the sum of p below symbol i); for integer
        frequencies summing to 2**24 every step of that is exact, so the integers below are
        constriction's.  NicError for any other family (a model's tables are always such)."""
        flat = family.reshape(-1, family.shape[-1]).astype(np.int64)
        n = flat.shape[1]
        if n < 2 or (flat < 1).any() or (flat.sum(axis=1) != 1 << PRECISION).any():
            raise NicError("model tables are not integer frequencies >= 1 summing to 2**24")
        models = [constriction.stream.model.Categorical(row.astype(np.float64), perfect=False) for row in flat]
        below = np.cumsum(flat, axis=1) - flat
        left = ((below * ((1 << PRECISION) - n)) >> PRECISION) + np.arange(n)
        return cls(models, np.concatenate([left, np.full((len(flat), 1), 1 << PRECISION)], axis=1))

    @classmethod
    def uniform(cls, n: int) -> TableSet:
        """One table, uniform over ``n`` symbols: constriction gives each 2**24 // n and the
        last symbol the rest."""
        per_symbol = (1 << PRECISION) // n
        return cls([constriction.stream.model.Uniform(n)], np.append(np.arange(n) * per_symbol, 1 << PRECISION)[None])

    def __len__(self) -> int:
        return len(self.models)

    @cached_property
    def compiled(self):
        """The tables prepared for the compiled decoder (which must be built)."""
        rans = _compiled_decoder()
        cdfs = self._cdfs
        quantiles = np.minimum(np.arange((1 << rans.BUCKET_BITS) + 1) << (PRECISION - rans.BUCKET_BITS),
                               (1 << PRECISION) - 1)
        buckets = np.stack([np.searchsorted(row, quantiles, side="right") - 1 for row in cdfs])
        return rans.prepare(cdfs.astype(np.uint32).ravel(), np.arange(len(cdfs), dtype=np.int64) * cdfs.shape[1],
                            np.full(len(cdfs), cdfs.shape[1] - 1, np.int32), buckets.astype(np.uint16).ravel())


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

    def add(self, tables: TableSet, symbols: np.ndarray) -> None:
        """Symbols coded under the single table of ``tables``."""
        self.steps.append((tables.models[0], np.asarray(symbols, dtype=np.int32)))

    def add_grouped(self, tables: TableSet, indices: np.ndarray, symbols: np.ndarray) -> None:
        """Symbols coded under table ``indices[i]``, grouped by table."""
        order, groups = group_by_table(indices)
        ordered = np.asarray(symbols, dtype=np.int32)[order]
        for table, s, e in groups:
            self.steps.append((tables.models[table], ordered[s:e]))

    def finish(self) -> bytes:
        """The compressed words, little-endian uint32 (rANS is a stack: encode in reverse)."""
        coder = constriction.stream.stack.AnsCoder()
        for model, symbols in reversed(self.steps):
            coder.encode_reverse(symbols, model)
        return coder.get_compressed().astype("<u4").tobytes()


class Decoder:
    """Decodes what ``Encoder`` coded, step by step: with the compiled decoder where it is
    built and ``compiled`` asks for it, else with constriction (the NumPy runtime keeps to
    constriction, the reference); both read the same stream the same way."""

    def __init__(self, data: bytes | memoryview, what: str, compiled: bool = True):
        if len(data) % 4:
            raise NicError(f"{what}: entropy-coded data is not a whole number of words")
        words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        self.what = what
        if len(words) and words[-1] == 0:  # constriction never writes one
            raise NicError(f"{what}: entropy-coded data ends in a zero word (corrupt data)")
        self._rans = _compiled_decoder() if compiled else None
        if self._rans is None:
            self.coder = constriction.stream.stack.AnsCoder(words)
            return
        # constriction's start: the state is the last word, then the one before while below 2**32
        unread, state = len(words), 0
        while unread and state < 1 << 32:
            unread -= 1
            state = state << 32 | int(words[unread])
        self.words = words
        self.cursor = np.array([state, unread], dtype=np.uint64)  # [state, words not yet read]

    def decode(self, tables: TableSet, count: int) -> np.ndarray:
        """``count`` symbols under the single table of ``tables``."""
        return self.decode_grouped(tables, np.zeros(count, dtype=np.int32))

    def decode_grouped(self, tables: TableSet, indices: np.ndarray) -> np.ndarray:
        """Inverse of ``Encoder.add_grouped``: symbols in batch order."""
        out = np.empty(len(indices), dtype=np.int64)
        if self._rans is not None:
            self._rans.decode(self.words, self.cursor, tables.compiled, np.asarray(indices, dtype=np.int32), out)
            return out
        order, groups = group_by_table(indices)
        ordered = np.empty(len(indices), dtype=np.int64)
        for table, s, e in groups:
            ordered[s:e] = self.coder.decode(tables.models[table], e - s)
        out[order] = ordered
        return out

    def check_finished(self) -> None:
        finished = self.coder.is_empty() if self._rans is None else not self.cursor.any()
        if not finished:
            raise NicError(f"{self.what}: unused data after the last symbol (corrupt data)")
