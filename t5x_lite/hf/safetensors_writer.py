"""Weights streamed into safetensors files, sharded above a size limit.

Tensors are added one by one and written as soon as the open shard would pass
`max_shard_bytes`, so the writer holds at most one shard in memory. A model that
fits one shard is `model.safetensors`; a larger one is
`model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json` (the layout
`transformers.save_pretrained` writes and `from_pretrained` reads).
"""

import json
import os
import re

import numpy as np
from etils import epath

from t5x_lite import storage

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_SIZE = "5GB"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30}


def parse_size(text: str) -> int:
    """'5GB', '500MB', '64KiB' or a plain byte count -> bytes; None if not a size."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not match or match.group(2).upper() not in _UNITS:
        return None
    size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    return size if size > 0 else None


class ShardedSafetensorsWriter:
    """Writes tensors into `directory`; `close()` names the shards and writes the index."""

    def __init__(self, directory: storage.PathLike, max_shard_bytes: int):
        self.directory = storage.path(directory)
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, np.ndarray] = {}
        self._pending_bytes = 0
        self._shards: list[list[str]] = []  # tensor names of each written shard
        self.total_bytes = 0

    def add(self, name: str, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        if self._pending and self._pending_bytes + array.nbytes > self.max_shard_bytes:
            self._flush()
        self._pending[name] = array
        self._pending_bytes += array.nbytes
        self.total_bytes += array.nbytes

    def _part_path(self, index: int) -> epath.Path:
        return self.directory / f".part-{index}.safetensors"

    def _flush(self) -> None:
        from safetensors.numpy import save_file
        path = self._part_path(len(self._shards))
        save_file(self._pending, str(path), metadata={"format": "pt"})
        os.chmod(path, 0o644)  # safetensors creates owner-only files; weights are for sharing
        self._shards.append(list(self._pending))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Writes what is left, gives the shards their final names; returns them."""
        if self._pending or not self._shards:
            self._flush()
        count = len(self._shards)
        if count == 1:
            storage.set_aside(self._part_path(0), SINGLE_FILE)
            return [SINGLE_FILE]
        names = [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        for index, name in enumerate(names):
            storage.set_aside(self._part_path(index), name)
        weight_map = {tensor: name for name, tensors in zip(names, self._shards)
                      for tensor in tensors}
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        storage.write_atomic(self.directory / INDEX_FILE,
                             json.dumps(index, indent=2, sort_keys=True))
        return names
