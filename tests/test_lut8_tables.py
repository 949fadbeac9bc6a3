"""Set avx2-lut8 (x86/avx2.c): int8 LUT tables for 2-3-bit bit-plane types, chosen only by
EDGEQ_ISA=avx2-lut8, end to end on tiny converted models against avx2's int16 tables and the float
reference. The per-product bound is native/tests/check_kernels.c's (tests/test_native_kernels.py);
the measurement on SmolLM2 is benchmarks/README.md "Int8 LUT tables at 2-3 bits"."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from edgeq import _ffi
from test_runtime import KERNEL_SETS, PROMPT

pytestmark = pytest.mark.skipif("avx2-lut8" not in _ffi.kernel_sets(), reason="this CPU does not run avx2")


def logits_under(isa: str, path, tokens, one_by_one: bool) -> np.ndarray:
    """Logits of every token under kernel set `isa`: the prompt in one batch, or token by token."""
    previous = _ffi.isa()
    _ffi.select_isa(isa)
    try:
        handle = _ffi.model_open(path, threads=1, kv_fp32=True)
        try:
            if not one_by_one:
                return _ffi.model_eval(handle, tokens, all_logits=True)
            return np.concatenate([_ffi.model_eval(handle, [t], all_logits=True) for t in tokens])
        finally:
            _ffi.model_close(handle)
    finally:
        _ffi.select_isa(previous)


def test_auto_never_picks_it_and_routes_name_the_tables():
    """Listed after avx2, so no CPU picks it by default; its 2-3-bit types take int8 tables at every
    batch size (no prefill path), wider types avx2's int16 tables, other families avx2's kernels."""
    sets = _ffi.kernel_sets()
    assert sets.index("avx2-lut8") == sets.index("avx2") + 1 and sets[0] != "avx2-lut8"
    for batch in (1, 64):
        route = _ffi.kernel_route("u2g32a", "avx2-lut8", batch=batch)
        assert (route["set"], route["path"]) == ("avx2-lut8", "lut"), route
        assert "int8 tables" in route["detail"], route
    assert _ffi.kernel_route("u2g32a", "avx2", batch=64)["path"] == "multiply-add"
    assert _ffi.kernel_route("p8g64a", "avx2-lut8")["detail"] == _ffi.kernel_route("p8g64a", "avx2")["detail"]


@pytest.mark.parametrize("bits", [2, 3])
def test_int8_tables_stay_close_to_int16_tables(tiny_converted, bits):
    """A 2- or 3-bit tiny llama: avx2-lut8's logits differ from avx2's (the tables are used) by
    less than the set's stated bound (tests/test_runtime.py KERNEL_SETS, a fraction of the logit
    range), and a prompt in one batch gives the bits it gives token by token (every batch takes
    the tables: what `edgeq perplexity` measures is what decoding gets)."""
    path = tiny_converted("llama", bits)
    int16 = logits_under("avx2", path, PROMPT, one_by_one=True)        # avx2's decode path: LUT
    int8 = logits_under("avx2-lut8", path, PROMPT, one_by_one=True)
    batched = logits_under("avx2-lut8", path, PROMPT, one_by_one=False)
    assert np.array_equal(batched, int8)
    span = np.ptp(int16)
    difference = np.abs(int8 - int16).max()
    assert 0 < difference < (KERNEL_SETS["avx2-lut8"] + KERNEL_SETS["avx2"]) * span, (difference, span)
    # the top token is kept wherever int16's lead over the runner-up exceeds twice the difference
    top2 = np.sort(int16, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * difference
    assert clear.sum() >= 4 and (int8.argmax(-1) == int16.argmax(-1))[clear].all()


def test_wider_types_keep_the_int16_bits(tiny_converted):
    """A 4-bit file (head 6, embeddings 4): nothing at 2-3 bits, so avx2-lut8 gives avx2's bits."""
    path = tiny_converted("llama", 4)
    assert np.array_equal(logits_under("avx2-lut8", path, PROMPT[:8], one_by_one=True),
                          logits_under("avx2", path, PROMPT[:8], one_by_one=True))


def test_edgeq_isa_selects_it_from_the_command_line(tiny_converted):
    """EDGEQ_ISA=avx2-lut8 is the switch (no code edit): `edgeq info` reports the int8 route."""
    path = tiny_converted("llama", 2)
    env = dict(os.environ, EDGEQ_ISA="avx2-lut8")
    result = subprocess.run([sys.executable, "-m", "edgeq", "info", str(path)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "avx2-lut8 lut (LUT: int8 tables" in result.stdout, result.stdout
