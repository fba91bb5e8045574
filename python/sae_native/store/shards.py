"""One shard of an activation store: a safetensors file (one [n, d] tensor per site), written
atomically and read back memory-mapped after its size, header and checksum are checked.

safetensors because every tool in the field reads it (safetensors.safe_open, numpy through its
header, Rust, JAX), it holds bf16 natively, and its layout (an 8-byte header length, a JSON header,
then each tensor's raw bytes) can be memory-mapped without a copy.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
import zlib
from typing import Dict, Tuple

import torch
from torch import Tensor

# safetensors' dtype names
DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
FROM_NAME = {v: k for k, v in DTYPES.items()}


class ShardError(RuntimeError):
    """A shard does not match its manifest entry (size, header, checksum): a partial or damaged file."""


def crc32_of(data) -> str:
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def write(path: str, tensors: Dict[str, Tensor]) -> Tuple[int, str]:
    """Writes ``tensors`` ({site: [n, d]}) to ``path`` atomically: into ``path.tmp``, flushed to
    disk, then renamed, so a crash leaves either no file or the whole one. Returns (bytes, crc32)."""
    from safetensors.torch import save
    data = save({name: t.contiguous() for name, t in tensors.items()})
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(data), crc32_of(data)


def _header(buf, path: str) -> Tuple[dict, int]:
    if len(buf) < 8:
        raise ShardError(f"{path}: {len(buf)} bytes, too short for a safetensors header")
    (size,) = struct.unpack("<Q", buf[:8])
    if size > len(buf) - 8:
        raise ShardError(f"{path}: header length {size} runs past the end of the file ({len(buf)} bytes)")
    try:
        header = json.loads(bytes(buf[8:8 + size]))
    except ValueError as e:
        raise ShardError(f"{path}: unreadable safetensors header ({e})") from None
    return header, 8 + size


class Shard:
    """A memory-mapped shard, checked against its manifest entry: ``rows(site, start, stop)`` is a
    view of those rows, no copy (copy-on-write mapping: the file is never written)."""

    def __init__(self, path: str, entry: dict, sites: Dict[str, int], dtype: torch.dtype, verify: bool):
        try:
            size = os.path.getsize(path)
        except OSError:
            raise ShardError(f"{path}: listed in the manifest but missing") from None
        if size != entry["bytes"]:
            raise ShardError(f"{path}: {size} bytes, the manifest says {entry['bytes']} (a partial or replaced file)")
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        if verify and crc32_of(self._map) != entry["crc32"]:
            raise ShardError(f"{path}: checksum {crc32_of(self._map)} differs from the manifest's {entry['crc32']} "
                             f"(the file was damaged or replaced)")
        header, base = _header(self._map, path)
        self.n = entry["tokens"]
        self._views, self._offsets = {}, {}
        for site, d in sites.items():
            meta = header.get(site)
            want = [self.n, d]
            if meta is None or meta.get("dtype") != DTYPES[dtype] or meta.get("shape") != want:
                raise ShardError(f"{path}: tensor {site!r} is {meta}, expected {DTYPES[dtype]} {want}")
            begin, end = meta["data_offsets"]
            if end - begin != self.n * d * dtype.itemsize or base + end > size:
                raise ShardError(f"{path}: tensor {site!r} has {end - begin} bytes, expected {self.n * d * dtype.itemsize}")
            self._views[site] = torch.frombuffer(self._map, dtype=dtype, count=self.n * d,
                                                 offset=base + begin).view(self.n, d)
            self._offsets[site] = (base + begin, d * dtype.itemsize)

    def rows(self, site: str, start: int, stop: int) -> Tensor:
        return self._views[site][start:stop]

    def release(self, site: str, start: int, stop: int) -> None:
        """Lets go of the mapped pages of rows [start, stop) once they were copied out: they are
        page cache, re-read if touched again, and no longer count in the process's memory."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        base, row = self._offsets[site]
        page = mmap.PAGESIZE
        a = (base + start * row) // page * page
        b = min(len(self._map), base + stop * row)
        if b > a:
            self._map.madvise(mmap.MADV_DONTNEED, a, b - a)
