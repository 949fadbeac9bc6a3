"""Crafted edgeq files, one builder per class of invalid (or too new) file, for tests/test_hostile_files.py.

Each builder takes the bytes of a real converted file (a tiny model) and returns patched bytes:
the fields are found by walking the GGUF layout here, independently of edgeq's own readers.
CLASSES maps a class name to (builder, words the refusal must contain).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

STRING, ARRAY = 8, 9
SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
ELEMENT_BYTES = {0: 4, 1: 2, 24: 1}    # F32, F16, I8


@dataclass
class Key:
    name: str
    start: int          # the key's length field
    value_at: int       # the value (strings: its length field; arrays: the element type)
    type: int


@dataclass
class TensorInfo:
    name: str
    start: int          # the name's length field
    dims_at: int
    n_dims: int
    type_at: int
    offset_at: int
    offset: int         # relative to the data section
    nbytes: int


@dataclass
class Layout:
    keys: dict[str, Key]
    tensors: list[TensorInfo]
    data_start: int


def layout(blob: bytes) -> Layout:
    """Where every key and tensor info of a (valid) GGUF file lies."""
    def u32(pos):
        return struct.unpack_from("<I", blob, pos)[0]

    def u64(pos):
        return struct.unpack_from("<Q", blob, pos)[0]

    def skip_string(pos):
        return pos + 8 + u64(pos)

    n_tensors, n_keys = u64(8), u64(16)
    pos, keys = 24, {}
    for _ in range(n_keys):
        start, name = pos, blob[pos + 8:skip_string(pos)].decode()
        pos = skip_string(pos)
        value_type, value_at = u32(pos), pos + 4
        pos += 4
        if value_type == STRING:
            pos = skip_string(pos)
        elif value_type == ARRAY:
            elem_type, count = u32(pos), u64(pos + 4)
            pos += 12
            if elem_type == STRING:
                for _ in range(count):
                    pos = skip_string(pos)
            else:
                pos += count * SCALAR_BYTES[elem_type]
        else:
            pos += SCALAR_BYTES[value_type]
        keys[name] = Key(name, start, value_at, value_type)
    alignment = u32(keys["general.alignment"].value_at) if "general.alignment" in keys else 32
    tensors = []
    for _ in range(n_tensors):
        start, name = pos, blob[pos + 8:skip_string(pos)].decode()
        pos = skip_string(pos)
        n_dims = u32(pos)
        dims = struct.unpack_from(f"<{n_dims}Q", blob, pos + 4)
        type_at = pos + 4 + 8 * n_dims
        nbytes = ELEMENT_BYTES[u32(type_at)]
        for d in dims:
            nbytes *= d
        tensors.append(TensorInfo(name, start, pos + 4, n_dims, type_at, type_at + 4, u64(type_at + 4), nbytes))
        pos = type_at + 12
    return Layout(keys, tensors, -(-pos // alignment) * alignment)


def patch(blob: bytes, at: int, fmt: str, value: int) -> bytes:
    out = bytearray(blob)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


def _packed(lay: Layout) -> TensorInfo:
    return next(t for t in lay.tensors if t.name == "blk.0.attn_q.weight")


# ---------------------------------------------------------------------------------------------
# the classes
# ---------------------------------------------------------------------------------------------

def offset_wraps(blob: bytes) -> bytes:
    """A tensor offset so large that offset + size wraps around 2^64 (aligned, so only the bound catches it)."""
    return patch(blob, _packed(layout(blob)).offset_at, "<Q", (1 << 64) - 64)


def offset_past_end(blob: bytes) -> bytes:
    """A tensor whose data starts past the end of the file."""
    lay = layout(blob)
    past = -(-(len(blob) - lay.data_start) // 64) * 64 + 64
    return patch(blob, _packed(lay).offset_at, "<Q", past)


def data_overlap(blob: bytes) -> bytes:
    """Two tensors whose data overlap: the second layer's q weight points at the first's bytes."""
    lay = layout(blob)
    first = _packed(lay)
    second = next(t for t in lay.tensors if t.name == "blk.1.attn_q.weight")
    return patch(blob, second.offset_at, "<Q", first.offset + 64)


def size_disagrees(blob: bytes) -> bytes:
    """A packed tensor stored with fewer bytes than its quant type and shape need (still inside the file)."""
    tensor = _packed(layout(blob))
    return patch(blob, tensor.dims_at, "<Q", tensor.nbytes - 64)


def tensor_count_too_large(blob: bytes) -> bytes:
    """A header claiming 2^40 tensors."""
    return patch(blob, 8, "<Q", 1 << 40)


def key_count_too_large(blob: bytes) -> bytes:
    """A header claiming 2^40 metadata keys."""
    return patch(blob, 16, "<Q", 1 << 40)


def array_count_too_large(blob: bytes) -> bytes:
    """An array of 2^40 elements (gguf-py would parse each into a Python object)."""
    key = layout(blob).keys["edgeq.tensor.blk.0.attn_q.weight.shape"]
    return patch(blob, key.value_at + 4, "<Q", 1 << 40)


def string_length_too_large(blob: bytes) -> bytes:
    """A string value of 2^62 bytes."""
    return patch(blob, layout(blob).keys["edgeq.generation"].value_at, "<Q", 1 << 62)


def tensor_name_too_long(blob: bytes) -> bytes:
    """A tensor name of 2^40 bytes."""
    return patch(blob, layout(blob).tensors[0].start, "<Q", 1 << 40)


def misaligned_offset(blob: bytes) -> bytes:
    """A tensor offset that is not a multiple of general.alignment."""
    tensor = _packed(layout(blob))
    return patch(blob, tensor.offset_at, "<Q", tensor.offset + 2)


def format_version_3(blob: bytes) -> bytes:
    """A file of a format version newer than this edgeq reads."""
    return patch(blob, layout(blob).keys["edgeq.format_version"].value_at, "<I", 3)


def unknown_required_feature(blob: bytes, feature: str = "sparse-v9") -> bytes:
    """A version 2 file requiring a feature no edgeq has: an edgeq.required_features key is inserted
    after the header, padded to a multiple of 64 bytes so every later offset stays aligned."""
    name = b"edgeq.required_features"
    fixed = 8 + len(name) + 4 + 4 + 8 + 8          # key, value type, element type, count, string length
    text = feature.encode()
    text += b"-" * (-(fixed + len(text)) % 64)
    key = struct.pack("<Q", len(name)) + name + struct.pack("<IIQQ", ARRAY, STRING, 1, len(text)) + text
    n_keys = struct.unpack_from("<Q", blob, 16)[0]
    return patch(blob[:24], 16, "<Q", n_keys + 1) + key + blob[24:]


def unknown_quant_type(blob: bytes) -> bytes:
    """A tensor whose quant type name this edgeq does not know (same length as the real one)."""
    key = layout(blob).keys["edgeq.tensor.blk.0.attn_q.weight.type"]
    length = struct.unpack_from("<Q", blob, key.value_at)[0]
    start = key.value_at + 8
    return blob[:start] + b"z" * length + blob[start + length:]


# class -> (builder, words every reader's refusal contains)
CLASSES = {
    "offset-wraps": (offset_wraps, ("blk.0.attn_q.weight", "past the end")),
    "offset-past-end": (offset_past_end, ("blk.0.attn_q.weight", "past the end")),
    "data-overlap": (data_overlap, ("overlap",)),
    "size-disagrees": (size_disagrees, ("blk.0.attn_q.weight", "size")),
    "tensor-count": (tensor_count_too_large, ("tensors", "more than a file")),
    "key-count": (key_count_too_large, ("metadata keys", "more than a file")),
    "array-count": (array_count_too_large, ("array of 1099511627776",)),
    "string-length": (string_length_too_large, ("edgeq.generation", "past the end")),
    "tensor-name-length": (tensor_name_too_long, ("name of tensor #0",)),
    "misaligned-offset": (misaligned_offset, ("blk.0.attn_q.weight", "alignment")),
}
