"""The edgeq file: a GGUF v3 container with general.architecture = "edgeq" (so llama.cpp refuses it),
read here with gguf.GGUFReader and written with gguf.GGUFWriter.

Metadata (all keys below are written; readers reject unknown format versions):
  edgeq.format_version            u32   FORMAT_VERSION
  edgeq.arch                      str   "llama" | "qwen2"
  edgeq.<hyper-parameter>         ModelConfig fields (u32 / f64 / bool / str), see CONFIG_KEYS
  edgeq.tokenizer.kind            str   "hf-json" -> tokenizer.huggingface.json (str)
                                        "sentencepiece" -> edgeq.tokenizer.sentencepiece (u8 array)
  tokenizer.ggml.bos_token_id / eos_token_id (u32, when known), tokenizer.ggml.add_bos_token (bool),
  tokenizer.chat_template (str, when known), edgeq.tokenizer.extra_eos_ids (u32 array, when any)
  edgeq.generation                str   generation defaults as JSON
  edgeq.source, edgeq.source_kind, edgeq.converter_version, edgeq.calibration_hash   provenance
  edgeq.tensor.<name>.type        str   quant type name (edgeq.quant_types.TYPES)
  edgeq.tensor.<name>.shape       u64[] logical shape, numpy order ((M, K) for linear weights)
  edgeq.tensor.<name>.bits / .group (u32), .symmetric (bool), .method (str)
Tensors carry canonical names (edgeq.config). Packed types are I8 blobs of the type's nbytes;
f32/f16 tensors are GGUF F32/F16. Tensor data is 64-byte aligned.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from . import __version__, quant_types
from .config import ModelConfig, TokenizerSpec
from .errors import EdgeqError

FORMAT_VERSION = 1
ARCHITECTURE = "edgeq"
ALIGNMENT = 64
CONFIG_KEYS = [f.name for f in fields(ModelConfig) if f.name != "extra"]


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
    if tokenizer.extra_eos_ids:
        writer.add_key_value("edgeq.tokenizer.extra_eos_ids", list(tokenizer.extra_eos_ids),
                             _gguf().GGUFValueType.ARRAY, sub_type=_gguf().GGUFValueType.UINT32)


@dataclass
class TensorPlanEntry:
    name: str
    qtype: quant_types.QuantType
    shape: tuple[int, ...]
    method: str               # how the quantizer chose levels, e.g. "rtn-clip-search"

    def nbytes(self) -> int:
        return self.qtype.nbytes_for_shape(self.shape)


def write_model_file(path: str | os.PathLike, config: ModelConfig, tokenizer: TokenizerSpec,
                     generation: dict, provenance: dict, entries: list[TensorPlanEntry],
                     produce: Callable[[TensorPlanEntry], "object"], progress: Iterable | None = None) -> None:
    """Stream a model file: header first (every size is known from the plan), then each tensor as
    `produce(entry)` returns it (a QuantizedTensor). Written to a temporary file beside `path` and
    renamed into place only when complete; on any error or interrupt the temporary file is removed.
    """
    gguf = _gguf()
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
        writer = gguf.GGUFWriter(tmp, ARCHITECTURE)
        writer.add_custom_alignment(ALIGNMENT)
        writer.add_uint32("edgeq.format_version", FORMAT_VERSION)
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
            if entry.qtype.plain:
                dtype = np.float32 if entry.qtype.name == "f32" else np.float16
                writer.add_tensor_info(entry.name, entry.shape, np.dtype(dtype), entry.nbytes())
            else:
                writer.add_tensor_info(entry.name, (entry.nbytes(),), np.dtype(np.int8), entry.nbytes())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for entry in progress if progress is not None else entries:
            tensor = produce(entry)
            data = tensor.data if entry.qtype.plain else tensor.data.view(np.int8)
            if data.nbytes != entry.nbytes():
                raise AssertionError(f"{entry.name}: produced {data.nbytes} bytes, planned {entry.nbytes()}")
            writer.write_tensor_data(np.ascontiguousarray(data))
        writer.close()
        writer = None
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
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


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------

@dataclass
class TensorInfo:
    name: str
    qtype: quant_types.QuantType
    shape: tuple[int, ...]
    method: str
    nbytes: int
    data: np.ndarray          # memory-mapped


class ModelFile:
    """A converted file, opened read-only and validated; tensors dequantize on demand."""

    def __init__(self, path: str | os.PathLike):
        gguf = _gguf()
        self.path = Path(path)
        if not self.path.is_file():
            raise EdgeqError(f"{path}: no such file")
        with open(self.path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise EdgeqError(f"{path}: not an edgeq file (no GGUF magic); convert a model with `edgeq convert`")
        try:
            self.reader = gguf.GGUFReader(self.path)
        except Exception as error:
            raise EdgeqError(f"{path}: corrupted or truncated file ({type(error).__name__}); convert it again") from None
        arch = self.get("general.architecture")
        if arch != ARCHITECTURE:
            raise EdgeqError(f"{path}: a GGUF file for {arch!r}, not an edgeq file; convert it with "
                             f"`edgeq convert {self.path.name} -o model.edgeq`")
        version = self.get("edgeq.format_version")
        if version != FORMAT_VERSION:
            raise EdgeqError(f"{path}: edgeq format version {version} is not supported by this edgeq "
                             f"(reads version {FORMAT_VERSION}); upgrade edgeq or convert again")
        self.config = ModelConfig(**{key: self.need(f"edgeq.{key}") for key in CONFIG_KEYS})
        self.tokenizer = self._tokenizer()
        self.generation = json.loads(self.get("edgeq.generation") or "{}")
        self.provenance = {key: self.get(f"edgeq.{key}") for key in
                           ("source", "source_kind", "converter_version", "calibration_hash")}
        self.settings = {k[len("edgeq.settings."):]: self.get(k) for k in self.reader.fields
                         if k.startswith("edgeq.settings.")}
        self.tensors = self._tensors()

    def get(self, key, default=None):
        field = self.reader.fields.get(key)
        if field is None:
            return default
        try:
            value = field.contents()
        except Exception:
            raise EdgeqError(f"{self.path}: metadata {key} is corrupted; convert the model again") from None
        return value

    def need(self, key):
        value = self.get(key)
        if value is None:
            raise EdgeqError(f"{self.path}: metadata {key} is missing; the file is incomplete")
        return value

    def _tokenizer(self) -> TokenizerSpec:
        kind = self.need("edgeq.tokenizer.kind")
        if kind == "hf-json":
            data = self.need("tokenizer.huggingface.json")
        elif kind == "sentencepiece":
            data = bytes(self.need("edgeq.tokenizer.sentencepiece"))
        else:
            raise EdgeqError(f"{self.path}: unknown tokenizer kind {kind!r}")
        return TokenizerSpec(kind, data, self.get("tokenizer.ggml.bos_token_id"),
                             self.get("tokenizer.ggml.eos_token_id"),
                             bool(self.get("tokenizer.ggml.add_bos_token", False)),
                             self.get("tokenizer.chat_template"),
                             list(self.get("edgeq.tokenizer.extra_eos_ids", []) or []))

    def _tensors(self) -> dict[str, TensorInfo]:
        size = self.path.stat().st_size
        result = {}
        for tensor in self.reader.tensors:
            prefix = f"edgeq.tensor.{tensor.name}"
            type_name = self.need(f"{prefix}.type")
            if type_name not in quant_types.TYPES:
                raise EdgeqError(f"{self.path}: tensor {tensor.name} has unknown quant type {type_name!r}; "
                                 "upgrade edgeq")
            qtype = quant_types.TYPES[type_name]
            shape = tuple(int(d) for d in self.need(f"{prefix}.shape"))
            if (self.need(f"{prefix}.bits"), self.need(f"{prefix}.group"), self.need(f"{prefix}.symmetric")) != \
                    (qtype.bits, qtype.group, qtype.symmetric):
                raise EdgeqError(f"{self.path}: tensor {tensor.name}: metadata disagrees with type {type_name}")
            if len(shape) not in (1, 2) or (len(shape) == 1 and not qtype.plain):
                raise EdgeqError(f"{self.path}: tensor {tensor.name} has an invalid shape {shape}")
            nbytes = qtype.nbytes_for_shape(shape)
            if tensor.n_bytes != nbytes or tensor.data_offset + nbytes > size or tensor.data.nbytes != nbytes:
                raise EdgeqError(f"{self.path}: tensor {tensor.name} size or offset is wrong (truncated?); "
                                 "convert the model again")
            result[tensor.name] = TensorInfo(tensor.name, qtype, shape, self.get(f"{prefix}.method", ""),
                                             nbytes, tensor.data)
        missing = [n for n in self.config.tensor_names() if n not in result]
        if missing:
            raise EdgeqError(f"{self.path}: tensor {missing[0]} is missing; convert the model again")
        return result

    def load(self, name: str) -> np.ndarray:
        """Dequantized float32 tensor in its logical shape."""
        info = self.tensors[name]
        if info.qtype.plain:
            return np.asarray(info.data, dtype=np.float32).reshape(info.shape)
        raw = np.asarray(info.data).view(np.uint8)
        return quant_types.dequantize(info.qtype, raw, *info.shape)

    def file_size(self) -> int:
        return self.path.stat().st_size
