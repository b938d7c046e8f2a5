"""Token stores: a (Task, split) tokenized once into flat arrays that rows are cut from
by index, locally or on an object store.

A store is a directory holding, for each feature (`targets`, and `inputs` for data with
inputs), `<feature>.tokens` (int32, every example's tokens one after another) and
`<feature>.offsets` (int64, where each example starts, then the total), both raw
little-endian, and `manifest.json`, written last: a directory without it is not a store.
"""

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping

import numpy as np
from etils import epath

from t5x_lite import storage

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKEN_DTYPE = np.dtype("<i4")
OFFSET_DTYPE = np.dtype("<i8")


@dataclasses.dataclass(frozen=True)
class Manifest:
    fingerprint: str
    features: dict[str, dict[str, int]]  # feature -> {"tokens": N, "examples": E}
    description: dict  # what the fingerprint was computed from, for people

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT_VERSION, **dataclasses.asdict(self)}, indent=1)

    @classmethod
    def read(cls, directory: epath.Path) -> "Manifest | None":
        file = directory / MANIFEST
        if not file.exists():
            return None
        record = json.loads(file.read_text())
        if record.pop("format", None) != FORMAT_VERSION:
            return None
        return cls(**record)

    @property
    def num_examples(self) -> int:
        return next(iter(self.features.values()))["examples"]


class StoreWriter:
    """Writes examples (feature -> int token array) into a local temporary directory, then
    publishes the store to `directory` with its manifest last."""

    def __init__(self, directory: storage.PathLike, features: Iterable[str]):
        self.directory = storage.path(directory)
        self.features = tuple(features)
        # Beside the store locally (one rename publishes it); a local temporary directory
        # for an object store.
        near = None if storage.is_uri(self.directory) else str(self.directory.parent)
        if near:
            os.makedirs(near, exist_ok=True)
        self._partial = tempfile.mkdtemp(prefix=f".{self.directory.name}.partial-", dir=near)
        self._token_files = {f: self._open(f"{f}.tokens") for f in self.features}
        self._offset_files = {f: self._open(f"{f}.offsets") for f in self.features}
        self._totals = dict.fromkeys(self.features, 0)
        self._examples = dict.fromkeys(self.features, 0)
        for file in self._offset_files.values():
            file.write(np.zeros(1, OFFSET_DTYPE).tobytes())

    def _open(self, name: str):
        return open(os.path.join(self._partial, name), "wb")  # noqa: SIM115

    def add(self, tokens: Mapping[str, np.ndarray], lengths: Mapping[str, np.ndarray]) -> None:
        """Adds examples: each feature's tokens one after another, and each example's
        length."""
        for feature in self.features:
            self._token_files[feature].write(np.asarray(tokens[feature], TOKEN_DTYPE).tobytes())
            ends = self._totals[feature] + np.cumsum(lengths[feature], dtype=OFFSET_DTYPE)
            self._offset_files[feature].write(ends.astype(OFFSET_DTYPE).tobytes())
            self._totals[feature] += int(np.sum(lengths[feature]))
            self._examples[feature] += len(lengths[feature])

    def finish(self, fingerprint: str, description: dict) -> Manifest:
        self._close()
        manifest = Manifest(fingerprint, {f: {"tokens": self._totals[f],
                                              "examples": self._examples[f]}
                                          for f in self.features}, description)
        with open(os.path.join(self._partial, MANIFEST), "w") as f:
            f.write(manifest.to_json())
        try:
            _publish(self._partial, self.directory)
        finally:
            shutil.rmtree(self._partial, ignore_errors=True)
        return manifest

    def abandon(self) -> None:
        self._close()
        shutil.rmtree(self._partial, ignore_errors=True)

    def _close(self) -> None:
        for file in [*self._token_files.values(), *self._offset_files.values()]:
            file.close()


def _publish(partial: str, directory: epath.Path) -> None:
    """Moves the finished store into place: a rename locally, a copy with the manifest
    last on an object store."""
    if storage.is_uri(directory):
        storage.remove_tree(directory)
        storage.copy_tree(partial, directory)
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    if directory.exists():
        shutil.rmtree(directory)
    shutil.move(partial, str(directory))


class TokenStore:
    """A finished store, read by ranges of tokens; counts the tokens it has read."""

    def __init__(self, directory: storage.PathLike):
        self.directory = storage.path(directory)
        manifest = Manifest.read(self.directory)
        if manifest is None:
            raise FileNotFoundError(f"{self.directory} holds no finished token store")
        self.manifest = manifest
        self.tokens_read = 0
        self._offsets = {f: self._read_whole(f"{f}.offsets", OFFSET_DTYPE)
                         for f in manifest.features}
        self._tokens = {f: self._open_tokens(f) for f in manifest.features}

    @property
    def num_examples(self) -> int:
        return self.manifest.num_examples

    def offsets(self, feature: str) -> np.ndarray:
        """Where each example of `feature` starts, then the total: [E + 1] int64."""
        return self._offsets[feature]

    def tokens(self, feature: str, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of `feature`'s flat array."""
        self.tokens_read += stop - start
        source = self._tokens[feature]
        if isinstance(source, np.ndarray):
            return np.asarray(source[start:stop], np.int32)
        source.seek(start * TOKEN_DTYPE.itemsize)
        data = source.read((stop - start) * TOKEN_DTYPE.itemsize)
        return np.frombuffer(data, TOKEN_DTYPE).astype(np.int32)

    def _read_whole(self, name: str, dtype: np.dtype) -> np.ndarray:
        return np.frombuffer((self.directory / name).read_bytes(), dtype).copy()

    def _open_tokens(self, feature: str):
        file = self.directory / f"{feature}.tokens"
        if storage.is_uri(file):
            return file.open("rb")  # ranges are read with seek, one request each
        if self.manifest.features[feature]["tokens"] == 0:
            return np.zeros(0, TOKEN_DTYPE)
        return np.memmap(str(file), TOKEN_DTYPE, mode="r")
