"""The entropy stage: the compiled rANS decoder against constriction, the reference."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pillow_nic import entropy, lossless, models, tables
from pillow_nic.container import NicError

needs_rans = pytest.mark.skipif(entropy._compiled_decoder() is None,
                                reason="the compiled decoder (pillow_nic._rans) is not built here")


def test_compiled_decoder_is_built_where_required():
    """CI sets NIC_REQUIRE_KERNEL=1, so the compiled-decoder tests cannot quietly skip there."""
    if os.environ.get("NIC_REQUIRE_KERNEL") == "1":
        assert entropy._compiled_decoder() is not None


def _family_sets() -> list[entropy.TableSet]:
    """Every table family the codecs code with: both lossless families of the default
    model, the lossy latents' family, the uniform models, and a random family."""
    rng = np.random.default_rng(7)
    package = models.default_model("lossless")
    lossy = models.default_model("lossy")
    random_rows = np.stack([tables.quantise_pmf(rng.random(40) ** 8) for _ in range(12)])
    return [entropy.TableSet.categorical(package.tables["family255"]),
            entropy.TableSet.categorical(package.tables["family510"]),
            entropy.TableSet.categorical(lossy.tables["family127"]),
            entropy.TableSet.categorical(random_rows),
            entropy.TableSet.uniform(256), entropy.TableSet.uniform(511), lossless.CALIBRATIONS]


def _steps(rng, sets: list[entropy.TableSet], n_steps: int) -> list[tuple[entropy.TableSet, np.ndarray, np.ndarray]]:
    """Random (tables, indices, symbols) steps: symbols from the whole alphabet, so the rare
    tails and the last symbol are coded too."""
    out = []
    for k in range(n_steps):
        table_set = sets[k % len(sets)]
        alphabet = table_set._cdfs.shape[1] - 1
        n = int(rng.integers(0, 3000))
        out.append((table_set, rng.integers(0, len(table_set), n), rng.integers(0, alphabet, n)))
    return out


@needs_rans
def test_compiled_decoder_reads_constriction_streams_exactly():
    rng = np.random.default_rng(0)
    steps = _steps(rng, _family_sets(), 40)
    enc = entropy.Encoder()
    for table_set, indices, symbols in steps:
        enc.add_grouped(table_set, indices, symbols)
    data = enc.finish()
    for compiled in (True, False):
        dec = entropy.Decoder(data, "test", compiled=compiled)
        assert (dec._rans is not None) == compiled
        for table_set, indices, symbols in steps:
            assert np.array_equal(dec.decode_grouped(table_set, indices), symbols)
        dec.check_finished()


@needs_rans
@pytest.mark.parametrize("seed", range(6))
def test_compiled_decoder_agrees_with_constriction_on_corrupt_streams(seed):
    """Any words decode to the same symbols under both decoders, and both see the same
    leftover data: a damaged file fails the same way with or without the compiled path."""
    rng = np.random.default_rng(seed)
    steps = _steps(rng, _family_sets(), 8)
    words = rng.integers(1, 1 << 32, int(rng.integers(1, 400)), dtype=np.uint64).astype("<u4").tobytes()
    decoders = [entropy.Decoder(words, "test", compiled=c) for c in (True, False)]
    for table_set, indices, _ in steps:
        a, b = (d.decode_grouped(table_set, indices) for d in decoders)
        assert np.array_equal(a, b)
    outcomes = []
    for d in decoders:
        try:
            d.check_finished()
            outcomes.append("finished")
        except NicError:
            outcomes.append("left over")
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("compiled", [True, False])
def test_decoder_refuses_streams_constriction_never_writes(compiled):
    with pytest.raises(NicError, match="whole number of words"):
        entropy.Decoder(b"\x01\x02\x03", "test", compiled=compiled)
    with pytest.raises(NicError, match="zero word"):
        entropy.Decoder(b"\x05\x00\x00\x00\x00\x00\x00\x00", "test", compiled=compiled)


def test_tables_must_be_normalised_integer_frequencies():
    good = tables.quantise_pmf(np.ones(9))
    for bad in (good - 1, np.r_[good[:-1] + good[-1], 0]):
        with pytest.raises(NicError, match="summing to 2"):
            entropy.TableSet.categorical(bad[None])


@needs_rans
def test_prepared_tables_are_checked():
    from pillow_nic import _rans

    cdf = np.array([0, 5, 5, 1 << 24], np.uint32)  # symbol 1 has no probability
    buckets = np.zeros(1025, np.uint16)
    with pytest.raises(ValueError, match="no probability"):
        _rans.prepare(cdf, np.zeros(1, np.int64), np.full(1, 3, np.int32), buckets)
    with pytest.raises(ValueError, match="outside the cdf"):
        _rans.prepare(cdf, np.ones(1, np.int64), np.full(1, 3, np.int32), buckets)
    good = entropy.TableSet.uniform(3)
    dec = entropy.Decoder(np.array([7], "<u4").tobytes(), "test")
    with pytest.raises(ValueError, match="out of range"):
        _rans.decode(dec.words, dec.cursor, good.compiled, np.array([1], np.int32), np.empty(1, np.int64))
