"""Lazy, validating reader for .safetensors files (single or sharded), and a streaming writer.

Written here rather than taken from the `safetensors` package because its numpy backend cannot read
or write bfloat16, which is how most Hugging Face checkpoints ship. Reads one tensor (or a range of its
rows) at a time as float32; writes one tensor at a time, so neither needs the whole model in memory.

Reads are explicit file reads into a new array, not views of a memory map: a mapped source's pages
count in the converting process's resident memory once touched, and the converter touches every
page (2.5 GB for Qwen2.5-0.5B in float32), whereas a read array is freed as soon as the converter
drops it (one layer at a time, see convert/calibrate.py); the file's pages then live only in the
kernel's page cache, which is not the process's and is reclaimable.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from edgeq.errors import EdgeqError

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}
_MAX_HEADER = 100 << 20


class SafetensorsFile:
    def __init__(self, path: Path):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise EdgeqError(f"{self.path}: not a safetensors file (too short); re-download it")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > min(_MAX_HEADER, size - 8):
                raise EdgeqError(f"{self.path}: corrupted safetensors header (length {header_len}); re-download it")
            try:
                header = json.loads(f.read(header_len))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise EdgeqError(f"{self.path}: corrupted safetensors header (not JSON); re-download it") from None
        if not isinstance(header, dict):
            raise EdgeqError(f"{self.path}: corrupted safetensors header; re-download it")
        header.pop("__metadata__", None)
        self.data_start = 8 + header_len
        data_size = size - self.data_start
        self.entries = {}
        for name, entry in header.items():
            try:
                dtype, shape, (begin, end) = entry["dtype"], [int(d) for d in entry["shape"]], entry["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise EdgeqError(f"{self.path}: corrupted entry for tensor {name!r}; re-download it") from None
            if dtype not in _DTYPES:
                raise EdgeqError(f"{self.path}: tensor {name!r} has dtype {dtype}; supported: F32, F16, BF16, F64")
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            itemsize = np.dtype(_DTYPES[dtype]).itemsize
            if min(shape, default=0) < 0 or not (0 <= begin <= end <= data_size) or end - begin != count * itemsize:
                raise EdgeqError(f"{self.path}: tensor {name!r} lies outside the file (truncated or corrupted); "
                                 "re-download it")
            self.entries[name] = (dtype, tuple(shape), begin)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def load(self, name: str, rows: slice | None = None) -> np.ndarray:
        """One tensor (or a range of its rows) as a new float32 array that owns its memory."""
        dtype, shape, begin = self.entries[name]
        stored = np.dtype(_DTYPES[dtype])
        first, shape_read = 0, shape
        if rows is not None and shape:
            start, stop, step = rows.indices(shape[0])
            if step == 1:        # read only those rows' bytes; other steps read the whole tensor
                first, shape_read, rows = start, (max(stop - start, 0), *shape[1:]), None
        row_items = int(np.prod(shape[1:], dtype=np.int64)) if shape else 1
        raw = self._read(self.data_start + begin + first * row_items * stored.itemsize,
                         np.empty(shape_read, dtype=stored))
        if rows is not None:
            raw = raw[rows]
        if dtype == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw if dtype == "F32" and rows is None else raw.astype(np.float32)

    def _read(self, offset: int, out: np.ndarray) -> np.ndarray:
        view, done = memoryview(out.reshape(-1).view(np.uint8)), 0
        with open(self.path, "rb", buffering=0) as f:
            f.seek(offset)
            while done < len(view):
                got = f.readinto(view[done:])
                if not got:
                    raise EdgeqError(f"{self.path}: ends inside a tensor (truncated while reading); re-download it")
                done += got
        return out


class SafetensorsFolder:
    """All *.safetensors of a Hugging Face folder, through the index file when sharded."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        index = folder / "model.safetensors.index.json"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise EdgeqError(f"{index}: not a valid safetensors index; re-download it") from None
            shard_names = sorted(set(weight_map.values()))
            missing = [s for s in shard_names if not (folder / s).exists()]
            if missing:
                raise EdgeqError(f"{folder}: shard {missing[0]} listed in the index is missing; re-download it")
        else:
            shard_names = sorted(p.name for p in folder.glob("*.safetensors"))
        if not shard_names:
            raise EdgeqError(f"{folder}: no *.safetensors weights found (PyTorch .bin checkpoints are not "
                             "supported; convert them to safetensors first)")
        self.shards = [SafetensorsFile(folder / name) for name in shard_names]
        self.where = {}
        for shard in self.shards:
            for name in shard.entries:
                self.where[name] = shard

    def names(self) -> list[str]:
        return list(self.where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.where[name].shape(name)

    def load(self, name: str, rows: slice | None = None) -> np.ndarray:
        return self.where[name].load(name, rows)


def write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], load, dtype: str = "F32") -> None:
    """Write tensors named in `shapes` (in order), each produced by `load(name)` as float32."""
    numpy_dtype = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[dtype]
    itemsize = np.dtype(numpy_dtype).itemsize
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape, dtype=np.int64)) * itemsize
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name, shape in shapes.items():
            value = np.ascontiguousarray(load(name), dtype=np.float32).reshape(shape)
            if dtype == "BF16":   # round to nearest even on the upper 16 bits
                bits = value.view(np.uint32).astype(np.uint64)
                value = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            f.write(value.astype(numpy_dtype).tobytes())
