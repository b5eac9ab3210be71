"""Minimal safetensors reader and writer on numpy: no torch, no pickle, bf16 via ml_dtypes.

File layout: an 8-byte little-endian header length, a JSON header that maps each tensor name
to {"dtype", "shape", "data_offsets": [begin, end]} (offsets counted from the first byte after
the header) plus an optional "__metadata__" dict of strings, then the raw little-endian bytes.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Mapping

import ml_dtypes
import numpy as np

from atommem_jax import fileio

DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_MAX_HEADER_BYTES = 100 * 2**20  # the limit the reference implementation enforces
_ALIGN = 8


def read(path: str) -> dict[str, np.ndarray]:
  """Maps each tensor in `path` to a read-only memmap view; bytes are read on first touch."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    prefix = f.read(8)
    if len(prefix) < 8:
      raise ValueError(f"{path}: {size} bytes is too short for a safetensors file")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > min(size - 8, _MAX_HEADER_BYTES):
      raise ValueError(
          f"{path}: header length {header_len} does not fit a {size}-byte file; the file is "
          "truncated or not safetensors")
    try:
      header = json.loads(f.read(header_len))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ValueError(f"{path}: unreadable safetensors header ({e})") from None
  if not isinstance(header, dict):
    raise ValueError(f"{path}: safetensors header is not a JSON object")
  header.pop("__metadata__", None)
  data_start = 8 + header_len
  if size > data_start:
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start)
  else:
    data = np.zeros(0, np.uint8)
  return {name: _view(path, name, info, data) for name, info in header.items()}


def _view(path: str, name: str, info: object, data: np.ndarray) -> np.ndarray:
  """The tensor `name` described by header entry `info`, as a view into `data`."""
  try:
    dtype_name, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
    shape = tuple(int(dim) for dim in shape)
    begin, end = int(begin), int(end)
  except (KeyError, TypeError, ValueError):
    raise ValueError(
        f"{path}: tensor {name}: malformed header entry {info!r}; expected dtype, shape and "
        "data_offsets") from None
  if dtype_name not in DTYPES:
    raise ValueError(
        f"{path}: tensor {name} has dtype {dtype_name}; supported: {', '.join(DTYPES)}. "
        "Convert the checkpoint to bf16, fp16 or fp32 first")
  nbytes = math.prod(shape) * DTYPES[dtype_name].itemsize
  if min(shape, default=0) < 0 or not 0 <= begin <= end <= data.size or end - begin != nbytes:
    raise ValueError(
        f"{path}: tensor {name}: data_offsets [{begin}, {end}] do not hold a {dtype_name} "
        f"tensor of shape {shape} ({nbytes} bytes) within {data.size} data bytes; the file is "
        "truncated or corrupt")
  return data[begin:end].view(DTYPES[dtype_name]).reshape(shape)


def write(path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> None:
  """Writes `tensors` (F32, F16 or BF16) to `path`, atomically, in the order given."""
  header: dict[str, object] = {"__metadata__": dict(metadata)}
  offset = 0
  for name, array in tensors.items():
    if array.dtype not in _DTYPE_NAMES:
      raise ValueError(
          f"{path}: tensor {name} has dtype {array.dtype}; supported: float32, float16, bfloat16")
    header[name] = {
        "dtype": _DTYPE_NAMES[array.dtype],
        "shape": list(array.shape),
        "data_offsets": [offset, offset + array.nbytes],
    }
    offset += array.nbytes
  header_bytes = json.dumps(header, separators=(",", ":")).encode()
  header_bytes += b" " * (-len(header_bytes) % _ALIGN)
  with fileio.atomic_open(path) as f:
    f.write(struct.pack("<Q", len(header_bytes)))
    f.write(header_bytes)
    for array in tensors.values():
      f.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
