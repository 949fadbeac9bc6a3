"""The codebook family (c4g<G><a|s>, and v2g<G>s: 2-D centroids per pair): numpy twin <-> C reference <-> every kernel set, the fitting
against the uniform types at equal bits, and `--layout codebook` end to end."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from edgeq import _ffi, quant_types
from edgeq.convert import MethodSettings, PlanSettings, codebook, convert, methods
from edgeq.errors import EdgeqError
from edgeq.fileformat import ModelFile
from edgeq.reference import Reference

CODEBOOK = [qtype for qtype in quant_types.TYPES.values() if qtype.family == quant_types.CODEBOOK]
SIMD = [name for name in _ffi.kernel_sets() if name not in ("ref", "scalar")]


def random_codebook_tensor(qtype, rows, cols, rng):
    """(bytes, indices, scales, codebooks, mins) with random everything; padding indices random too.
    v2: an index per pair of columns, 32 entries per tile (c0 of 16 centroids, then c1)."""
    padded_rows, padded_cols = qtype.padded_shape(rows, cols)
    span = qtype.index_span()
    indices = rng.integers(0, 16, size=(padded_rows, padded_cols // span), dtype=np.uint8)
    scales = rng.normal(0.0, 0.01, size=(padded_rows, padded_cols // qtype.group)).astype(np.float16)
    mins = None if qtype.symmetric else rng.normal(0.0, 0.3, size=scales.shape).astype(np.float16)
    books = rng.integers(-64, 64, size=(padded_rows // 16, 16 * span))
    data = quant_types.pack_codebook(qtype, indices, scales, books, cols, mins)
    return data, indices, scales, books, mins


def test_the_table_names_and_sizes():
    assert [t.name for t in CODEBOOK] == ["c4g32a", "c4g32s", "c4g64a", "c4g64s", "c4g128a", "c4g128s",
                                          "v2g64s", "v2g128s"]
    table = {row["name"]: row for row in _ffi.qtype_table()}
    for qtype in CODEBOOK:
        assert table[qtype.name]["id"] == qtype.id and table[qtype.name]["family"] == "codebook"
        for rows, cols in ((1, 1), (17, 33), (100, 130), (576, 1536)):
            assert _ffi.nbytes(qtype.name, rows, cols) == qtype.nbytes(rows, cols)
        if qtype.bits == 4:   # a tile: 16 levels, then exactly the p4 blocks of the same group and symmetry
            p4 = quant_types.uniform_type(4, qtype.group, qtype.symmetric, quant_types.UNIFORM_PACKED)
            assert qtype.nbytes(48, 200) == p4.nbytes(48, 200) + 3 * 16
        else:                 # 32 centroid bytes, then blocks as large as u2g<G>s's: 2 bits a weight + scales
            u2 = quant_types.uniform_type(2, qtype.group, True)
            assert qtype.nbytes(48, 200) == u2.nbytes(48, 200) + 3 * 32


@pytest.mark.parametrize("qtype", CODEBOOK, ids=lambda t: t.name)
def test_numpy_twin_round_trips_and_every_set_dequantizes_its_bits(qtype):
    rng = np.random.default_rng(qtype.id)
    for rows, cols in ((33, 2 * qtype.group + 5), (16, qtype.group), (7, 32), (40, 200)):
        data, indices, scales, books, mins = random_codebook_tensor(qtype, rows, cols, rng)
        assert data.size == qtype.nbytes(rows, cols)
        got_indices, got_scales, got_books, got_mins = quant_types.unpack_codebook(qtype, data, rows, cols)
        stored = qtype.stored_cols(cols)
        assert np.array_equal(got_indices, indices[:, :stored // qtype.index_span()]) and np.array_equal(got_scales, scales[:, :got_scales.shape[1]])
        assert np.array_equal(got_books, books) and (mins is None) == (got_mins is None)
        expected = quant_types.dequantize(qtype, data, rows, cols)
        per_row = np.repeat(books, 16, axis=0).astype(np.float32)
        if qtype.index_span() == 1:
            level = np.take_along_axis(per_row, indices.astype(np.intp), axis=1)[:rows, :cols]
        else:   # column k: pair 4 (k // 8) + k % 4, its c0 (k % 8 < 4) or c1 (edgeq.h)
            k = np.arange(indices.shape[1] * 2)
            entry = 16 * (k % 8 >= 4) + indices[:, 4 * (k // 8) + k % 4].astype(np.intp)
            level = np.take_along_axis(per_row, entry, axis=1)[:rows, :cols]
        scaled = np.repeat(scales.astype(np.float32), qtype.group, axis=1)[:rows, :cols] * level
        formula = scaled if mins is None else scaled + np.repeat(mins.astype(np.float32), qtype.group, axis=1)[:rows, :cols]
        assert np.array_equal(expected.view(np.uint32), formula.view(np.uint32))
        previous = _ffi.isa()
        for isa in _ffi.kernel_sets():
            _ffi.select_isa(isa)
            try:
                assert np.array_equal(_ffi.dequantize(qtype.name, data, rows, cols).view(np.uint32),
                                      expected.view(np.uint32)), isa
            finally:
                _ffi.select_isa(previous)


@pytest.mark.parametrize("qtype", CODEBOOK, ids=lambda t: t.name)
def test_every_set_multiplies_within_the_int8_bound(qtype):
    """ref = float64 W x (to float32 rounding); every other set within the int8-activation bound
    Σ_k |w_k| s_b / 2 (+ float slack); the SIMD sets give one another's bits."""
    rng = np.random.default_rng(100 + qtype.id)
    for rows, cols, n in ((33, 2 * qtype.group + 5, 3), (64, 3 * qtype.group, 5), (5, 40, 1)):
        data = random_codebook_tensor(qtype, rows, cols, rng)[0]
        weight = quant_types.dequantize(qtype, data, rows, cols).astype(np.float64)
        x = rng.standard_t(3, size=(n, cols)).astype(np.float32)
        exact = x.astype(np.float64) @ weight.T
        ref = _ffi.gemm(qtype.name, data, rows, cols, x, isa="ref")
        assert np.allclose(ref, exact, rtol=1e-6, atol=1e-6 * np.abs(exact).max())
        padded = np.zeros((n, -(-cols // 32) * 32))
        padded[:, :cols] = np.abs(x)
        step = np.repeat(padded.reshape(n, -1, 32).max(axis=2) / 127, 32, axis=1)[:, :cols]   # s_b per column
        bound = (0.5 + 2 ** -7) * step @ np.abs(weight).T + 1e-5 * (np.abs(x) @ np.abs(weight).T) + 1e-30
        outputs = {}
        for isa in _ffi.kernel_sets():
            if isa == "ref":
                continue
            outputs[isa] = _ffi.gemm(qtype.name, data, rows, cols, x, isa=isa)
            assert (np.abs(outputs[isa] - exact) <= bound).all(), isa
            one = _ffi.gemm(qtype.name, data, rows, cols, x[-1:], isa=isa)
            assert np.array_equal(one, outputs[isa][-1:]), isa      # alone = in the batch
        for isa in SIMD[1:]:
            assert np.array_equal(outputs[isa], outputs[SIMD[0]]), (isa, SIMD[0])


def heavy_tailed_layer(rng, rows=96, cols=512):
    """Student-t weights with a few columns 5x larger (outlier input channels), and E[x^2] from a
    gamma distribution (most columns small, some large): what real layers and their statistics look like."""
    weight = (rng.standard_t(4, size=(rows, cols)) * 0.02).astype(np.float32)
    weight[:, rng.choice(cols, 8, replace=False)] *= 5
    return weight, rng.gamma(0.5, 1.0, cols)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fitting_beats_uniform_types_at_equal_bits(seed):
    """Weighted error Σ_j E[x_j^2] ||ΔW_:,j||^2 of the codebook fit against rtn (clip search with the
    same weights) on the uniform types of the same bits, group and symmetry (and against bit-planes:
    the same numbers as packed); the codebook's 16 bytes per 16 rows are the only extra bits."""
    rng = np.random.default_rng(seed)
    weight, importance = heavy_tailed_layer(rng)
    for group in quant_types.GROUPS:
        for symmetric in (False, True):
            ours = quant_types.codebook_type(4, group, symmetric)
            tensor = codebook.fit(weight, ours, importance)
            error = methods.weighted_error(weight, quant_types.dequantize(ours, tensor.data, *weight.shape), importance)
            for family in quant_types.UNIFORM_FAMILIES:
                uniform = quant_types.uniform_type(4, group, symmetric, family)
                theirs = methods.rtn(weight, uniform, importance)
                their_error = methods.weighted_error(weight, quant_types.dequantize(uniform, theirs.data, *weight.shape),
                                                     importance)
                assert error < 0.95 * their_error, (ours.name, uniform.name, error / their_error)
            assert ours.bits_per_weight(*weight.shape) - 4 - 16 * (1 if symmetric else 2) / group == pytest.approx(8 / 512)   # 16 bytes per 16 x 512 weights
            books = quant_types.unpack_codebook(ours, tensor.data, *weight.shape)[2]
            assert books.min() >= -64 and books.max() <= 63


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pair_fitting_beats_uniform_2_bits(seed):
    """v2g<G>s (2 bits a weight, 32 centroid bytes per 16 rows) against rtn on u2g<G>s, the same
    scales and bits (the fit starts from u2's grid): at most 0.6 of its weighted error; and v2g64s
    (2.28 bits a weight here) no worse than u2g32a (3 bits). Centroids within [-64, 63], the C
    reference's dequantization equals the numpy twin's, and an unweighted fit is worse where E[x^2] counts."""
    rng = np.random.default_rng(seed)
    weight, importance = heavy_tailed_layer(rng)
    error = lambda qtype, data: methods.weighted_error(weight, quant_types.dequantize(qtype, data, *weight.shape),
                                                       importance)
    errors = {}
    for group in quant_types.VECTOR_GROUPS:
        ours = quant_types.codebook_type(2, group, True)
        tensor = codebook.fit(weight, ours, importance)
        errors[ours.name] = error(ours, tensor.data)
        uniform = quant_types.uniform_type(2, group, True)
        assert errors[ours.name] < 0.6 * error(uniform, methods.rtn(weight, uniform, importance).data), ours.name
        assert ours.bits_per_weight(*weight.shape) - 2 - 16 / group == pytest.approx(16 / 512)   # 32 bytes per 16 x 512
        books = quant_types.unpack_codebook(ours, tensor.data, *weight.shape)[2]
        assert books.shape[1] == 32 and books.min() >= -64 and books.max() <= 63
        assert np.array_equal(_ffi.dequantize(ours.name, tensor.data, *weight.shape),
                              quant_types.dequantize(ours, tensor.data, *weight.shape))
    u2g32a = quant_types.TYPES["u2g32a"]
    assert errors["v2g64s"] <= error(u2g32a, methods.rtn(weight, u2g32a, importance).data)
    assert error(quant_types.TYPES["v2g64s"], codebook.fit(weight, quant_types.TYPES["v2g64s"]).data) > errors["v2g64s"]


def test_gptq_on_pairs_lowers_the_layer_output_error():
    """convert.gptq.gptq_pairs (the k-means centroids and scales, then pairs visited GPTQ-style with
    their errors spread) against the k-means fit alone, on a layer with correlated heavy-tailed
    inputs: at most half the output error Σ ||(W - Q) x||^2; and better than gptq on u2g64s, the
    uniform type of the same scales."""
    from edgeq.convert import gptq
    rng = np.random.default_rng(11)
    weight, _ = heavy_tailed_layer(rng, rows=48, cols=256)
    x = (rng.standard_t(5, size=(1024, 256)) * rng.gamma(0.5, 1.0, 256)) @ (np.eye(256) + 0.1 * rng.normal(size=(256, 256)))
    hessian = x.T @ x
    qtype = quant_types.TYPES["v2g64s"]
    error = lambda t: gptq.layer_output_error(weight, quant_types.dequantize(t.qtype, t.data, *weight.shape), hessian)
    fitted, paired = codebook.fit(weight, qtype, np.diag(hessian)), gptq.gptq(weight, qtype, hessian)
    assert error(paired) < 0.5 * error(fitted)
    assert error(paired) < error(gptq.gptq(weight, quant_types.TYPES["u2g64s"], hessian))
    assert paired.qtype is qtype and np.array_equal(_ffi.dequantize("v2g64s", paired.data, *weight.shape),
                                                    quant_types.dequantize(qtype, paired.data, *weight.shape))
    with pytest.raises(ValueError, match="gptq writes uniform types and v2 codebooks"):
        gptq.gptq(weight, quant_types.TYPES["c4g64s"], hessian)


def test_fitting_uses_the_importance():
    """Weighted by E[x^2], the error where it counts is lower than the unweighted fit's."""
    rng = np.random.default_rng(7)
    weight, importance = heavy_tailed_layer(rng)
    qtype = quant_types.TYPES["c4g64a"]
    weighted = codebook.fit(weight, qtype, importance)
    plain = codebook.fit(weight, qtype, None)
    error = lambda t: methods.weighted_error(weight, quant_types.dequantize(qtype, t.data, *weight.shape), importance)
    assert error(weighted) < error(plain)
    assert plain.method == "codebook-kmeans" and weighted.sq_error > 0


@pytest.mark.parametrize("name", ["c4g32s", "v2g64s"])
def test_per_tile_chunks_equal_the_whole(name):
    """One codebook per 16-row tile: quantizing rows in chunks of whole tiles gives the same bytes
    (the converter quantizes big tensors chunk by chunk)."""
    rng = np.random.default_rng(3)
    weight, _ = heavy_tailed_layer(rng, rows=70, cols=160)
    qtype = quant_types.TYPES[name]
    whole = codebook.fit(weight, qtype).data
    parts = np.concatenate([codebook.fit(weight[:32], qtype).data, codebook.fit(weight[32:], qtype).data])
    assert np.array_equal(whole, parts)


@pytest.fixture(scope="module")
def codebook_file(tiny_qwen_partial, tmp_path_factory):
    path = tmp_path_factory.mktemp("codebook") / "tiny.c4"
    convert(tiny_qwen_partial, path, PlanSettings(bits=4, layout="codebook"), progress=False,
            method=MethodSettings(method="rtn"))
    return path


def test_layout_codebook_writes_and_runs(codebook_file):
    """--layout codebook: the 4-bit tensors are c4g64a (K not a multiple of the group: partial last
    groups), the 6-bit head packed as auto does; the C forward pass on every set is the numpy reference's."""
    model = ModelFile(codebook_file)
    types = {t.name: t.qtype.name for t in model.tensors.values()}
    assert types["blk.0.ffn_down.weight"] == "c4g64a" and types["blk.0.attn_q.weight"] == "c4g64a"
    assert types["token_embd.weight"] == "c4g64a" and types["output.weight"] == "p6g64a"
    assert model.tensors["blk.0.ffn_down.weight"].method == "codebook-kmeans-clip-search"
    assert model.settings["layout"] == "codebook"
    assert_every_set_follows_the_reference(codebook_file, model, [5, 17, 33, 2, 120, 77, 8, 250, 1, 64, 300, 42,
                                                                  9, 199, 3, 88])


def assert_every_set_follows_the_reference(path, model, prompt):
    """The C forward pass of `path` on every kernel set (the first token alone, then the rest as one
    batch: decode and prefill paths) against the numpy reference's logits: int8 activations (as the
    packed family: tests/test_runtime.py MULTIPLY_ADD), ref float."""
    expected = Reference(model.config, model.load).forward(prompt)
    previous = _ffi.isa()
    for isa in _ffi.kernel_sets():
        _ffi.select_isa(isa)
        try:
            handle = _ffi.model_open(path, threads=2, kv_fp32=True)
            try:
                got = np.concatenate([_ffi.model_eval(handle, prompt[:1], all_logits=True),
                                      _ffi.model_eval(handle, prompt[1:], all_logits=True)])
            finally:
                _ffi.model_close(handle)
        finally:
            _ffi.select_isa(previous)
        assert np.abs(got - expected).max() < 0.02 * np.ptp(expected), isa


def test_layout_codebook_at_2_bits_writes_and_runs(tiny_qwen, tmp_path):
    """--layout codebook --bits 2 (--method auto: gptq): the linear layers are v2g64s (2-D centroids per pair), the
    embeddings c4 (4 bits), the head packed (as auto); the C forward pass on every set follows the numpy
    reference's (int8 activations: the packed family's tolerance)."""
    path = tmp_path / "tiny.v2"
    convert(tiny_qwen, path, PlanSettings(bits=2, layout="codebook"), progress=False)   # --method auto
    model = ModelFile(path)
    types = {t.name: t.qtype.name for t in model.tensors.values()}
    assert types["blk.0.ffn_down.weight"] == "v2g64s" and types["blk.0.attn_v.weight"] == "v2g64s"
    assert types["token_embd.weight"].startswith("c4g") and types["output.weight"].startswith("p6g"), types
    # auto at 2 bits: gptq, which fits v2 (convert.gptq.gptq_pairs), on the calibration's Hessians
    assert model.tensors["blk.0.ffn_down.weight"].method.startswith("gptq ")
    assert_every_set_follows_the_reference(path, model, [5, 17, 33, 2, 120, 77, 8, 250, 1, 64, 3, 42, 9, 199, 3, 88])


def test_act_order_is_not_recorded_for_pairs(tiny_qwen, tmp_path):
    """gptq_pairs visits the pairs in column order: with --act-order the v2 tensors record act_order=no
    (the file says what was done; uniform tensors keep act_order=yes: test_calibration)."""
    path = tmp_path / "tiny.v2.act"
    convert(tiny_qwen, path, PlanSettings(bits=2, layout="codebook"), progress=False,
            method=MethodSettings(method="gptq", act_order=True, calib_tokens=64))
    model = ModelFile(path)
    down = model.tensors["blk.0.ffn_down.weight"]
    assert down.qtype.name == "v2g64s" and down.method.startswith("gptq ") and "act_order=no" in down.method


def test_cli_convert_codebook_and_info(tiny_llama, tmp_path):
    out = tmp_path / "tiny.c4"
    env = dict(os.environ, EDGEQ_ISA="")
    converted = subprocess.run([sys.executable, "-m", "edgeq", "convert", str(tiny_llama), "-o", str(out),
                                "--layout", "codebook", "--sym", "--method", "rtn", "-q"], capture_output=True, text=True, env=env)
    assert converted.returncode == 0, converted.stderr
    info = subprocess.run([sys.executable, "-m", "edgeq", "info", str(out)], capture_output=True,
                          text=True, env=env)
    assert info.returncode == 0, info.stderr
    route = next(line for line in info.stdout.splitlines() if line.strip().startswith("c4g64s"))
    assert f"decode: {_ffi.kernel_sets()[0]} multiply-add (int8 multiply-add: index -> level" in route, route
    assert "layout codebook" in info.stdout
    assert any(line.startswith("blk.0.ffn_up.weight") and " c4g64s " in line and "codebook-kmeans" in line
               for line in info.stdout.splitlines()), info.stdout


def test_bad_codebook_requests_are_one_line_errors(tiny_llama, tmp_path):
    with pytest.raises(EdgeqError, match="--layout codebook stores 4 and 2-bit types, not --bits 3"):
        PlanSettings(bits=3, layout="codebook").validate()
    with pytest.raises(EdgeqError, match="--layout codebook at 2 bits takes --group 64 or 128, not 32"):
        PlanSettings(bits=2, group=32, layout="codebook").validate()
    for method in ("gptq", "hqq"):
        with pytest.raises(EdgeqError, match=f"--method {method} does not fit codebook types"):
            convert(tiny_llama, tmp_path / "x.eq", PlanSettings(bits=4, layout="codebook"), progress=False,
                    method=MethodSettings(method=method))
        assert not (tmp_path / "x.eq").exists()
    with pytest.raises(EdgeqError, match="--method hqq does not fit codebook types .* or gptq.*auto or rtn or gptq"):
        convert(tiny_llama, tmp_path / "x.eq", PlanSettings(bits=2, layout="codebook"), progress=False,
                method=MethodSettings(method="hqq"))
    assert not (tmp_path / "x.eq").exists()
    with pytest.raises(ValueError, match="not a codebook type"):
        codebook.fit(np.zeros((16, 64), np.float32), quant_types.TYPES["p4g64a"])
