"""A seqio DataSource of generated examples: example i is a pure function of (seed, split, i).

The train split is unlimited: shard s of S reads examples s, s + S, s + 2S, ... of
a stream chosen by the seed (with `shuffle=False`, the stream of seed 0), so
a new seed gives new examples rather than a new order. The validation split is the
first `validation_size` examples of one fixed stream, the same for every seed.
"""

from collections.abc import Callable, Mapping

import numpy as np
import seqio
import tensorflow as tf

from .sharded_source import ShardableSource

# make_example(split, stream, index) -> {'inputs': str, 'targets': str}
ExampleFn = Callable[[str, int, int], Mapping[str, str]]
FEATURES = ("inputs", "targets")
_VALIDATION_STREAM = 0
CHUNK_SIZE = 64   # Examples made per Python call; the calls, not the examples, are costly.


class GeneratedSource(ShardableSource):
    """Examples made by `make_example`, unlimited in 'train', `validation_size` in 'validation'."""

    def __init__(self, make_example: ExampleFn, validation_size: int):
        self._make_example = make_example
        self._validation_size = validation_size
        super().__init__(splits=("train", "validation"))

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                    shard_info: seqio.ShardInfo | None = None, *,
                    sequence_length: Mapping[str, int] | None = None, use_cached: bool = False,
                    num_epochs: int | None = 1) -> tf.data.Dataset:
        del sequence_length, use_cached, num_epochs  # Unused, as in seqio's sources.
        shard, num_shards = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
        if split == "train":
            indices = tf.data.Dataset.counter(start=shard, step=num_shards)
            stream = (seed or 0) if shuffle else 0
        else:
            indices = tf.data.Dataset.range(shard, self._validation_size, num_shards)
            stream = _VALIDATION_STREAM
        dataset = indices.batch(CHUNK_SIZE).map(
            lambda chunk: self._examples(split, stream, chunk)).unbatch()
        if shuffle and split != "train":
            dataset = dataset.shuffle(self._validation_size, seed=seed)
        return dataset

    def _examples(self, split: str, stream: int, indices: tf.Tensor) -> dict[str, tf.Tensor]:
        """The examples at a vector of indices, made in one Python call."""
        def make(index_values):
            examples = [self._make_example(split, stream, int(i)) for i in index_values]
            return tuple(np.array([example[key].encode("utf-8") for example in examples],
                                  dtype=object) for key in FEATURES)

        values = tf.numpy_function(make, [indices], [tf.string] * len(FEATURES), stateful=False)
        return {key: tf.ensure_shape(value, [None]) for key, value in zip(FEATURES, values)}
