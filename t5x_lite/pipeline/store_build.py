"""Building token stores: each (Task, split) run once through its own seqio pipeline,
unshuffled, and written under a name that is a fingerprint of everything that shapes
its content. A store that exists is used as it is; a missing one is built part by part,
each part under a lock, and a part already written is kept (a killed build continues).

A source that reads its files one by one says so with `num_parts(split)` and
`read_part(split, part)` (part k: file k alone); its store has a part per file, which
builders can share out (builder i of n builds parts i, i + n, ...). The parts read in
order are the split read whole, so the store is the same for any number of builders.
"""

import functools
import hashlib
import json
import os
from collections.abc import Mapping

import numpy as np
import seqio
import tqdm

from t5x_lite import storage
from t5x_lite.pipeline.token_store import (
    FORMAT_VERSION,
    Manifest,
    StoreWriter,
    TokenStore,
    finish_store,
    part_name,
)

STORE_DIR_ENV = "T5X_LITE_STORE_DIR"
BUILD_BATCH_EXAMPLES = 4096


class NotMaterialisable(Exception):
    """A Task whose content cannot be fingerprinted without reading it all."""


def default_root() -> str:
    """`$T5X_LITE_STORE_DIR`, else `stores/` in the cache directory."""
    from t5x_lite.data import cache  # pylint: disable=g-import-not-at-top
    return os.environ.get(STORE_DIR_ENV) or str(cache.cache_dir() / "stores")


def store_for(task: seqio.Task, split: str, lengths: Mapping[str, int] | None,
              root: storage.PathLike | None = None, progress: bool = True,
              builder: tuple[int, int] = (0, 1)) -> TokenStore | None:
    """The store of `task`'s `split`, built first if missing: its preprocessors run with
    `lengths` as the sequence length, or with none (whole documents) if None. Builder
    (i, n) builds only parts i, i + n, ...: the store is returned once every part is
    written, by whichever builder, and None before."""
    fingerprint, description = fingerprint_of(task, split, lengths)
    directory = storage.join(root or default_root(), task.name, split, fingerprint[:16])
    if Manifest.read(directory) is None:
        count = num_parts(task.source, split)
        for part in range(builder[0], count, builder[1]):
            _build_part_once(task, split, lengths, directory, part, count, progress)
        parts = [Manifest.read(directory / part_name(part)) for part in range(count)]
        if None in parts:
            return None
        finish_store(directory, parts, fingerprint, description)
    return TokenStore(directory)


def num_parts(source: seqio.DataSource, split: str) -> int:
    counter = getattr(source, "num_parts", None)
    return max(counter(split), 1) if callable(counter) else 1


def fingerprint_of(task: seqio.Task, split: str,
                   lengths: Mapping[str, int] | None) -> tuple[str, dict]:
    """(fingerprint, what it is computed from) of the store of `task`'s `split`."""
    description = describe(task, split, lengths)
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest(), \
        description


def _build_part_once(task: seqio.Task, split: str, lengths: Mapping[str, int] | None,
                     directory, part: int, count: int, progress: bool) -> None:
    from t5x_lite.data import cache  # pylint: disable=g-import-not-at-top
    part_directory = directory / part_name(part)
    with cache.exclusive_lock(f"store-{directory.name}-{part_name(part)}"):
        if Manifest.read(part_directory) is None:
            part_task = task if count == 1 else _part_task(task, part)
            build(part_task, split, lengths, part_directory, progress,
                  f"store {task.name}/{split}" + (f" part {part + 1}/{count}" if count > 1 else ""))


def build(task: seqio.Task, split: str, lengths: Mapping[str, int] | None,
          directory: storage.PathLike, progress: bool = True, label: str = "store") -> Manifest:
    """Writes `task`'s `split` (unshuffled, one epoch) as one part at `directory`."""
    features = [name for name in ("inputs", "targets") if name in task.output_features]
    dataset = task.get_dataset(sequence_length=dict(lengths) if lengths else None, split=split,
                               shuffle=False, num_epochs=1, use_cached=False, seed=0)
    batches = dataset.map(lambda example: {f: example[f] for f in features}).ragged_batch(
        BUILD_BATCH_EXAMPLES)
    writer = StoreWriter(directory, features)
    try:
        with tqdm.tqdm(desc=label, unit=" examples", disable=not progress, leave=False) as bar:
            for batch in batches.as_numpy_iterator():
                flat = {f: _tokens_and_lengths(batch[f]) for f in features}
                writer.add({f: tokens for f, (tokens, _) in flat.items()},
                           {f: lengths for f, (_, lengths) in flat.items()})
                bar.update(len(flat[features[0]][1]))
        return writer.finish(storage.path(directory).name, {"task": task.name, "split": split})
    except BaseException:
        writer.abandon()
        raise


class _PartSource(seqio.DataSource):
    """Part `part` of a source that reads its files one by one: file `part` alone."""

    def __init__(self, source: seqio.DataSource, part: int):
        self._source, self._part = source, part
        super().__init__(splits=source.splits)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return False

    def list_shards(self, split: str) -> list[str]:
        return [f"{split}-{part_name(self._part)}"]

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                    shard_info: seqio.ShardInfo | None = None, *, sequence_length=None,
                    use_cached: bool = False, num_epochs: int | None = 1):
        del shuffle, seed, shard_info, sequence_length, use_cached, num_epochs
        return self._source.read_part(split, self._part)


def _part_task(task: seqio.Task, part: int) -> seqio.Task:
    """`task` reading part `part` of its source alone (not registered)."""
    return seqio.Task(f"{task.name}.part{part}", _PartSource(task.source, part),
                      output_features=task.output_features, preprocessors=task.preprocessors)


def _tokens_and_lengths(batch) -> tuple[np.ndarray, np.ndarray]:
    """A ragged batch as (tokens one example after another, each example's length); numpy
    gives it as a ragged value, or as an array of rows when that is simpler."""
    if hasattr(batch, "flat_values"):
        return batch.flat_values, np.diff(batch.row_splits)
    rows = list(batch)
    return np.concatenate(rows), np.array([len(row) for row in rows])


def describe(task: seqio.Task, split: str, lengths: Mapping[str, int] | None) -> dict:
    """Everything that shapes a store's content, as JSON-able values."""
    return {"format": FORMAT_VERSION, "task": task.name, "split": split,
            "lengths": dict(sorted(lengths.items())) if lengths else None,
            "source": source_identity(task.source, split),
            "vocabularies": {name: vocabulary_identity(feature.vocabulary)
                             for name, feature in sorted(task.output_features.items())},
            "preprocessors": [callable_identity(p) for p in task.preprocessors]}


def materialisable(task: seqio.Task) -> bool:
    """Whether `task`'s source says what it reads (so a store can be keyed by it)."""
    source = task.source
    return callable(getattr(source, "identity", None)) or isinstance(source,
                                                                      seqio.TfdsDataSource)


def source_identity(source: seqio.DataSource, split: str) -> dict:
    identity = getattr(source, "identity", None)
    if callable(identity):
        return identity(split)
    if isinstance(source, seqio.TfdsDataSource):
        loader = source.tfds_dataset
        return {"tfds": loader.resolved_tfds_name(split) or loader.name,
                "split": loader._map_split(split),  # noqa: SLF001  (seqio has no public name)
                "version": str(loader.info.version), "data_dir": str(loader.data_dir)}
    raise NotMaterialisable(f"its source ({type(source).__name__}) does not say what it reads")


def vocabulary_identity(vocabulary: seqio.Vocabulary) -> dict:
    identity = {"type": type(vocabulary).__name__, "extra_ids": vocabulary.extra_ids}
    if isinstance(vocabulary, seqio.SentencePieceVocabulary):
        identity["model_sha256"] = hashlib.sha256(vocabulary.sp_model).hexdigest()
    elif not isinstance(vocabulary, seqio.ByteVocabulary):
        identity["vocab_size"] = vocabulary.vocab_size
    return identity


def callable_identity(function) -> str:
    if isinstance(function, functools.partial):
        arguments = [repr(a) for a in function.args] + [
            f"{k}={v!r}" for k, v in sorted(function.keywords.items())]
        return f"{callable_identity(function.func)}({', '.join(arguments)})"
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', '?')}"
