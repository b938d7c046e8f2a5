"""Token stores: a (Task, split) tokenized once into flat arrays that rows are cut from
by index, locally or on an object store.

A store is a directory of parts, `part-00000`, `part-00001`, ... (one, or one per file of
a source that reads its files one by one), read as one sequence of examples. A part
holds, for each feature (`targets`, and `inputs` for data with inputs),
`<feature>.tokens` (int32, every example's tokens one after another) and
`<feature>.offsets` (int64, where each example starts, then the total), both raw
little-endian, and its `manifest.json`, written last. The store's own `manifest.json`,
listing the parts, is written once every part is: a directory without it is not a store,
and a part without one is rebuilt.
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

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
TOKEN_DTYPE = np.dtype("<i4")
OFFSET_DTYPE = np.dtype("<i8")


@dataclasses.dataclass(frozen=True)
class Manifest:
    fingerprint: str
    features: dict[str, dict[str, int]]  # feature -> {"tokens": N, "examples": E}
    description: dict  # what the fingerprint was computed from, for people
    parts: list[str] = dataclasses.field(default_factory=list)  # a store's; a part has none

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


def part_name(index: int) -> str:
    return f"part-{index:05d}"


def finish_store(directory: storage.PathLike, parts: list[Manifest], fingerprint: str,
                 description: dict) -> Manifest:
    """Writes the manifest of a store whose `parts` are all written, which makes it one."""
    features = {f: {key: sum(part.features[f][key] for part in parts)
                    for key in ("tokens", "examples")} for f in parts[0].features}
    manifest = Manifest(fingerprint, features, description,
                        [part_name(index) for index in range(len(parts))])
    storage.write_atomic(storage.join(directory, MANIFEST), manifest.to_json())
    return manifest


class StoreWriter:
    """Writes a part's examples (feature -> int token array) into a local temporary
    directory, then publishes the part to `directory` with its manifest last."""

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
        parts = [self.directory / name for name in manifest.parts]
        self._parts, self._offsets, self._part_starts = {}, {}, {}
        for f in manifest.features:
            offsets = [_read_whole(part / f"{f}.offsets", OFFSET_DTYPE) for part in parts]
            self._parts[f] = [_open_tokens(part / f"{f}.tokens", int(o[-1]))
                              for part, o in zip(parts, offsets)]
            starts = np.cumsum([0] + [int(o[-1]) for o in offsets])
            self._part_starts[f] = starts
            self._offsets[f] = np.concatenate(
                [o[:-1] + start for o, start in zip(offsets, starts)] + [starts[-1:]])

    @property
    def num_examples(self) -> int:
        return self.manifest.num_examples

    def offsets(self, feature: str) -> np.ndarray:
        """Where each example starts, then the total: [E + 1] int64."""
        return self._offsets[feature]

    def tokens(self, feature: str, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of `feature`'s flat array (across parts)."""
        self.tokens_read += stop - start
        starts = self._part_starts[feature]
        first = int(np.searchsorted(starts, start, side="right")) - 1
        pieces = []
        for part in range(max(first, 0), len(starts) - 1):
            if starts[part] >= stop:
                break
            pieces.append(_read_range(self._parts[feature][part],
                                      max(start, starts[part]) - starts[part],
                                      min(stop, starts[part + 1]) - starts[part]))
        if len(pieces) == 1:
            return pieces[0]
        return np.concatenate(pieces) if pieces else np.zeros(0, np.int32)


def _read_whole(file: epath.Path, dtype: np.dtype) -> np.ndarray:
    return np.frombuffer(file.read_bytes(), dtype).copy()


def _read_range(source, start: int, stop: int) -> np.ndarray:
    if isinstance(source, np.ndarray):
        return np.asarray(source[start:stop], np.int32)
    source.seek(start * TOKEN_DTYPE.itemsize)
    data = source.read((stop - start) * TOKEN_DTYPE.itemsize)
    return np.frombuffer(data, TOKEN_DTYPE).astype(np.int32)


def _open_tokens(file: epath.Path, count: int):
    if storage.is_uri(file):
        return file.open("rb")  # ranges are read with seek, one request each
    if count == 0:
        return np.zeros(0, TOKEN_DTYPE)
    return np.memmap(str(file), TOKEN_DTYPE, mode="r")
