"""A bounded, read-only GGUF reader: the Python twin of native/src/gguf.c's cursor.

The file is untrusted. Every count and length is checked against the bytes that remain before it is
used, counts are capped (MAX_KEYS, MAX_TENSORS), names are 1..MAX_TENSOR_NAME_BYTES bytes without
NUL, the alignment is a power of two <= MAX_ALIGNMENT, tensor data lies inside the data section at
aligned offsets, no two tensors' data overlap, and each tensor's size is what its ggml type and
dimensions need (F32, F16 and I8 only: what edgeq files hold). A hostile file is refused in time
proportional to its size, with memory bounded by the MAX_* limits.

Only what edgeq needs is parsed: scalar values are decoded, strings are kept as (offset, length)
and decoded when asked, numeric arrays are (element type, count, offset) views that become numpy
arrays over the map only when asked. Not here: what the keys mean (edgeq.fileformat), writing
(the `gguf` package), big-endian files.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import EdgeqError

MAGIC = b"GGUF"
HEADER_BYTES = 4 + 4 + 8 + 8
MIN_KEY_BYTES = 8 + 1 + 4 + 1                   # key length, >= 1 key byte, value type, >= 1 value byte
MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8   # name length, name, n_dims, one dim, type, offset
# caps from what a real file needs, as native/src/gguf.c states them: 6 keys per tensor plus ~40 others
MAX_TENSORS = 1 << 16
MAX_KEYS = 8 * MAX_TENSORS + 4096
MAX_TENSOR_NAME_BYTES = 256
MAX_DIMS = 4
DEFAULT_ALIGNMENT = 32
MAX_ALIGNMENT = 4096
PRINT_NAME_BYTES = 64

# metadata value types (GGUF's enum)
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
# value type -> struct format of one element (strings and arrays have none)
SCALAR_FORMATS = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i",
                  FLOAT32: "<f", BOOL: "<B", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}
SCALAR_DTYPES = {UINT8: "<u1", INT8: "<i1", UINT16: "<u2", INT16: "<i2", UINT32: "<u4", INT32: "<i4",
                 FLOAT32: "<f4", BOOL: "<u1", UINT64: "<u8", INT64: "<i8", FLOAT64: "<f8"}
INTEGER_TYPES = (UINT8, INT8, UINT16, INT16, UINT32, INT32, UINT64, INT64)
TYPE_NAMES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string", "array",
              "uint64", "int64", "float64")

# ggml tensor types edgeq files hold: id -> bytes per element
GGML_F32, GGML_F16, GGML_I8 = 0, 1, 24
TENSOR_ELEMENT_BYTES = {GGML_F32: 4, GGML_F16: 2, GGML_I8: 1}
GGML_TYPE_NAMES = {2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K",
                   11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS",
                   18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS",
                   25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0",
                   35: "TQ2_0", 39: "MXFP4"}


def printable(raw: bytes) -> str:
    """A name from the file made safe for a one-line message: non-printable bytes become '?',
    names longer than PRINT_NAME_BYTES are cut with '...'."""
    text = "".join(chr(b) if 0x20 <= b < 0x7f else "?" for b in raw[:PRINT_NAME_BYTES])
    return text + ("..." if len(raw) > PRINT_NAME_BYTES else "")


@dataclass(frozen=True)
class Value:
    """Where a metadata value lies in the map. Scalars: count 1; strings: count = bytes;
    arrays: elem_type and count = elements, offset = element 0."""
    type: int
    offset: int
    count: int
    elem_type: int = -1


@dataclass(frozen=True)
class Tensor:
    name: str
    dims: tuple[int, ...]     # GGUF order: dims[0] varies fastest (numpy shape reversed)
    ggml_type: int
    offset: int               # absolute, in the file
    nbytes: int


class _Cursor:
    """Reads forward through the map; every read checks what remains first."""

    def __init__(self, buffer, size: int):
        self.buffer, self.size, self.pos = buffer, size, 0

    def left(self) -> int:
        return self.size - self.pos

    def take(self, n: int) -> int | None:
        """The offset of the next n bytes (and move past them), or None if fewer are left."""
        if n > self.left():
            return None
        start, self.pos = self.pos, self.pos + n
        return start

    def u32(self) -> int | None:
        at = self.take(4)
        return None if at is None else struct.unpack_from("<I", self.buffer, at)[0]

    def u64(self) -> int | None:
        at = self.take(8)
        return None if at is None else struct.unpack_from("<Q", self.buffer, at)[0]

    def string(self) -> tuple[int, int] | None:
        """(offset, length) of a GGUF string (u64 length, then the bytes), or None if truncated."""
        length = self.u64()
        if length is None:
            return None
        at = self.take(length)
        return None if at is None else (at, length)


class GGUFFile:
    """A GGUF file mapped read-only and checked as a whole on open. Raises EdgeqError("PATH: ...")."""

    def __init__(self, path: str | os.PathLike, metadata_only: bool = False):
        """metadata_only: stop after the metadata (tensors stays empty until read_tensors()), e.g. to
        tell an edgeq file from a llama.cpp one, whose tensor types this reader refuses."""
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                self.size = os.fstat(f.fileno()).st_size
                if self.size < len(MAGIC):
                    self._fail(f"not a GGUF file: only {self.size} bytes")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as error:
            raise EdgeqError(f"{path}: cannot read the file ({error.strerror or error})") from None
        self.keys: dict[str, Value] = {}
        self.tensors: list[Tensor] = []
        cursor = _Cursor(self._map, self.size)
        n_tensors, n_keys = self._read_header(cursor)
        self._read_keys(cursor, n_keys)
        self.alignment = self._read_alignment()
        self.data_offset = None
        self._rest = (cursor, n_tensors)
        if not metadata_only:
            self.read_tensors()

    def read_tensors(self) -> None:
        """Read and check the tensor infos after the metadata (once; a no-op after that)."""
        if self._rest is None:
            return
        cursor, n_tensors = self._rest
        infos = [self._read_tensor_info(cursor, i) for i in range(n_tensors)]
        self.data_offset = -(-cursor.pos // self.alignment) * self.alignment
        self._place_tensors(infos)
        self._rest = None

    def _fail(self, message: str):
        raise EdgeqError(f"{self.path}: {message}")

    # -- header and metadata -------------------------------------------------------------------

    def _read_header(self, cursor: _Cursor) -> tuple[int, int]:
        head = bytes(self._map[:4])
        if head != MAGIC:
            self._fail(f"not a GGUF file: it starts with bytes {head.hex(' ')}, not \"GGUF\"")
        if self.size < HEADER_BYTES:
            self._fail(f"truncated: the file is {self.size} bytes, shorter than a GGUF header ({HEADER_BYTES} bytes)")
        cursor.pos = 4
        self.version, n_tensors, n_keys = cursor.u32(), cursor.u64(), cursor.u64()
        if self.version not in (2, 3):
            hint = ", a big-endian file?" if self.version & 0xFFFF == 0 else ""
            self._fail(f"unsupported: GGUF version {self.version}{hint} (versions 2 and 3 are read)")
        left = cursor.left()
        if n_keys > left // MIN_KEY_BYTES:
            self._fail(f"truncated or corrupt: the header claims {n_keys} metadata keys, more than a file "
                       f"of {self.size} bytes can hold")
        if n_keys > MAX_KEYS:
            self._fail(f"unsupported: the header claims {n_keys} metadata keys, more than the {MAX_KEYS} an "
                       "edgeq file may have")
        if n_tensors > (left - n_keys * MIN_KEY_BYTES) // MIN_TENSOR_INFO_BYTES:
            self._fail(f"truncated or corrupt: the header claims {n_tensors} tensors, more than a file "
                       f"of {self.size} bytes can hold")
        if n_tensors > MAX_TENSORS:
            self._fail(f"unsupported: the header claims {n_tensors} tensors, more than the {MAX_TENSORS} an "
                       "edgeq file may have")
        return n_tensors, n_keys

    def _read_keys(self, cursor: _Cursor, n_keys: int) -> None:
        for i in range(n_keys):
            name = cursor.string()
            value_type = cursor.u32() if name is not None else None
            if value_type is None:
                self._fail(f"truncated: metadata key #{i} ends past the end of the file (file is {self.size} bytes)")
            raw = bytes(self._map[name[0]:name[0] + name[1]])
            if not raw:
                self._fail(f"corrupt: metadata key #{i} has an empty name")
            value = self._read_value(cursor, printable(raw), value_type)
            key = raw.decode("utf-8", "surrogateescape")
            if key in self.keys:
                self._fail(f"corrupt: duplicate metadata key '{printable(raw)}'")
            self.keys[key] = value

    def _read_value(self, cursor: _Cursor, key: str, value_type: int) -> Value:
        if value_type >= len(TYPE_NAMES):
            self._fail(f"corrupt: metadata key '{key}' has unknown value type {value_type}")
        if value_type == STRING:
            length = cursor.u64()
            at = cursor.take(length) if length is not None else None
            if at is None:
                self._fail(f"truncated: the string value of metadata key '{key}' ends past the end of the file "
                           f"(file is {self.size} bytes)")
            return Value(STRING, at, length)
        if value_type != ARRAY:
            at = cursor.take(struct.calcsize(SCALAR_FORMATS[value_type]))
            if at is None:
                self._fail(f"truncated: the value of metadata key '{key}' ends past the end of the file "
                           f"(file is {self.size} bytes)")
            if value_type == BOOL and self._map[at] > 1:
                self._fail(f"corrupt: metadata key '{key}' is a bool of value {self._map[at]} (must be 0 or 1)")
            return Value(value_type, at, 1)
        elem_type = cursor.u32()
        count = cursor.u64() if elem_type is not None else None
        if count is None:
            self._fail(f"truncated: the array header of metadata key '{key}' ends past the end of the file "
                       f"(file is {self.size} bytes)")
        if elem_type == ARRAY:
            self._fail(f"unsupported: metadata key '{key}' is an array of arrays")
        if elem_type >= len(TYPE_NAMES):
            self._fail(f"corrupt: metadata key '{key}' is an array of unknown element type {elem_type}")
        element_bytes = 8 if elem_type == STRING else struct.calcsize(SCALAR_FORMATS[elem_type])
        start = cursor.pos
        if count > cursor.left() // element_bytes:      # checked before a single element is read
            self._fail(f"truncated: metadata key '{key}' (array of {count} {TYPE_NAMES[elem_type]}) ends past "
                       f"the end of the file (file is {self.size} bytes)")
        if elem_type != STRING:
            cursor.take(count * element_bytes)
        else:
            for i in range(count):                       # each string is >= 8 bytes: bounded by the size
                if cursor.string() is None:
                    self._fail(f"truncated: string {i} of metadata key '{key}' ends past the end of the file "
                               f"(file is {self.size} bytes)")
        return Value(ARRAY, start, count, elem_type)

    def _read_alignment(self) -> int:
        value = self.keys.get("general.alignment")
        if value is None:
            return DEFAULT_ALIGNMENT
        if value.type not in INTEGER_TYPES:
            self._fail(f"corrupt: general.alignment is a {TYPE_NAMES[value.type]}, not an integer")
        alignment = self._scalar(value)
        if alignment <= 0 or alignment > MAX_ALIGNMENT or alignment & (alignment - 1):
            self._fail(f"corrupt: general.alignment is {alignment}; it must be a power of two no larger "
                       f"than {MAX_ALIGNMENT}")
        return alignment

    # -- tensor infos and data -----------------------------------------------------------------

    def _read_tensor_info(self, cursor: _Cursor, i: int) -> tuple[bytes, tuple[int, ...], int, int]:
        name = cursor.string()
        if name is None:
            self._fail(f"truncated: the name of tensor #{i} ends past the end of the file (file is {self.size} bytes)")
        if not 1 <= name[1] <= MAX_TENSOR_NAME_BYTES:
            self._fail(f"corrupt: the name of tensor #{i} is {name[1]} bytes long (1 to {MAX_TENSOR_NAME_BYTES} allowed)")
        raw = bytes(self._map[name[0]:name[0] + name[1]])
        shown = printable(raw)
        if b"\0" in raw:
            self._fail(f"corrupt: the name of tensor '{shown}' holds a NUL byte")
        truncated = (f"truncated: the info of tensor '{shown}' ends past the end of the file "
                     f"(file is {self.size} bytes)")
        n_dims = cursor.u32()
        if n_dims is None:
            self._fail(truncated)
        if not 1 <= n_dims <= MAX_DIMS:
            self._fail(f"corrupt: tensor '{shown}' has {n_dims} dimensions (1 to {MAX_DIMS} supported)")
        dims, elements = [], 1
        for _ in range(n_dims):
            dim = cursor.u64()
            if dim is None:
                self._fail(truncated)
            if dim == 0:
                self._fail(f"corrupt: tensor '{shown}' has a dimension of size 0")
            elements *= dim
            if elements >= 1 << 64:
                self._fail(f"corrupt: the element count of tensor '{shown}' overflows 64 bits")
            dims.append(dim)
        ggml_type = cursor.u32()
        if ggml_type is None:
            self._fail(truncated)
        if ggml_type not in TENSOR_ELEMENT_BYTES:
            if ggml_type in GGML_TYPE_NAMES:
                self._fail(f"unsupported: tensor '{shown}' has ggml type {GGML_TYPE_NAMES[ggml_type]} ({ggml_type}); "
                           "edgeq files hold F32, F16 and I8 tensors only (convert llama.cpp files with "
                           "`edgeq convert`)")
            self._fail(f"corrupt: tensor '{shown}' has unknown ggml type {ggml_type}")
        nbytes = elements * TENSOR_ELEMENT_BYTES[ggml_type]
        if nbytes >= 1 << 64:
            self._fail(f"corrupt: the byte size of tensor '{shown}' overflows 64 bits")
        offset = cursor.u64()
        if offset is None:
            self._fail(truncated)
        return raw, tuple(dims), ggml_type, offset

    def _place_tensors(self, infos) -> None:
        if infos and self.data_offset > self.size:
            self._fail(f"truncated: the tensor data section would start at byte {self.data_offset}, past the end "
                       f"of the file (file is {self.size} bytes)")
        available = self.size - self.data_offset
        names = set()
        for raw, dims, ggml_type, offset in infos:
            shown = printable(raw)
            if offset % self.alignment:
                self._fail(f"corrupt: tensor '{shown}' has data offset {offset}, not a multiple of the "
                           f"alignment {self.alignment}")
            name = raw.decode("utf-8", "surrogateescape")
            if name in names:
                self._fail(f"corrupt: duplicate tensor name '{shown}'")
            names.add(name)
            nbytes = TENSOR_ELEMENT_BYTES[ggml_type]
            for dim in dims:
                nbytes *= dim
            if offset > available or nbytes > available - offset:
                self._fail(f"truncated: tensor data of '{shown}' ({nbytes} bytes at offset {offset}) ends past "
                           f"the end of the file (file is {self.size} bytes)")
            self.tensors.append(Tensor(name, dims, ggml_type, self.data_offset + offset, nbytes))
        placed = sorted(self.tensors, key=lambda t: t.offset)
        for before, after in zip(placed, placed[1:]):
            if after.offset < before.offset + before.nbytes:
                self._fail(f"corrupt: the data of tensors '{printable(before.name.encode('utf-8', 'surrogateescape'))}' and "
                           f"'{printable(after.name.encode('utf-8', 'surrogateescape'))}' overlap (bytes {after.offset}.."
                           f"{min(before.offset + before.nbytes, after.offset + after.nbytes)})")

    # -- values --------------------------------------------------------------------------------

    def _scalar(self, value: Value):
        result = struct.unpack_from(SCALAR_FORMATS[value.type], self._map, value.offset)[0]
        return bool(result) if value.type == BOOL else result

    def value(self, key: str):
        """A scalar (int, float, bool) or string value; an array as its numpy view (string arrays: a
        list of str). None when the key is absent. Raises EdgeqError for text that is not UTF-8."""
        value = self.keys.get(key)
        if value is None:
            return None
        if value.type == STRING:
            return self._text(key, value.offset, value.count)
        if value.type == ARRAY:
            return self.array(key)
        return self._scalar(value)

    def _text(self, key: str, offset: int, length: int) -> str:
        try:
            return bytes(self._map[offset:offset + length]).decode("utf-8")
        except UnicodeDecodeError:
            self._fail(f"corrupt: metadata {key} is not valid UTF-8 text")

    def array(self, key: str):
        """A numeric array as a read-only numpy view over the map (no copy); string arrays are
        decoded into a list. Only called for what a reader needs."""
        value = self.keys[key]
        if value.type != ARRAY:
            raise EdgeqError(f"{self.path}: metadata {key} is a {TYPE_NAMES[value.type]}, not an array")
        if value.elem_type != STRING:
            array = np.frombuffer(self._map, dtype=SCALAR_DTYPES[value.elem_type], count=value.count,
                                  offset=value.offset)
            return array.astype(bool) if value.elem_type == BOOL else array
        strings, cursor = [], _Cursor(self._map, self.size)
        cursor.pos = value.offset
        for _ in range(value.count):
            at, length = cursor.string()          # walked once on open: cannot run past the end
            strings.append(self._text(key, at, length))
        return strings

    def tensor_data(self, tensor: Tensor) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view over the map."""
        return np.frombuffer(self._map, dtype=np.uint8, count=tensor.nbytes, offset=tensor.offset)
