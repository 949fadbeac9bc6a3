"""The only module that touches the compiled library (edgeq._native.lib).

Checks arguments (dtype, contiguity, sizes) before calling C, and turns negative EQ_ERR_* codes into
EdgeqError (EQ_ERR_CONTEXT_FULL into its subclass ContextFullError). Wrong Python types or shapes from the caller are programming errors (TypeError /
ValueError); what C rejects (unknown type, data too short for the shape, ...) is an EdgeqError,
since it usually comes from a file. Everything above this module works with numpy arrays only.
"""
from __future__ import annotations

import os

import numpy as np

from .errors import EdgeqError

try:
    from ._native import ffi, lib
except ImportError as exc:   # not built: e.g. a source checkout without `pip install -e .`
    raise EdgeqError(
        "the native library edgeq._native is not built; run `pip install --no-build-isolation -e .` "
        f"in the edgeq source tree ({exc})") from exc


class ContextFullError(EdgeqError):
    """The tokens do not fit in the model's KV cache (context); nothing was evaluated."""


def _check(code: int, what: str, model=None) -> None:
    """Raise for a negative code; `model` (an eq_model pointer) adds its eq_model_last_error."""
    if code == lib.EQ_ERR_BUSY:
        raise EdgeqError(f"{what}: model is in use by another thread")
    if code == lib.EQ_ERR_ISA:
        raise EdgeqError(_isa_error())
    if code < 0:
        detail = ffi.string(lib.eq_model_last_error(model)).decode() if model is not None else ""
        message = detail or ffi.string(lib.eq_error_string(code)).decode()
        error = ContextFullError if code == lib.EQ_ERR_CONTEXT_FULL else EdgeqError
        raise error(f"{what}: {message}")


def _qtype_id(qtype_name: str) -> int:
    qtype_id = lib.eq_qtype_from_name(qtype_name.encode())
    if qtype_id < 0:
        known = ", ".join(row["name"] for row in qtype_table())
        raise EdgeqError(f"unknown quant type {qtype_name!r}; known: {known}")
    return qtype_id


def _check_shape(rows: int, cols: int) -> tuple[int, int]:
    rows, cols = int(rows), int(cols)
    if rows <= 0 or cols <= 0:
        raise ValueError(f"tensor shape must be positive, got ({rows}, {cols})")
    return rows, cols


def _check_bytes(data: np.ndarray) -> np.ndarray:
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise TypeError(f"data must be a numpy uint8 array, got {getattr(data, 'dtype', type(data))}")
    if not data.flags.c_contiguous:
        raise ValueError("data must be C-contiguous (a copy of a weight tensor is never made silently)")
    return data


def _check_floats(array: np.ndarray, length: int, name: str) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.dtype != np.float32:
        raise TypeError(f"{name} must be a numpy float32 array, got {getattr(array, 'dtype', type(array))}")
    if array.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {array.shape}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    return array


# ---------------------------------------------------------------------------------------------
# the quant-type table
# ---------------------------------------------------------------------------------------------

def qtype_table() -> list[dict]:
    """The C table, one dict per type in id order: name, id, family ("plain", "uniform-bitplane"),
    bits, group, symmetric."""
    rows = []
    for qtype_id in range(lib.eq_qtype_count()):
        traits = lib.eq_qtype_get(qtype_id)
        rows.append({
            "name": ffi.string(traits.name).decode(),
            "id": int(traits.id),
            "family": ffi.string(lib.eq_qfamily_name(traits.family)).decode(),
            "bits": int(traits.bits),
            "group": int(traits.group),
            "symmetric": bool(traits.symmetric),
        })
    return rows


def version() -> str:
    """The version the native library was built as (equal to edgeq.__version__)."""
    return ffi.string(lib.eq_version()).decode()


def nbytes(qtype_name: str, rows: int, cols: int) -> int:
    """Bytes of a (rows, cols) tensor in the canonical layout, as C computes it."""
    rows, cols = _check_shape(rows, cols)
    size = lib.eq_qtype_nbytes(_qtype_id(qtype_name), rows, cols)
    if size == 0:
        raise EdgeqError(f"size of a ({rows}, {cols}) {qtype_name} tensor overflows size_t")
    return int(size)


# ---------------------------------------------------------------------------------------------
# fp16 conversion (scalar calls; for tests and small tables, not bulk data)
# ---------------------------------------------------------------------------------------------

def fp16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """uint16 fp16 bit patterns -> float32, through eq_fp16_to_fp32."""
    bits = np.asarray(bits, dtype=np.uint16)
    out = np.array([lib.eq_fp16_to_fp32(int(b)) for b in bits.reshape(-1)], dtype=np.float32)
    return out.reshape(bits.shape)


def float32_to_fp16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> uint16 fp16 bit patterns (round to nearest even), through eq_fp32_to_fp16."""
    values = np.asarray(values, dtype=np.float32)
    out = np.array([lib.eq_fp32_to_fp16(float(v)) for v in values.reshape(-1)], dtype=np.uint16)
    return out.reshape(values.shape)


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------

def dequantize(qtype_name: str, data: np.ndarray, rows: int, cols: int,
               row_begin: int = 0, row_count: int | None = None) -> np.ndarray:
    """Stored bytes of a (rows, cols) tensor -> float32 (row_count, cols) of rows from row_begin
    (all rows by default). Plain f32/f16 tensors are passed as their raw bytes too."""
    qtype_id = _qtype_id(qtype_name)
    rows, cols = _check_shape(rows, cols)
    data = _check_bytes(data)
    row_begin = int(row_begin)
    row_count = rows - row_begin if row_count is None else int(row_count)
    if row_begin < 0 or row_count < 0:
        raise ValueError(f"row range must be non-negative, got begin {row_begin}, count {row_count}")
    out = np.empty((row_count, cols), dtype=np.float32)
    code = lib.eq_dequantize_rows(qtype_id, ffi.from_buffer("uint8_t[]", data), data.nbytes, rows, cols,
                                  row_begin, row_count, ffi.from_buffer("float[]", out))
    _check(code, f"dequantize {qtype_name} ({rows}, {cols}) rows {row_begin}..{row_begin + row_count}")
    return out


def gemm(qtype_name: str, data: np.ndarray, rows: int, cols: int, x: np.ndarray,
         isa: str | None = None) -> np.ndarray:
    """Y = X W^T for W the (rows, cols) tensor in `data`: x float32 (n, cols) -> y float32 (n, rows),
    every vector through one batched call. isa names a kernel set (one of kernel_sets()) instead
    of the active one."""
    qtype_id = _qtype_id(qtype_name)
    rows, cols = _check_shape(rows, cols)
    data = _check_bytes(data)
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise TypeError(f"x must be a numpy float32 array, got {getattr(x, 'dtype', type(x))}")
    if x.ndim != 2 or x.shape[1] != cols or x.shape[0] < 1:
        raise ValueError(f"x must have shape (n, {cols}) with n >= 1, got {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous")
    n = x.shape[0]
    y = np.empty((n, rows), dtype=np.float32)
    args = (qtype_id, ffi.from_buffer("uint8_t[]", data), data.nbytes, rows, cols,
            ffi.from_buffer("float[]", x), n, ffi.from_buffer("float[]", y))
    if isa is None:
        code = lib.eq_gemm(*args)
    else:
        code = lib.eq_gemm_isa(isa.encode(), *args)
        if code == lib.EQ_ERR_NOT_FOUND:
            raise EdgeqError(f"kernel set {isa!r} does not exist or this CPU cannot run it")
    _check(code, f"gemm {qtype_name} ({rows}, {cols}) x {n}{f' with kernel set {isa}' if isa else ''}")
    return y


def gemv(qtype_name: str, data: np.ndarray, rows: int, cols: int, x: np.ndarray,
         isa: str | None = None) -> np.ndarray:
    """y = W x for W the (rows, cols) tensor in `data`; x float32 (cols,) -> y float32 (rows,).
    isa names a kernel set (one of kernel_sets()) instead of the active one."""
    _check_floats(x, _check_shape(rows, cols)[1], "x")
    return gemm(qtype_name, data, rows, cols, x.reshape(1, -1), isa=isa).reshape(-1)


def gemv_time(qtype_name: str, data: np.ndarray, rows: int, cols: int, copies: int = 1, threads: int = 0,
              repeats: int = 15) -> float:
    """Median seconds of `repeats` decode products with the (rows, cols) tensor in `data`, threaded
    and chunked as the forward pass runs them on the active kernel set, each reading the least
    recently read of `copies` copies (eq_gemv_time; edgeq profile)."""
    qtype_id = _qtype_id(qtype_name)
    rows, cols = _check_shape(rows, cols)
    data = _check_bytes(data)
    seconds = ffi.new("double *")
    code = lib.eq_gemv_time(qtype_id, ffi.from_buffer("uint8_t[]", data), data.nbytes, rows, cols,
                            _int_arg(copies, "copies", minimum=1), _int_arg(threads, "threads"),
                            _int_arg(repeats, "repeats", minimum=1), seconds)
    _check(code, f"timing gemv {qtype_name} ({rows}, {cols})")
    return float(seconds[0])


def all_kernel_sets() -> list[str]:
    """Every kernel set this library has, best first (the reference "ref" last): the one list."""
    return [ffi.string(lib.eq_kernel_set_name(i)).decode() for i in range(lib.eq_kernel_set_count())]


def kernel_sets() -> list[str]:
    """The kernel sets this CPU runs, best first."""
    return [name for name in all_kernel_sets() if lib.eq_isa_available(name.encode())]


def _isa_error() -> str:
    requested = os.environ.get("EDGEQ_ISA", "")
    reason = "this CPU cannot run it" if requested in all_kernel_sets() else "no kernel set has that name"
    return (f"EDGEQ_ISA={requested}: {reason}; sets this CPU runs: {', '.join(kernel_sets())} "
            f"(unset EDGEQ_ISA or set it to auto to choose the best)")


def isa() -> str:
    """The active kernel set's name (see kernel_sets()); EdgeqError when EDGEQ_ISA names no set
    this CPU runs."""
    name = lib.eq_isa_name()
    if name == ffi.NULL:
        raise EdgeqError(_isa_error())
    return ffi.string(name).decode()


def kernel_route(qtype_name: str, isa: str | None = None, batch: int = 1) -> dict:
    """How a product of `qtype_name` with `batch` input vectors (1: decode; a prompt: prefill) runs
    under kernel set `isa` (None: the active one): the set that runs it ("set"; a set hands paths
    it lacks to the next one), the path ("lut", "multiply-add", "float", "reference") and a
    one-line description ("detail")."""
    set_name, path, detail = ffi.new("char *[1]"), ffi.new("char *[1]"), ffi.new("char *[1]")
    code = lib.eq_kernel_route(isa.encode() if isa else ffi.NULL, _qtype_id(qtype_name), max(1, int(batch)),
                               set_name, path, detail)
    if code == lib.EQ_ERR_NOT_FOUND:
        raise EdgeqError(f"kernel set {isa!r} does not exist or this CPU cannot run it")
    _check(code, f"kernel route of {qtype_name}")
    return {name: ffi.string(value[0]).decode() for name, value in
            (("set", set_name), ("path", path), ("detail", detail))}


def prepared_bytes(qtype_name: str, n: int, cols: int) -> int:
    """Bytes the runtime reserves to prepare n input vectors of cols activations for products of
    `qtype_name` (0 when its family prepares nothing)."""
    return int(lib.eq_prepared_bytes(_qtype_id(qtype_name), n, cols))


def select_isa(name: str) -> None:
    """Make kernel set `name` the active one for this process (tests and benchmarks)."""
    if lib.eq_select_isa(name.encode()) != lib.EQ_OK:
        raise EdgeqError(f"kernel set {name!r} does not exist or this CPU cannot run it; "
                         f"available: {', '.join(kernel_sets())}")


# ---------------------------------------------------------------------------------------------
# the runtime: models
# ---------------------------------------------------------------------------------------------

ARCH_NAMES = {0: "llama", 1: "qwen2", 2: "qwen3", 3: "gemma3"}
# KV cache types (edgeq.h EQ_KV_*): fp16 (the default), fp32, int8 per block of 32 with an fp16 scale,
# and int8 keys with int4 values (per block of 32 with an fp16 scale)
KV_TYPES = {"f16": 0, "f32": 1, "q8": 2, "k8v4": 3}
_INFO_FIELDS = ("arch", "vocab_size", "dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                "max_seq_len", "n_ctx", "n_past", "n_threads", "kv_fp32", "kv_type", "weight_bytes", "kv_bytes",
                "file_bytes", "pool_jobs", "pool_jobs_alone")


def check_kv(kv) -> str:
    """A KV cache type name (f16, q8, k8v4, f32); anything else is an EdgeqError naming the choices."""
    if not isinstance(kv, str) or kv not in KV_TYPES:
        raise EdgeqError(f"unknown KV cache type {kv!r}: use f16 (the default), q8 (int8, about half the "
                         f"memory), k8v4 (int8 keys, int4 values, about 0.41x), or f32")
    return kv


class ModelHandle:
    """An open eq_model. Freed by model_close, or when garbage-collected; never usable once closed."""

    __slots__ = ("_pointer", "path", "vocab_size", "n_ctx", "__weakref__")

    def __init__(self, pointer, path: str, vocab_size: int, n_ctx: int):
        self._pointer = pointer       # cdata eq_model*, owned through ffi.gc
        self.path = path
        self.vocab_size = vocab_size
        self.n_ctx = n_ctx

    @property
    def closed(self) -> bool:
        return self._pointer is None

    def __repr__(self) -> str:
        return f"<edgeq model handle {self.path!r}{' closed' if self.closed else ''}>"


def _pointer(handle: ModelHandle):
    if not isinstance(handle, ModelHandle):
        raise TypeError(f"expected a ModelHandle from model_open, got {type(handle).__name__}")
    if handle._pointer is None:
        raise EdgeqError(f"{handle.path}: the model is closed")
    return handle._pointer


def _int_arg(value, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if value < minimum or value > 2**31 - 1:
        raise ValueError(f"{name} must be in [{minimum}, 2**31 - 1], got {value}")
    return value


def model_open(path, threads: int = 0, ctx: int = 0, kv_fp32: bool = False, kv: str = "f16") -> ModelHandle:
    """Open, map and validate a converted file. threads 0: physical cores; ctx 0: min(max_seq_len, 4096);
    kv: the KV cache type (KV_TYPES); kv_fp32 True is kv="f32" (an error with another kv)."""
    params = ffi.new("eq_model_params *")
    params.n_threads = _int_arg(threads, "threads")
    params.n_ctx = _int_arg(ctx, "ctx")
    kv = check_kv(kv)
    if kv_fp32 and kv not in ("f16", "f32"):
        raise EdgeqError(f"kv_fp32=True and kv={kv!r} disagree: give one of them")
    params.kv_type = KV_TYPES["f32"] if kv_fp32 else KV_TYPES[kv]
    isa()   # an EDGEQ_ISA naming no set this CPU runs: say which sets it does
    path = str(path)
    err = ffi.new("char[]", 512)
    pointer = lib.eq_model_open(path.encode(), params, err, len(err))
    if pointer == ffi.NULL:
        message = ffi.string(err).decode(errors="replace") or "cannot open the model"
        raise EdgeqError(message if path in message else f"{path}: {message}")
    pointer = ffi.gc(pointer, lib.eq_model_close)
    info = ffi.new("eq_model_info *")
    _check(lib.eq_model_get_info(pointer, info), f"{path}: model info")
    return ModelHandle(pointer, path, int(info.vocab_size), int(info.n_ctx))


def model_close(handle: ModelHandle) -> None:
    """Free the model now (idempotent). The caller makes sure no other thread is using it."""
    if not isinstance(handle, ModelHandle):
        raise TypeError(f"expected a ModelHandle from model_open, got {type(handle).__name__}")
    pointer, handle._pointer = handle._pointer, None
    if pointer is not None:
        ffi.release(pointer)      # runs eq_model_close now instead of at garbage collection


def model_info(handle: ModelHandle) -> dict:
    """The eq_model_info fields as a dict (arch as its name: "llama" | "qwen2" | "qwen3" | "gemma3")."""
    info = ffi.new("eq_model_info *")
    _check(lib.eq_model_get_info(_pointer(handle), info), f"{handle.path}: model info")
    result = {name: int(getattr(info, name)) for name in _INFO_FIELDS}
    result["arch"] = ARCH_NAMES.get(result["arch"], str(result["arch"]))
    result["kv_fp32"] = bool(result["kv_fp32"])
    result["kv"] = {v: k for k, v in KV_TYPES.items()}.get(result.pop("kv_type"), "?")
    return result


def _check_tokens(tokens, vocab_size: int) -> np.ndarray:
    array = np.asarray(tokens)
    if array.ndim != 1:
        raise ValueError(f"tokens must be a 1-D sequence of ids, got shape {array.shape}")
    if array.size == 0:
        raise ValueError("tokens must not be empty")
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"tokens must be integers, got {array.dtype}")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size})")
    return np.ascontiguousarray(array, dtype=np.int32)


def model_eval(handle: ModelHandle, tokens, all_logits: bool = False, logits: bool = True) -> np.ndarray | None:
    """Append `tokens` to the KV cache and run the forward pass.

    Returns float32 logits: (vocab,) for the last token, (n, vocab) with all_logits, or None with
    logits=False (only fill the cache). Raises ContextFullError when n_past + n > n_ctx (nothing is
    evaluated) and EdgeqError when another thread is using the model.
    """
    pointer = _pointer(handle)
    ids = _check_tokens(tokens, handle.vocab_size)
    if not logits:
        out, out_pointer = None, ffi.NULL
    else:
        out = np.empty((len(ids), handle.vocab_size) if all_logits else (handle.vocab_size,), dtype=np.float32)
        out_pointer = ffi.from_buffer("float[]", out)
    code = lib.eq_model_eval(pointer, ffi.from_buffer("int32_t[]", ids), len(ids), out_pointer,
                             1 if all_logits and logits else 0)
    _check(code, f"{handle.path}: evaluating {len(ids)} tokens", pointer)
    return out


def model_truncate(handle: ModelHandle, n_keep: int) -> None:
    """Keep the first n_keep tokens of the KV cache (0 empties it)."""
    pointer = _pointer(handle)
    _check(lib.eq_model_truncate(pointer, _int_arg(n_keep, "n_keep")), f"{handle.path}: truncating to {n_keep} tokens",
           pointer)


def physical_cores() -> int:
    """Physical cores of this machine (at least 1): the default thread count."""
    return int(lib.eq_physical_cores())


# ---------------------------------------------------------------------------------------------
# memory read bandwidth (the decode roofline's numerator)
# ---------------------------------------------------------------------------------------------

BANDWIDTH_DEFAULT_BYTES = 256 << 20    # >= 4x the last-level cache of the machines we target


def memory_read_bandwidth(bytes: int = BANDWIDTH_DEFAULT_BYTES, threads: int = 0, repeats: int = 5) -> float:
    """GB/s (1e9 bytes/s) of `threads` threads (0: physical cores) summing a `bytes` buffer: the best
    of `repeats` passes, through eq_memory_read_bandwidth."""
    if isinstance(bytes, bool) or not isinstance(bytes, (int, np.integer)) or bytes < 1:
        raise ValueError(f"bytes must be a positive integer, got {bytes!r}")
    size = int(bytes)
    rate = lib.eq_memory_read_bandwidth(size, _int_arg(threads, "threads"), _int_arg(repeats, "repeats", minimum=1))
    if rate < 0:
        _check(int(rate), f"measuring the memory read bandwidth over {size} bytes")
    return float(rate)
