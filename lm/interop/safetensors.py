"""The safetensors format, read lazily and written shard by shard, in numpy alone.

A file is an 8-byte little-endian header length, a JSON header ({name: {dtype, shape, data_offsets}},
optionally `__metadata__`) and the tensors' bytes. Reading maps the files and hands out views, so an import
holds one converted tensor at a time; a sharded checkpoint's `model.safetensors.index.json` says which file
holds which tensor.
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

from lm.errors import CheckpointError
from lm.paths import inside

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
INDEX = "model.safetensors.index.json"


def _header(path: pathlib.Path) -> tuple[dict, int]:
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) < 8:
      raise CheckpointError(f"{path}: not a safetensors file (shorter than its header); re-download it")
    (n,) = struct.unpack("<Q", raw)
    if n > 100 << 20:
      raise CheckpointError(f"{path}: header of {n} bytes is not a safetensors header; re-download the file")
    try:
      return json.loads(f.read(n)), 8 + n
    except ValueError:
      raise CheckpointError(f"{path}: unreadable safetensors header; re-download the file") from None


class Reader:
  """Every tensor of a model directory's `*.safetensors` files (sharded or not), read on demand."""

  def __init__(self, directory):
    directory = pathlib.Path(directory)
    index = directory / INDEX
    if index.exists():
      try:
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
        if not all(isinstance(f, str) for f in files):
          raise TypeError
      except (ValueError, KeyError, TypeError, AttributeError):
        raise CheckpointError(f"{index}: not an index with a weight_map of tensor -> file; re-download it") from None
    else:  # model*.safetensors where there are such (Mistral's repos also carry consolidated.safetensors)
      files = sorted(p.name for p in directory.glob("model*.safetensors")) or sorted(
          p.name for p in directory.glob("*.safetensors"))
    if not files:
      raise CheckpointError(f"{directory}: no *.safetensors files (pytorch_model.bin is not read; convert it with "
                            "transformers' save_pretrained(safe_serialization=True))")
    self.entries: dict[str, tuple[pathlib.Path, str, tuple, int, int]] = {}
    for name in files:
      path = pathlib.Path(inside(directory, name, str(index), "an index may only name files in its own directory; "
                                 "re-download the model", CheckpointError))
      if not path.exists():
        raise CheckpointError(f"{directory}: {INDEX} names {name}, which is missing; download every shard")
      header, start = _header(path)
      for key, info in header.items():
        if key == "__metadata__":
          continue
        if info["dtype"] not in DTYPES:
          raise CheckpointError(f"{path}: tensor {key} has dtype {info['dtype']}, which is not read here")
        begin, end = info["data_offsets"]
        self.entries[key] = (path, info["dtype"], tuple(info["shape"]), start + begin, start + end)

  def __contains__(self, name: str) -> bool:
    return name in self.entries

  def names(self) -> list[str]:
    return list(self.entries)

  def get(self, name: str) -> np.ndarray:
    """A read-only view of the tensor (memory-mapped: only what is used is read)."""
    path, dtype, shape, begin, end = self.entries[name]
    dt = np.dtype(DTYPES[dtype])
    if int(np.prod(shape, dtype=np.int64)) * dt.itemsize != end - begin:
      raise CheckpointError(f"{path}: tensor {name} {shape} {dtype} does not match its byte range; re-download it")
    if end == begin:
      return np.zeros(shape, dt)
    if path.stat().st_size < end:
      raise CheckpointError(f"{path} is truncated (tensor {name} ends past the file); re-download it")
    return np.memmap(path, dtype=dt, mode="r", offset=begin, shape=shape)


def write(directory, tensors: Iterable[tuple[str, tuple, np.dtype, Callable[[], np.ndarray]]],
          max_shard_bytes: int = 5 << 30) -> list[str]:
  """Write `(name, shape, dtype, make)` tensors, calling each `make()` once as its turn comes (one tensor in
  memory at a time), into `model.safetensors` or, past `max_shard_bytes`, numbered shards with an index.
  Files are written under a temporary name and renamed when complete. Returns the file names."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  shards, size = [[]], 0
  for item in tensors:
    n = int(np.prod(item[1], dtype=np.int64)) * np.dtype(item[2]).itemsize
    if shards[-1] and size + n > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(item)
    size += n
  count = len(shards)
  names = ["model.safetensors"] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors"
                                                     for i in range(count)]
  weight_map, total = {}, 0
  for file_name, shard in zip(names, shards):
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, dtype, _ in shard:
      n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
      header[name] = {"dtype": NAMES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + n]}
      offset += n
      weight_map[name] = file_name
    total += offset
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    tmp = directory / f".{file_name}.tmp"
    with open(tmp, "wb") as f:
      f.write(struct.pack("<Q", len(raw)) + raw)
      for name, shape, dtype, make in shard:
        array = np.ascontiguousarray(make(), dtype=dtype)
        if array.shape != tuple(shape):
          raise ValueError(f"tensor {name}: made {array.shape}, announced {tuple(shape)}")
        f.write(array.tobytes())
    os.replace(tmp, directory / file_name)
  if count > 1:
    (directory / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                              indent=2))
  return names
