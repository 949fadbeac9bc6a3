"""The edgeq file: a GGUF v3 container with general.architecture = "edgeq" (so llama.cpp refuses it),
written with gguf.GGUFWriter and read with the bounded reader in edgeq.gguffile.

Metadata (what the writer puts in; "optional" keys may be absent):
  edgeq.format_version            u32   FORMAT_VERSION (2; version 1 files are read too)
  edgeq.required_features         str[] optional (since version 2): features a reader must have to use
                                        the file; absent = none. Writers list only what a file needs:
                                        "compact-tail" when some tensor has a partial last group
                                        stored in fewer columns than G, "packed-fields" when some
                                        tensor is packed at 5 or 6 bits (edgeq.quant_types)
  edgeq.arch                      str   "llama" | "qwen2" | "qwen3" | "gemma3"
  edgeq.<hyper-parameter>         ModelConfig fields (u32 / f64 / bool / str), see CONFIG_KEYS
  edgeq.tokenizer.kind            str   "hf-json" -> tokenizer.huggingface.json (str)
                                        "sentencepiece" -> edgeq.tokenizer.sentencepiece (u8 array)
  tokenizer.ggml.bos_token_id / eos_token_id (u32, when known), tokenizer.ggml.add_bos_token (bool),
  tokenizer.chat_template (str, when known), edgeq.tokenizer.extra_eos_ids (u32 array, when any),
  tokenizer.ggml.padding_token_id / unknown_token_id (u32, when known: carried to `edgeq export`)
  edgeq.generation                str   generation defaults as JSON
  edgeq.source, edgeq.source_kind, edgeq.converter_version, edgeq.calibration_hash   provenance
  edgeq.tensor.<name>.type        str   quant type name (edgeq.quant_types.TYPES)
  edgeq.tensor.<name>.shape       u64[] logical shape, numpy order ((M, K) for linear weights)
  edgeq.tensor.<name>.bits / .group (u32), .symmetric (bool), .method (str)
  edgeq.tensor.<name>.score       f64   optional: a mixed-precision plan's error estimate for the tensor
                                        (estimated KL divergence its quantization costs, nats;
                                        edgeq.convert.allocate)
Tensors carry canonical names (edgeq.config). How a tensor is stored follows its type's family:
plain types are GGUF F32/F16 tensors, uniform bit-plane and uniform packed types I8 blobs of the
type's nbytes. An older reader that lacks a type (e.g. the packed p*g* types, added in 0.1.0 after
the bit-plane ones) refuses the file naming the type and the writer's version.
Tensor data is 64-byte aligned. Files are created with the mode the umask gives (0666 & ~umask).

Compatibility policy (the C loader in native/src/model.c applies the same):
  - A reader accepts every format version it knows (READ_VERSIONS: 1 and 2): files written by an
    older edgeq keep loading. A higher version is refused: "FILE: edgeq format version N, written
    by edgeq V; this edgeq (X) reads versions 1–2: upgrade edgeq".
  - A file naming a feature in edgeq.required_features that this reader lacks (FEATURES:
    "compact-tail", "packed-fields") is refused: "FILE: needs feature 'NAME' (written by edgeq V), which this
    edgeq (X) does not have; upgrade edgeq". So a file whose K are all multiples of their groups
    (the layouts agree) stays readable by the edgeq versions before compact tails.
  - Files without "compact-tail" pad a partial last group to G columns: readers check sizes and
    dequantize with that layout (TensorInfo.compact_tail False; the C loader converts at load).
  - Files without "packed-fields" stored p5/p6 levels a byte each: such tensors are refused with
    "convert the model again" (few files had them: --layout packed at 5-6 bits, or a Q5_0/Q5_1 GGUF).
  - Config keys added after version 1 are optional: ADDED_CONFIG_KEYS lists them, and a file
    without one gets the ModelConfig default (edgeq.config): the qwen3/gemma3 fields (qk_norm,
    post_norms, ffn_act, embed_scale, attn_scale, attn_softcap, final_softcap, sliding_window,
    layer_types, rope_local_theta), whose defaults are llama's block. A reader that lacks an
    architecture refuses the file naming it (edgeq.arch).
  - A tensor whose quant type this reader does not know is refused, naming the type and the
    writer's version.
The file is untrusted: edgeq.gguffile checks the container (counts, lengths, offsets, overlaps,
sizes) in bounded time and memory, and ModelFile checks what the keys say with the same rules as
the C loader (value ranges, every tensor's type, shape and size against the model's dimensions).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from . import __version__, gguffile, quant_types
from .config import SUPPORTED_ARCHITECTURES, ModelConfig, TokenizerSpec
from .errors import EdgeqError

FORMAT_VERSION = 2                  # what the writer writes
READ_VERSIONS = (1, 2)              # what the reader accepts
COMPACT_TAIL = "compact-tail"       # a partial last group is stored in GROUP_STEP columns, not G
PACKED_FIELDS = "packed-fields"     # p5/p6 levels are planes of bit fields, not a byte each (quant_types)
FEATURES: frozenset[str] = frozenset({COMPACT_TAIL, PACKED_FIELDS})   # the required_features this reader implements
ARCHITECTURE = "edgeq"
ALIGNMENT = 64
CONFIG_KEYS = [f.name for f in fields(ModelConfig) if f.name != "extra"]
ADDED_CONFIG_KEYS: tuple[str, ...] = (   # config keys newer than format version 1: optional when reading
    "qk_norm", "post_norms", "ffn_act", "embed_scale", "attn_scale", "attn_softcap", "final_softcap",
    "sliding_window", "layer_types", "rope_local_theta")


def _gguf():
    import gguf
    return gguf


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------

def _add_config(writer, config: ModelConfig) -> None:
    for key in CONFIG_KEYS:
        value = getattr(config, key)
        name = f"edgeq.{key}"
        if isinstance(value, bool):
            writer.add_bool(name, value)
        elif isinstance(value, int):
            writer.add_uint32(name, value)
        elif isinstance(value, float):
            writer.add_float64(name, value)
        else:
            writer.add_string(name, value)


def _add_tokenizer(writer, tokenizer: TokenizerSpec) -> None:
    writer.add_string("edgeq.tokenizer.kind", tokenizer.kind)
    if tokenizer.kind == "hf-json":
        writer.add_string("tokenizer.huggingface.json", tokenizer.data)
    else:
        writer.add_array("edgeq.tokenizer.sentencepiece", bytes(tokenizer.data))
    if tokenizer.bos_id is not None:
        writer.add_uint32("tokenizer.ggml.bos_token_id", tokenizer.bos_id)
    if tokenizer.eos_id is not None:
        writer.add_uint32("tokenizer.ggml.eos_token_id", tokenizer.eos_id)
    writer.add_bool("tokenizer.ggml.add_bos_token", tokenizer.add_bos)
    if tokenizer.chat_template:
        writer.add_string("tokenizer.chat_template", tokenizer.chat_template)
    if tokenizer.pad_id is not None:
        writer.add_uint32("tokenizer.ggml.padding_token_id", tokenizer.pad_id)
    if tokenizer.unk_id is not None:
        writer.add_uint32("tokenizer.ggml.unknown_token_id", tokenizer.unk_id)
    if tokenizer.extra_eos_ids:
        writer.add_key_value("edgeq.tokenizer.extra_eos_ids", list(tokenizer.extra_eos_ids),
                             _gguf().GGUFValueType.ARRAY, sub_type=_gguf().GGUFValueType.UINT32)


@dataclass
class TensorPlanEntry:
    name: str
    qtype: quant_types.QuantType
    shape: tuple[int, ...]
    method: str               # how the quantizer chose levels, e.g. "rtn-clip-search"
    score: float | None = None  # mixed precision: the allocator's error estimate (KL, nats)

    def nbytes(self) -> int:
        return self.qtype.nbytes_for_shape(self.shape)


def _storage(entry: TensorPlanEntry) -> tuple[tuple[int, ...], np.dtype]:
    """How a tensor is stored, by its type's family: (GGUF shape in numpy order, element dtype)."""
    family = entry.qtype.family
    if family == quant_types.PLAIN:
        return entry.shape, np.dtype(entry.qtype.dtype)          # F32 / F16
    if family in quant_types.BLOB_FAMILIES:
        return (entry.nbytes(),), np.dtype(np.int8)             # an I8 blob of packed bytes
    raise ValueError(f"{entry.name}: no storage for the {family} family")


def required_features(entries: list[TensorPlanEntry]) -> list[str]:
    """What a reader must implement to read these tensors: "compact-tail" when a partial last group
    is stored narrower than the layout before it, "packed-fields" when a p5/p6 tensor's levels are
    bit fields (only then: other files stay readable by older edgeq)."""
    compact = any(entry.nbytes() != entry.qtype.nbytes_for_shape(entry.shape, compact_tail=False)
                  for entry in entries)
    fields = any(_byte_layout_before_fields(entry.qtype) for entry in entries)
    return [COMPACT_TAIL] * compact + [PACKED_FIELDS] * fields


def _byte_layout_before_fields(qtype: quant_types.QuantType) -> bool:
    """Types whose levels files before "packed-fields" stored a byte each: packed at 5 and 6 bits."""
    return qtype.family == quant_types.UNIFORM_PACKED and qtype.bits in (5, 6)


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


@contextmanager
def atomic_gguf_writer(path: str | os.PathLike, make_writer: Callable[[Path], "object"]):
    """A GGUFWriter (`make_writer(tmp)`) on a temporary file beside `path`, which is renamed into place
    only when the block completes; on any error or interrupt the temporary file is removed and `path`
    is untouched. An OSError (a full disk) becomes one EdgeqError line. Used by every GGUF writer."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise EdgeqError(f"{path}: the output folder {directory} does not exist")
    if path.is_dir():
        raise EdgeqError(f"{path}: is a folder; give a file name for the output")
    try:
        handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as error:
        raise EdgeqError(f"{path}: cannot write to {directory} ({error.strerror})") from None
    os.close(handle)
    tmp = Path(tmp_name)
    writer = None
    try:
        writer = make_writer(tmp)
        yield writer
        writer.close()
        writer = None
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())        # mkstemp made it 0600; a file the user writes respects the umask
        os.replace(tmp, path)
    except OSError as error:
        raise EdgeqError(f"{path}: writing failed ({error.strerror or error}); nothing was written") from None
    finally:
        if writer is not None:
            try:
                writer.close()
            except Exception:
                pass
        if tmp.exists():
            tmp.unlink()


def write_model_file(path: str | os.PathLike, config: ModelConfig, tokenizer: TokenizerSpec,
                     generation: dict, provenance: dict, entries: list[TensorPlanEntry],
                     produce: Callable[[TensorPlanEntry], "object"], progress: Iterable | None = None) -> None:
    """Stream a model file: header first (every size is known from the plan), then each tensor as
    `produce(entry)` returns it (a QuantizedTensor), through atomic_gguf_writer (no partial file).
    """
    gguf = _gguf()
    make = lambda tmp: _header_writer(gguf, tmp, config, tokenizer, generation, provenance, entries)  # noqa: E731
    with atomic_gguf_writer(path, make) as writer:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for entry in progress if progress is not None else entries:
            tensor = produce(entry)
            data = np.ascontiguousarray(tensor.data).view(_storage(entry)[1])
            if data.nbytes != entry.nbytes():
                raise AssertionError(f"{entry.name}: produced {data.nbytes} bytes, planned {entry.nbytes()}")
            writer.write_tensor_data(data)


def header_bytes(config: ModelConfig, tokenizer: TokenizerSpec, generation: dict, provenance: dict,
                 entries: list[TensorPlanEntry]) -> int:
    """Bytes before the first tensor of the file write_model_file would write for these entries
    (header, metadata, tensor infos, padding to ALIGNMENT): written to a scratch file and measured."""
    gguf = _gguf()
    handle, tmp_name = tempfile.mkstemp(prefix=".edgeq-header.", suffix=".tmp")
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        writer = _header_writer(gguf, tmp, config, tokenizer, generation, provenance, entries)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        writer.close()
        return -(-tmp.stat().st_size // ALIGNMENT) * ALIGNMENT
    finally:
        tmp.unlink(missing_ok=True)


def _header_writer(gguf, tmp: Path, config: ModelConfig, tokenizer: TokenizerSpec, generation: dict,
                   provenance: dict, entries: list[TensorPlanEntry]):
    """A GGUFWriter on `tmp` holding every key and tensor info of the file (nothing written yet)."""
    writer = gguf.GGUFWriter(tmp, ARCHITECTURE)
    writer.add_custom_alignment(ALIGNMENT)
    writer.add_uint32("edgeq.format_version", FORMAT_VERSION)
    features = required_features(entries)
    if features:
        writer.add_array("edgeq.required_features", features)
    if provenance.get("source_name"):
        writer.add_name(provenance["source_name"])
    _add_config(writer, config)
    _add_tokenizer(writer, tokenizer)
    writer.add_string("edgeq.generation", json.dumps(generation or {}, sort_keys=True))
    writer.add_string("edgeq.source", str(provenance.get("source", "")))
    writer.add_string("edgeq.source_kind", str(provenance.get("source_kind", "")))
    writer.add_string("edgeq.converter_version", __version__)
    writer.add_string("edgeq.calibration_hash", str(provenance.get("calibration_hash", "")))
    for key, value in provenance.get("settings", {}).items():
        writer.add_string(f"edgeq.settings.{key}", str(value))
    for entry in entries:
        prefix = f"edgeq.tensor.{entry.name}"
        writer.add_string(f"{prefix}.type", entry.qtype.name)
        writer.add_key_value(f"{prefix}.shape", list(entry.shape), gguf.GGUFValueType.ARRAY,
                             sub_type=gguf.GGUFValueType.UINT64)
        writer.add_uint32(f"{prefix}.bits", entry.qtype.bits)
        writer.add_uint32(f"{prefix}.group", entry.qtype.group)
        writer.add_bool(f"{prefix}.symmetric", entry.qtype.symmetric)
        writer.add_string(f"{prefix}.method", entry.method)
        if entry.score is not None:
            writer.add_float64(f"{prefix}.score", float(entry.score))
        stored_shape, dtype = _storage(entry)
        writer.add_tensor_info(entry.name, stored_shape, dtype, entry.nbytes())
    return writer


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------

# what the C loader accepts for each config key (native/src/model.c read_config): (low, high)
CONFIG_LIMITS = {
    "vocab_size": (1, 1 << 24), "dim": (1, 1 << 16), "hidden_dim": (1, 1 << 18), "n_layers": (1, 1 << 10),
    "n_heads": (1, 1 << 10), "n_kv_heads": (1, 1 << 10), "head_dim": (2, 1 << 10), "max_seq_len": (1, 1 << 24),
    "rope_theta": (1e-3, 1e12), "norm_eps": (0.0, 1.0), "rope_scaling_factor": (1e-6, 1e6),
    "rope_low_freq_factor": (1e-6, 1e6), "rope_high_freq_factor": (1e-6, 1e6),
    "rope_original_max_seq_len": (0, 1 << 24),
    "embed_scale": (1e-6, 1e6), "attn_scale": (0.0, 1e3), "attn_softcap": (0.0, 1e6), "final_softcap": (0.0, 1e6),
    "sliding_window": (0, 1 << 24), "rope_local_theta": (0.0, 1e12),
}
FFN_ACTIVATIONS = ("silu", "gelu_tanh")
ROPE_SCALING_TYPES = ("none", "linear", "llama3")
VECTOR_TYPE = quant_types.TYPES["f32"]     # 1-D tensors (norms, biases): the runtime reads float arrays
ALIGNED_BYTES = 4                          # packed tensors and vectors start at a multiple of this

# GGUF element type each family's tensors are stored as (plain: by the type's dtype)
_PLAIN_GGML = {"<f4": gguffile.GGML_F32, "<f2": gguffile.GGML_F16}


@dataclass
class TensorInfo:
    name: str
    qtype: quant_types.QuantType
    shape: tuple[int, ...]
    method: str
    nbytes: int
    data: np.ndarray          # (nbytes,) uint8, a read-only view of the mapped file
    compact_tail: bool = True  # data's layout: False in files without "compact-tail" (quant_types)
    score: float | None = None  # mixed precision: the allocator's error estimate (KL, nats), when recorded


class ModelFile:
    """A converted file, opened read-only and validated as untrusted input (the same rules as the C
    loader); tensors dequantize on demand. Raises EdgeqError("FILE: ...") for anything wrong."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise EdgeqError(f"{path}: no such file")
        with open(self.path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise EdgeqError(f"{path}: not an edgeq file (no GGUF magic); convert a model with `edgeq convert`")
        self.gguf = gguffile.GGUFFile(self.path, metadata_only=True)
        arch = self.get("general.architecture")
        if arch != ARCHITECTURE:
            raise EdgeqError(f"{path}: a GGUF file for {arch!r}, not an edgeq file; convert it with "
                             f"`edgeq convert {self.path.name} -o model.edgeq`")
        self.gguf.read_tensors()
        self.format_version = self._check_version()
        features = self._array("edgeq.required_features", (gguffile.STRING,), "an array of strings", [])
        self.compact_tail, self.packed_fields = COMPACT_TAIL in features, PACKED_FIELDS in features
        self.config = self._config()
        self.tokenizer = self._tokenizer()
        self.generation = self._generation()
        self.provenance = {key: self._str(f"edgeq.{key}", "") for key in
                           ("source", "source_kind", "converter_version", "calibration_hash")}
        self.settings = {k[len("edgeq.settings."):]: self._str(k) for k in self.gguf.keys
                         if k.startswith("edgeq.settings.")}
        self.tensors = self._tensors()

    # -- metadata, typed as the C loader reads it ----------------------------------------------

    def get(self, key, default=None):
        """The value of `key` as stored (scalars, str, numeric arrays as numpy views), or `default`."""
        value = self.gguf.value(key)
        return default if value is None else value

    def need(self, key):
        value = self.gguf.value(key)
        if value is None:
            raise EdgeqError(f"{self.path}: metadata {key} is missing; the file is incomplete (convert the model again)")
        return value

    def _typed(self, key, types, expected, default):
        entry = self.gguf.keys.get(key)
        if entry is None:
            if default is _REQUIRED:
                raise EdgeqError(f"{self.path}: metadata {key} is missing; the file is incomplete "
                                 "(convert the model again)")
            return default
        if entry.type not in types:
            raise EdgeqError(f"{self.path}: metadata {key} is invalid (expected {expected}, found a "
                             f"{gguffile.TYPE_NAMES[entry.type]})")
        return self.gguf.value(key)

    def _int(self, key, low, high, default=None):
        value = self._typed(key, gguffile.INTEGER_TYPES, "an integer", default)
        if value is not default and not low <= value <= high:
            raise EdgeqError(f"{self.path}: metadata {key} is invalid (expected an integer in [{low}, {high}], "
                             f"found {value})")
        return value

    def _real(self, key, low, high, default=None):
        value = self._typed(key, (gguffile.FLOAT32, gguffile.FLOAT64), "a number", default)
        if value is not default and not (math.isfinite(value) and low <= value <= high):
            raise EdgeqError(f"{self.path}: metadata {key} is invalid (expected a number in [{low:g}, {high:g}], "
                             f"found {value!r})")
        return value

    def _bool(self, key, default=None):
        return self._typed(key, (gguffile.BOOL,), "a boolean", default)

    def _str(self, key, default=None):
        return self._typed(key, (gguffile.STRING,), "a string", default)

    def _array(self, key, elem_types, expected, default=None):
        value = self._typed(key, (gguffile.ARRAY,), expected, default)
        if value is not default and self.gguf.keys[key].elem_type not in elem_types:
            raise EdgeqError(f"{self.path}: metadata {key} is invalid (expected {expected})")
        return value

    # -- the compatibility policy --------------------------------------------------------------

    def _writer(self) -> str:
        """The writer's edgeq version, safe for a one-line message."""
        version = self._str("edgeq.converter_version", "") or "unknown"
        return gguffile.printable(version.encode("utf-8", "replace"))

    def _check_version(self) -> int:
        version = self._int("edgeq.format_version", 0, (1 << 64) - 1, _REQUIRED)
        writer = self._writer()
        if version > max(READ_VERSIONS):
            raise EdgeqError(f"{self.path}: edgeq format version {version}, written by edgeq {writer}; this edgeq "
                             f"({__version__}) reads versions {min(READ_VERSIONS)}–{max(READ_VERSIONS)}: upgrade edgeq")
        if version not in READ_VERSIONS:
            raise EdgeqError(f"{self.path}: edgeq format version {version} does not exist (versions start at 1); "
                             "the file is corrupted: convert the model again")
        features = self._array("edgeq.required_features", (gguffile.STRING,), "an array of strings", [])
        for feature in features:
            if feature not in FEATURES:
                shown = gguffile.printable(feature.encode("utf-8", "replace"))
                raise EdgeqError(f"{self.path}: needs feature '{shown}' (written by edgeq {writer}), which this "
                                 f"edgeq ({__version__}) does not have; upgrade edgeq")
        return version

    # -- config, tokenizer, generation defaults ------------------------------------------------

    def _config(self) -> ModelConfig:
        values = {}
        for f in fields(ModelConfig):
            if f.name == "extra":
                continue
            key = f"edgeq.{f.name}"
            default = f.default if f.name in ADDED_CONFIG_KEYS else _REQUIRED
            low, high = CONFIG_LIMITS.get(f.name, (None, None))
            if f.type == "int":
                values[f.name] = self._int(key, low, high, default)
            elif f.type == "float":
                values[f.name] = self._real(key, low, high, default)
            elif f.type == "bool":
                values[f.name] = self._bool(key, default)
            else:
                values[f.name] = self._str(key, default)
        c = ModelConfig(**values)
        if c.arch not in SUPPORTED_ARCHITECTURES:
            raise EdgeqError(f"{self.path}: architecture {c.arch!r} is not supported ({', '.join(SUPPORTED_ARCHITECTURES)})")
        if c.head_dim % 2 or c.n_heads % c.n_kv_heads:
            raise EdgeqError(f"{self.path}: inconsistent attention dimensions (head_dim {c.head_dim}, heads "
                             f"{c.n_heads}, kv heads {c.n_kv_heads})")
        if c.ffn_act not in FFN_ACTIVATIONS:
            raise EdgeqError(f"{self.path}: MLP activation {c.ffn_act!r} is not supported ({', '.join(FFN_ACTIVATIONS)})")
        if c.layer_types and (len(c.layer_types) != c.n_layers or set(c.layer_types) - set("gs")):
            raise EdgeqError(f"{self.path}: layer_types must be one letter (g or s) per layer")
        if c.rope_scaling_type not in ROPE_SCALING_TYPES:
            raise EdgeqError(f"{self.path}: rope scaling {c.rope_scaling_type!r} is not supported "
                             f"({', '.join(ROPE_SCALING_TYPES)})")
        if c.rope_scaling_type == "llama3" and (c.rope_original_max_seq_len < 1 or
                                                 c.rope_high_freq_factor <= c.rope_low_freq_factor):
            raise EdgeqError(f"{self.path}: llama3 rope scaling needs original_max_seq_len >= 1 and "
                             "high_freq_factor > low_freq_factor")
        return c

    def _tokenizer(self) -> TokenizerSpec:
        kind = self._str("edgeq.tokenizer.kind", _REQUIRED)
        if kind == "hf-json":
            data = self._str("tokenizer.huggingface.json", _REQUIRED)
        elif kind == "sentencepiece":
            data = self._array("edgeq.tokenizer.sentencepiece", (gguffile.UINT8, gguffile.INT8),
                               "an array of bytes", _REQUIRED).tobytes()
        else:
            raise EdgeqError(f"{self.path}: unknown tokenizer kind {kind!r}")
        vocab = (0, self.config.vocab_size - 1)
        extra = self._array("edgeq.tokenizer.extra_eos_ids", gguffile.INTEGER_TYPES, "an array of integers", [])
        if len(extra) and (len(extra) > self.config.vocab_size or np.any(extra < vocab[0]) or np.any(extra > vocab[1])):
            raise EdgeqError(f"{self.path}: metadata edgeq.tokenizer.extra_eos_ids holds ids outside the vocabulary")
        return TokenizerSpec(kind, data, self._int("tokenizer.ggml.bos_token_id", *vocab),
                             self._int("tokenizer.ggml.eos_token_id", *vocab),
                             bool(self._bool("tokenizer.ggml.add_bos_token", False)),
                             self._str("tokenizer.chat_template"), [int(i) for i in extra],
                             self._int("tokenizer.ggml.padding_token_id", *vocab),
                             self._int("tokenizer.ggml.unknown_token_id", *vocab))

    def _generation(self) -> dict:
        try:
            generation = json.loads(self._str("edgeq.generation", "") or "{}")
        except ValueError:
            generation = None
        if not isinstance(generation, dict):
            raise EdgeqError(f"{self.path}: metadata edgeq.generation is not a JSON object; convert the model again")
        return generation

    # -- tensors -------------------------------------------------------------------------------

    def _tensors(self) -> dict[str, TensorInfo]:
        """Every tensor the model needs, checked as the C loader checks it: a known quant type
        whose bits/group/symmetric agree, the model's shape, and stored type and size that agree
        with the quant type (gguffile has already placed every tensor inside the file, apart)."""
        stored = {t.name: t for t in self.gguf.tensors}
        writer = self._writer()
        result = {}
        for name in self.config.tensor_names():
            if name not in stored:
                raise EdgeqError(f"{self.path}: tensor {name} is missing; the file is incomplete (convert the model again)")
            prefix = f"edgeq.tensor.{name}"
            type_name = self._str(f"{prefix}.type", _REQUIRED)
            if type_name not in quant_types.TYPES:
                shown = gguffile.printable(type_name.encode("utf-8", "replace"))
                raise EdgeqError(f"{self.path}: tensor {name} has quant type '{shown}' (written by edgeq {writer}), "
                                 f"which this edgeq ({__version__}) does not know; upgrade edgeq")
            qtype = quant_types.TYPES[type_name]
            shape = self._array(f"{prefix}.shape", (gguffile.UINT64,), "an array of u64", _REQUIRED)
            if len(shape) != len(self.config.tensor_shape(name)):
                raise EdgeqError(f"{self.path}: tensor {name} has a shape of {len(shape)} dimensions, not "
                                 f"{len(self.config.tensor_shape(name))}")
            shape = tuple(int(d) for d in shape)
            if shape != self.config.tensor_shape(name):
                raise EdgeqError(f"{self.path}: tensor {name} has shape {shape}, which does not match the model's "
                                 f"dimensions {self.config.tensor_shape(name)}")
            if (self._int(f"{prefix}.bits", 0, 64, _REQUIRED), self._int(f"{prefix}.group", 0, 1 << 20, _REQUIRED),
                    self._bool(f"{prefix}.symmetric", _REQUIRED)) != (qtype.bits, qtype.group, qtype.symmetric):
                raise EdgeqError(f"{self.path}: tensor {name}: bits/group/symmetric disagree with its type {type_name}")
            if len(shape) == 1 and qtype != VECTOR_TYPE:
                raise EdgeqError(f"{self.path}: tensor {name} must be {VECTOR_TYPE.name}, not {type_name}")
            if _byte_layout_before_fields(qtype) and not self.packed_fields:
                raise EdgeqError(f"{self.path}: tensor {name}: {type_name} stored a byte per level (written by "
                                 f"edgeq {self._writer()} before the '{PACKED_FIELDS}' layout), which this edgeq "
                                 "does not read; convert the model again")
            tensor, nbytes = stored[name], qtype.nbytes_for_shape(shape, self.compact_tail)
            if tensor.ggml_type != self._ggml_type(qtype) or tensor.nbytes != nbytes:
                raise EdgeqError(f"{self.path}: tensor {name}: stored size or type disagrees with its metadata "
                                 f"({type_name}: {nbytes} bytes, stored {tensor.nbytes})")
            if (len(shape) == 1 or qtype.family != quant_types.PLAIN) and tensor.offset % ALIGNED_BYTES:
                raise EdgeqError(f"{self.path}: tensor {name} is misaligned")
            result[name] = TensorInfo(name, qtype, shape, self._str(f"{prefix}.method", ""), nbytes,
                                      self.gguf.tensor_data(tensor), self.compact_tail,
                                      self._real(f"{prefix}.score", 0.0, math.inf, None))
        return result

    @staticmethod
    def _ggml_type(qtype: quant_types.QuantType) -> int:
        if qtype.family == quant_types.PLAIN:
            return _PLAIN_GGML[qtype.dtype]
        if qtype.family in quant_types.BLOB_FAMILIES:
            return gguffile.GGML_I8
        raise EdgeqError(f"no storage rule for the {qtype.family} family")

    def load(self, name: str) -> np.ndarray:
        """Dequantized float32 tensor in its logical shape."""
        info = self.tensors[name]
        rows, cols = (1, info.shape[0]) if len(info.shape) == 1 else info.shape
        return quant_types.dequantize(info.qtype, info.data, rows, cols, info.compact_tail).reshape(info.shape)

    def file_size(self) -> int:
        return self.gguf.size


_REQUIRED = object()       # a metadata key without a default: missing is an error
