"""Calibration and the methods it feeds: GPTQ against a slow independent implementation, weighted
errors against plain RTN, the sequential pass's memory and determinism, and bad input."""
from __future__ import annotations

import subprocess
import sys
import weakref

import numpy as np
import pytest

from edgeq import quant_types
from edgeq.convert import MethodSettings, PlanSettings, convert
from edgeq.convert import calibrate as calibration
from edgeq.convert.gptq import float_target_weight, gptq, layer_output_error
from edgeq.convert.methods import column_weights, fit_groups, hqq, round_params, rtn, weighted_error
from edgeq.convert.sources import open_source
from edgeq.fileformat import ModelFile
from tiny_models import make_tiny_hf_model


def _restore(tensor):
    return quant_types.dequantize(tensor.qtype, tensor.data, *tensor.shape)


def _layer_with_outliers(seed=0, rows=48, cols=200, tokens=600):
    """W (rows, cols) and inputs X (tokens, cols) whose columns have very different scales, a few of
    them outliers, and correlations (as activations have)."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((rows, cols)).astype(np.float32)
    mixing = np.eye(cols) + 0.3 * rng.standard_normal((cols, cols)) / np.sqrt(cols)
    x = (rng.standard_normal((tokens, cols)) @ mixing) * rng.gamma(1.0, size=cols)
    x[:, rng.choice(cols, 4, replace=False)] *= 25.0
    return weight, x.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# GPTQ == a slow, plain implementation of the same algorithm
# ---------------------------------------------------------------------------------------------

def slow_gptq(weight, hessian, qtype, damp=0.01, act_order=False):
    """Optimal Brain Quantization one column at a time with the explicit inverse of the Hessian of
    the columns still free (no Cholesky, no blocks): e = (w_j - q_j) / Hinv_jj, w_F -= e Hinv_jF,
    then j leaves Hinv by one Gaussian elimination step. Groups are fitted like gptq(): at the group's
    first visited column, on its current weights, with the clip search weighted by diag(H)."""
    rows, cols = weight.shape
    group, n_max = qtype.group, float((1 << qtype.bits) - 1)
    padded_rows, padded_cols = qtype.padded_shape(rows, cols)
    w = np.zeros((padded_rows, padded_cols))
    w[:rows, :cols] = weight
    h = np.zeros((padded_cols, padded_cols))
    h[:cols, :cols] = hessian
    importance = np.diag(h).copy()
    dead = importance <= 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    order = np.argsort(-importance, kind="stable") if act_order else np.arange(padded_cols)
    h += damp * np.mean(np.diag(h)) * np.eye(padded_cols)
    h_inv = np.linalg.inv(h)
    weights = column_weights(importance, padded_cols, group)
    scales = np.zeros((padded_rows, padded_cols // group), np.float16)
    mins = np.zeros(scales.shape)                              # float: -s*n_max/2 is not an fp16
    fitted = set()
    restored = np.zeros_like(w)
    for j in order:
        g = j // group
        if g not in fitted:
            s, m = fit_groups(w[:, g * group:(g + 1) * group].copy(), weights[g:g + 1], qtype)
            s16, m16 = round_params(qtype, s, m)
            scales[:, g] = s16
            mins[:, g] = (-s16.astype(np.float64) * qtype.zero_point()) if qtype.symmetric else m16
            fitted.add(g)
        s, m = scales[:, g].astype(np.float64), mins[:, g].astype(np.float64)
        q = np.clip(np.floor((w[:, j] - m) / np.where(s == 0, 1, s) + 0.5), 0, n_max)
        restored[:, j] = s * q + m
        error = (w[:, j] - restored[:, j]) / h_inv[j, j]
        w -= np.outer(error, h_inv[j])
        w[:, j] = restored[:, j]
        h_inv -= np.outer(h_inv[:, j], h_inv[j]) / h_inv[j, j]
    return restored[:rows, :cols]


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("type_name", ["u3g32a", "u2g64s", "u4g32s"])
def test_gptq_equals_slow_reference(type_name, act_order):
    qtype = quant_types.TYPES[type_name]
    weight, x = _layer_with_outliers(rows=40, cols=176)       # K not a multiple of 64: padded columns
    x[:, 7] = 0.0                                              # a column no input reaches
    hessian = x.astype(np.float64).T @ x
    got = _restore(gptq(weight, qtype, hessian, act_order=act_order, block_size=48))
    want = slow_gptq(weight, hessian, qtype, act_order=act_order)
    assert got.shape == weight.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_gptq_block_size_does_not_change_the_result():
    qtype = quant_types.TYPES["u3g64a"]
    weight, x = _layer_with_outliers(seed=3)
    hessian = x.astype(np.float64).T @ x
    results = [_restore(gptq(weight, qtype, hessian, act_order=True, block_size=b)) for b in (32, 128, 256)]
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], rtol=0, atol=1e-5 * np.abs(weight).max())


# ---------------------------------------------------------------------------------------------
# each method against plain RTN
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("type_name", ["u2g32a", "u3g64a", "u3g64s", "u4g128a"])
def test_methods_no_worse_than_plain_rtn(type_name):
    qtype = quant_types.TYPES[type_name]
    for seed in range(3):
        weight, x = _layer_with_outliers(seed=seed)
        importance = np.mean(x.astype(np.float64) ** 2, axis=0)
        hessian = x.astype(np.float64).T @ x
        plain = _restore(rtn(weight, qtype))
        baseline = weighted_error(weight, plain, importance)
        for method in (rtn, hqq):
            restored = _restore(method(weight, qtype, importance))
            assert weighted_error(weight, restored, importance) <= baseline * 1.001, (method.__name__, seed)
        # without statistics hqq is still no worse than the search it starts from, unweighted
        assert weighted_error(weight, _restore(hqq(weight, qtype)), None) <= weighted_error(weight, plain, None) * 1.001
        # GPTQ minimizes the layer's output error on the calibration inputs
        for act_order in (False, True):
            restored = _restore(gptq(weight, qtype, hessian, act_order=act_order))
            assert layer_output_error(weight, restored, hessian) < 0.9 * layer_output_error(weight, plain, hessian)


@pytest.mark.parametrize("type_name", ["u2g32a", "u3g64a"])
def test_gptq_float_target(type_name):
    """GPTQ on float_target_weight's W* reaches the float layer's output X Wᵀ from the quantized
    model's inputs X~ better than GPTQ on W; W* is W when the inputs agree; W* is the least-squares
    optimum (its residual is orthogonal to X~, so no other W' does better unquantized)."""
    qtype = quant_types.TYPES[type_name]
    for seed in range(3):
        weight, x = _layer_with_outliers(seed=seed)
        noise = np.random.default_rng(seed + 10).standard_normal(x.shape) * x.std(axis=0) * 0.2
        x_quant = (x + noise).astype(np.float32)                 # what the quantized model's inputs look like
        hessian = x_quant.astype(np.float64).T @ x_quant
        input_error = (x - x_quant).astype(np.float64).T @ x_quant
        np.testing.assert_array_equal(float_target_weight(weight, hessian, np.zeros_like(hessian)), weight)
        target = float_target_weight(weight, hessian, input_error, damp=0.0)
        residual = x @ weight.T - x_quant @ target.T
        np.testing.assert_allclose(x_quant.T @ residual, 0, atol=1e-6 * np.abs(x_quant.T @ (x @ weight.T)).max())

        def float_error(restored):
            return float(np.sum((x.astype(np.float64) @ weight.T - x_quant @ restored.T) ** 2))
        aimed = float_error(_restore(gptq(float_target_weight(weight, hessian, input_error), qtype, hessian)))
        assert aimed < 0.95 * float_error(_restore(gptq(weight, qtype, hessian))), seed


def test_weighted_rtn_without_statistics_is_todays_rtn():
    """Same bytes as quantize_rtn when K is a multiple of the group; when it is not, the padding
    columns weigh 0 (they multiply zero inputs), which can only lower the error."""
    from edgeq.convert.quantize import quantize_rtn
    for cols in (256, 200):
        weight, _ = _layer_with_outliers(cols=cols)
        for type_name in ("u3g64a", "u2g32s", "u8g128a"):
            qtype = quant_types.TYPES[type_name]
            new, old = rtn(weight, qtype), quantize_rtn(weight, qtype)
            if cols % qtype.group == 0:
                assert np.array_equal(new.data, old.data)
            assert new.sq_error <= old.sq_error * 1.0001


def test_tiny_model_weighted_errors(tiny_llama, tmp_path):
    """On a tiny model's real activations: rtn and hqq weighted by E[x^2] (from `edgeq calibrate`)
    are no worse than plain rtn, tensor by tensor."""
    stats_path = tmp_path / "stats.npz"
    calibration.calibrate(tiny_llama, stats_path, n_tokens=512, ctx=128, progress=False)
    source = open_source(tiny_llama)
    importance, _ = calibration.load_stats(stats_path, source.config,
                                           calibration.model_fingerprint(source.load, source.config))
    qtype = quant_types.TYPES["u3g32a"]
    for name in source.config.tensor_names():
        if not calibration.is_calibrated_linear(name):
            continue
        weight, imp = source.load(name), importance[calibration.input_of(name)]
        baseline = weighted_error(weight, _restore(rtn(weight, qtype)), imp)
        for method in (rtn, hqq):
            assert weighted_error(weight, _restore(method(weight, qtype, imp)), imp) <= baseline * 1.001, (name, method)


# ---------------------------------------------------------------------------------------------
# the sequential pass
# ---------------------------------------------------------------------------------------------

def test_sequential_memory_does_not_grow_with_depth(tmp_path):
    folder = make_tiny_hf_model(tmp_path / "deep", arch="llama", num_hidden_layers=12)
    source = open_source(folder)
    alive: dict[int, list] = {}
    most_alive = []

    def load(name, rows=None):
        array = source.load(name, rows)
        if name.startswith("blk."):
            layer = int(name.split(".")[1])
            alive.setdefault(layer, []).append(weakref.ref(array))
            most_alive.append(sum(1 for refs in alive.values() if any(r() is not None for r in refs)))
        return array

    tokens = calibration.calibration_tokens(None, source.tokenizer, source.config, 256, 64)
    plan = {name: quant_types.TYPES["u3g32a"] for name in source.config.tensor_names()}
    labels = {name: "gptq" for name in plan}
    quantizer = calibration.layer_quantizer(plan, "gptq", MethodSettings(method="gptq"), labels)
    stored = {}
    for layer, stats, tensors in calibration.run_layers(load, source.config, tokens, quantizer, hessian=True):
        stored.update(tensors)
        assert set(stats) == set(calibration.INPUTS)
        assert all(s.hessian is None for s in stats.values())        # freed once used
    assert len(stored) == 12 * 7
    assert max(most_alive) == 1, "float weights of more than one layer were alive at once"
    # the float stream beside the quantized one (--float-target) holds no second copy of a layer
    alive.clear()
    most_alive.clear()
    method = MethodSettings(method="gptq", float_target=True)
    quantizer = calibration.layer_quantizer(plan, "gptq", method, labels)
    for layer, stats, tensors in calibration.run_layers(load, source.config, tokens, quantizer, hessian=True,
                                                        float_target=True):
        assert all(s.hessian is None and s.input_error is None for s in stats.values())
    assert max(most_alive) == 1, "float weights of more than one layer were alive at once"


def test_conversion_holds_no_more_than_a_layer_of_the_source(tmp_path, monkeypatch):
    """Peak RSS of converting a float safetensors source: the source is read into arrays the
    converter owns (never memory-mapped, whose touched pages would stay resident), and the source
    bytes alive at once stay near one layer's, however deep the model (a GPTQ conversion)."""
    from edgeq.convert import safetensors_io
    folder = make_tiny_hf_model(tmp_path / "deep", arch="llama", num_hidden_layers=12)
    source = open_source(folder)
    config = source.config
    layer_bytes = sum(4 * int(np.prod(config.tensor_shape(n))) for n in config.tensor_names()
                      if n.startswith("blk.0."))
    largest = max(4 * int(np.prod(config.tensor_shape(n))) for n in config.tensor_names())
    whole = sum(4 * int(np.prod(config.tensor_shape(n))) for n in config.tensor_names())
    assert whole > 3 * (layer_bytes + largest)     # the bound below can tell one layer from all
    alive, peaks, mapped = [0], [], []
    original = safetensors_io.SafetensorsFile.load

    def load(self, name, rows=None):
        array = original(self, name, rows)
        assert array.flags.owndata or array.base is not None and array.base.flags.owndata, \
            "a source tensor is a view of something other than its own buffer"
        with open("/proc/self/maps") as maps:
            mapped.append(any(str(self.path) in line for line in maps))
        alive[0] += array.nbytes
        weakref.finalize(array, lambda n=array.nbytes: alive.__setitem__(0, alive[0] - n))
        peaks.append(alive[0])
        return array

    monkeypatch.setattr(safetensors_io.SafetensorsFile, "load", load)
    convert(folder, tmp_path / "out.eq", PlanSettings(bits=3), progress=False,
            method=MethodSettings(method="gptq", calib_tokens=256, calib_ctx=64))
    assert len(peaks) >= 12 * 9 and not any(mapped), "the source file is memory-mapped"
    assert max(peaks) <= layer_bytes + largest, \
        f"{max(peaks)} source bytes alive at once; one layer is {layer_bytes}, the largest tensor {largest}"


def test_safetensors_reads_rows_and_dtypes(tmp_path):
    """Row ranges read only those rows' bytes and equal slicing the whole tensor, in every dtype."""
    from edgeq.convert.safetensors_io import SafetensorsFile
    from tiny_models import write_safetensors
    rng = np.random.default_rng(3)
    tensors = {"a": rng.standard_normal((37, 9)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}
    for dtype in ("float32", "float16", "bfloat16"):
        write_safetensors(tmp_path / f"{dtype}.safetensors", tensors, dtype)
        reader = SafetensorsFile(tmp_path / f"{dtype}.safetensors")
        whole = reader.load("a")
        tolerance = {"float32": 0, "float16": 1e-3, "bfloat16": 1e-2}[dtype]
        np.testing.assert_allclose(whole, tensors["a"], atol=tolerance * 4, rtol=tolerance)
        np.testing.assert_allclose(reader.load("b"), tensors["b"], atol=tolerance * 4, rtol=tolerance)
        for rows in (slice(0, 8), slice(30, 37), slice(5, 5), slice(2, 30, 3), slice(None)):
            part = reader.load("a", rows)
            assert part.dtype == np.float32 and part.flags.c_contiguous
            np.testing.assert_array_equal(part, whole[rows])


def test_calibrated_conversion_is_deterministic_and_recorded(tiny_qwen, tmp_path):
    method = MethodSettings(method="gptq", calib_tokens=384, calib_ctx=128, act_order=True)
    paths = [tmp_path / f"m{i}.edgeq" for i in range(2)]
    for path in paths:
        convert(tiny_qwen, path, PlanSettings(bits=3), progress=False, method=method)
    first, second = ModelFile(paths[0]), ModelFile(paths[1])
    for name, info in first.tensors.items():
        assert np.array_equal(np.asarray(info.data), np.asarray(second.tensors[name].data)), name
    text_hash = calibration.text_hash(__import__("edgeq.data", fromlist=["text_path"]).text_path("calibration")
                                      .read_text(encoding="utf-8"))
    assert first.provenance["calibration_hash"] == text_hash
    assert first.settings["calibration_tokens"] == "384"
    q_method = first.get("edgeq.tensor.blk.0.attn_q.weight.method")
    assert q_method.startswith("gptq ") and "act_order=yes" in q_method and text_hash in q_method
    assert first.get("edgeq.tensor.token_embd.weight.method") == "rtn-clip-search"
    head_method = first.get("edgeq.tensor.output.weight.method")   # weighted by its input's E[x^2]
    assert head_method.startswith("rtn imatrix ") and text_hash in head_method, head_method
    assert first.tensors["output.weight"].qtype.name == "p6g64a"  # in groups of 64 (the layers' 32)
    info = subprocess.run([sys.executable, "-m", "edgeq", "info", str(paths[0])], capture_output=True, text=True)
    assert info.returncode == 0 and text_hash in info.stdout and "gptq damp=0.01" in info.stdout


def test_the_head_is_weighted_when_the_conversion_calibrates(tiny_llama, tmp_path):
    """A tied head (token_embd) under a calibrated conversion: rtn weighted by E[x^2] of the final
    norm's output, collected by the calibration pass (run_layers' head callback, once, after the last
    layer), in groups of 64 unless --group says otherwise; an uncalibrated conversion keeps plain
    clip-search rtn in the layers' group. The weighted head fits its input's statistics better."""
    from edgeq.convert import methods
    from edgeq.convert.quantize import quantize_rtn
    method = MethodSettings(method="gptq", calib_tokens=256, calib_ctx=64)
    files = {}
    for label, settings, how in (("gptq", PlanSettings(bits=2), method),
                                 ("gptq-g32", PlanSettings(bits=2, group=32), method),
                                 ("rtn", PlanSettings(bits=2), MethodSettings(method="rtn"))):
        path = tmp_path / f"{label}.edgeq"
        convert(tiny_llama, path, settings, progress=False, method=how)
        model = ModelFile(path)
        files[label] = (model.tensors["token_embd.weight"].qtype.name, model.get("edgeq.tensor.token_embd.weight.method"))
    assert files["gptq"][0] == "p6g64a" and files["gptq"][1].startswith("rtn imatrix calib=")
    assert files["gptq-g32"][0] == "p6g32a" and files["gptq-g32"][1].startswith("rtn imatrix calib=")
    assert files["rtn"] == ("p6g32a", "rtn-clip-search")

    source = open_source(tiny_llama)
    tokens = calibration.calibration_tokens(None, source.tokenizer, source.config, 256, 64)
    seen, calls = [], []
    for layer, _, _ in calibration.run_layers(source.load, source.config, tokens, head=calls.append):
        seen.append(layer)
        assert not calls                              # only after the last layer
    assert seen == list(range(source.config.n_layers)) and len(calls) == 1
    importance = calls[0]
    assert importance.shape == (source.config.dim,) and np.all(importance > 0) and np.isfinite(importance).all()
    weight, qtype = source.load("token_embd.weight"), quant_types.TYPES["p6g64a"]
    weighted = methods.rtn_restored(weight, qtype, importance)
    plain = quant_types.dequantize(qtype, quantize_rtn(weight, qtype).data, *weight.shape)
    assert methods.weighted_error(weight, weighted, importance) < methods.weighted_error(weight, plain, importance)
    # the converter fits a large head a chunk of tiles at a time: the same bytes as at once
    from edgeq.convert.convert import _weighted_rtn_chunked
    from edgeq.convert.quantize import chunk_rows
    from edgeq.fileformat import TensorPlanEntry
    big = np.random.default_rng(5).standard_normal((2 * chunk_rows(96) + 21, 96)).astype(np.float32)
    weights = np.random.default_rng(6).random(96).astype(np.float32) + 0.1
    entry = TensorPlanEntry("token_embd.weight", qtype, big.shape, "rtn imatrix", None)
    chunked = _weighted_rtn_chunked(lambda rows: big[rows], entry, weights)
    assert np.array_equal(chunked.data, methods.rtn(big, qtype, weights, method="rtn imatrix").data)
    # a budget may give the head a codebook type (one codebook per 16-row tile): chunks of whole tiles
    # fit it the same as the whole too, under the codebook's label
    from edgeq.convert import codebook
    book = quant_types.TYPES["c4g64a"]
    entry = TensorPlanEntry("token_embd.weight", book, big.shape, codebook.method_label("rtn imatrix"), None)
    chunked = _weighted_rtn_chunked(lambda rows: big[rows], entry, weights)
    whole = methods.rtn(big, book, weights, method="rtn imatrix")
    assert np.array_equal(np.asarray(chunked.data).view(np.uint8), np.asarray(whole.data).view(np.uint8))
    assert chunked.method == whole.method and chunked.method.startswith(codebook.METHOD)


def test_gptq_file_closer_to_float_than_rtn(tiny_llama, tmp_path):
    """End to end on a tiny model: the GPTQ file's logits on calibration-like text are closer to the
    float model's than plain rtn's at 2 bits."""
    from edgeq.reference import Reference
    source = open_source(tiny_llama)
    prompt = list(range(3, 60))
    want = Reference(source.config, source.load).forward(prompt)
    errors = {}
    for name in ("rtn", "gptq"):
        path = tmp_path / f"{name}.edgeq"
        convert(tiny_llama, path, PlanSettings(bits=2, group=32), progress=False,
                method=MethodSettings(method=name, calib_tokens=1024, calib_ctx=128))
        model = ModelFile(path)
        got = Reference(model.config, model.load).forward(prompt)
        errors[name] = float(np.mean((got - want) ** 2))
    assert errors["gptq"] < errors["rtn"], errors


# ---------------------------------------------------------------------------------------------
# bad input: one line, no output
# ---------------------------------------------------------------------------------------------

def _run(*args):
    return subprocess.run([sys.executable, "-m", "edgeq", *map(str, args)], capture_output=True, text=True)


def _assert_failure(result, *words):
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgeq: error:"), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def _no_output(folder):
    return not [p.name for p in folder.iterdir() if p.name.startswith((".out", "out"))]


def test_bad_calibration_texts(tiny_llama, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be, that is the question.")
    out = tmp_path / "out.edgeq"
    _assert_failure(_run("convert", tiny_llama, "-o", out, "--method", "gptq", "--calib", empty), "0 tokens")
    result = _run("convert", tiny_llama, "-o", out, "--method", "gptq", "--calib", short, "--calib-tokens", "64")
    n_tokens = len(__import__("edgeq.tokenizer", fromlist=["Tokenizer"]).Tokenizer(open_source(tiny_llama).tokenizer)
                   .encode(short.read_text(), add_special=False))
    _assert_failure(result, f"has {n_tokens} tokens", "--calib-tokens 64")
    _assert_failure(_run("convert", tiny_llama, "-o", out, "--calib", tmp_path / "missing.txt"), "no such")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    _assert_failure(_run("convert", tiny_llama, "-o", out, "--calib", binary), "UTF-8")
    _assert_failure(_run("convert", tiny_llama, "-o", out, "--calib-ctx", "100000"), "--calib-ctx")
    _assert_failure(_run("calibrate", tiny_llama, "-o", tmp_path / "out.npz", "--calib", empty), "0 tokens")
    assert _no_output(tmp_path)


def test_bad_statistics_files(tiny_llama, tiny_qwen, tmp_path):
    stats = tmp_path / "llama.npz"
    calibration.calibrate(tiny_llama, stats, n_tokens=256, ctx=128, progress=False)
    out = tmp_path / "out.edgeq"
    _assert_failure(_run("convert", tiny_qwen, "-o", out, "--stats", stats), "another model")
    corrupted = tmp_path / "corrupted.npz"
    corrupted.write_bytes(stats.read_bytes()[: len(stats.read_bytes()) // 2])
    _assert_failure(_run("convert", tiny_llama, "-o", out, "--stats", corrupted), "corrupted")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    _assert_failure(_run("convert", tiny_llama, "-o", out, "--stats", garbage), "corrupted")
    _assert_failure(_run("convert", tiny_llama, "-o", out, "--stats", tmp_path / "none.npz"), "no such")
    bad_head = tmp_path / "bad_head.npz"        # the head's entry, present but not one value a column
    with np.load(stats) as archive:
        np.savez(bad_head, **{k: (archive[k][:-1] if k == calibration.HEAD_INPUT else archive[k]) for k in archive.files})
    _assert_failure(_run("convert", tiny_llama, "-o", out, "--stats", bad_head), calibration.HEAD_INPUT, "invalid")
    assert _no_output(tmp_path)
    ok = _run("convert", tiny_llama, "-o", out, "--stats", stats, "--bits", "3", "-q")
    assert ok.returncode == 0, ok.stderr
    model = ModelFile(out)
    assert model.get("edgeq.tensor.blk.0.ffn_down.weight.method").startswith("rtn imatrix")
    # the (tied) head weighted by the statistics' E[x^2] of its input, in groups of 64
    assert model.tensors["token_embd.weight"].method.startswith("rtn imatrix")
    assert model.tensors["token_embd.weight"].qtype.group == 64


@pytest.mark.parametrize("flags, words", [
    (["--method", "gptq", "--bits", "16"], ["--method gptq", "plain f16"]),
    (["--method", "hqq", "--bits", "32"], ["--method hqq"]),
    (["--method", "rtn", "--act-order"], ["--act-order", "without calibration"]),
    (["--method", "hqq", "--act-order", "--calib-tokens", "64"], ["--act-order"]),
    (["--bits", "4", "--act-order"], ["--act-order", "rtn"]),
    (["--method", "hqq", "--float-target"], ["--float-target", "hqq"]),
    (["--method", "gptq", "--stats", "stats.npz"], ["--stats"]),
    (["--calib-tokens", "0"], ["--calib-tokens"]),
])
def test_bad_method_flags(tiny_llama, tmp_path, flags, words):
    _assert_failure(_run("convert", tiny_llama, "-o", tmp_path / "out.edgeq", *flags), *words)
    assert _no_output(tmp_path)
