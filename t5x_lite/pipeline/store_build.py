"""Building token stores: each (Task, split) run once through its own seqio pipeline,
unshuffled, and written under a name that is a fingerprint of everything that shapes
its content. A store that exists is used as it is; a missing one is built under a lock.
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
from t5x_lite.pipeline.token_store import FORMAT_VERSION, Manifest, StoreWriter, TokenStore

STORE_DIR_ENV = "T5X_LITE_STORE_DIR"
BUILD_BATCH_EXAMPLES = 4096


class NotMaterialisable(Exception):
    """A Task whose content cannot be fingerprinted without reading it all."""


def default_root() -> str:
    """`$T5X_LITE_STORE_DIR`, else `stores/` in the cache directory."""
    from t5x_lite.data import cache  # pylint: disable=g-import-not-at-top
    return os.environ.get(STORE_DIR_ENV) or str(cache.cache_dir() / "stores")


def store_for(task: seqio.Task, split: str, lengths: Mapping[str, int] | None,
              root: storage.PathLike | None = None, progress: bool = True) -> TokenStore:
    """The store of `task`'s `split`, built first if missing: its preprocessors run with
    `lengths` as the sequence length, or with none (whole documents) if None."""
    fingerprint, description = fingerprint_of(task, split, lengths)
    directory = storage.join(root or default_root(), task.name, split, fingerprint[:16])
    if Manifest.read(directory) is None:
        from t5x_lite.data import cache  # pylint: disable=g-import-not-at-top
        with cache.exclusive_lock(f"store-{fingerprint[:16]}"):
            if Manifest.read(directory) is None:
                build(task, split, lengths, directory, fingerprint, description, progress)
    return TokenStore(directory)


def fingerprint_of(task: seqio.Task, split: str,
                   lengths: Mapping[str, int] | None) -> tuple[str, dict]:
    """(fingerprint, what it is computed from) of the store of `task`'s `split`."""
    description = describe(task, split, lengths)
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest(), \
        description


def build(task: seqio.Task, split: str, lengths: Mapping[str, int] | None,
          directory: storage.PathLike, fingerprint: str, description: dict,
          progress: bool = True) -> Manifest:
    features = [name for name in ("inputs", "targets") if name in task.output_features]
    dataset = task.get_dataset(sequence_length=dict(lengths) if lengths else None, split=split,
                               shuffle=False, num_epochs=1, use_cached=False, seed=0)
    batches = dataset.map(lambda example: {f: example[f] for f in features}).ragged_batch(
        BUILD_BATCH_EXAMPLES)
    writer = StoreWriter(directory, features)
    try:
        with tqdm.tqdm(desc=f"store {task.name}/{split}", unit=" examples",
                       disable=not progress, leave=False) as bar:
            for batch in batches.as_numpy_iterator():
                flat = {f: _tokens_and_lengths(batch[f]) for f in features}
                writer.add({f: tokens for f, (tokens, _) in flat.items()},
                           {f: lengths for f, (_, lengths) in flat.items()})
                bar.update(len(flat[features[0]][1]))
        return writer.finish(fingerprint, description)
    except BaseException:
        writer.abandon()
        raise


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
