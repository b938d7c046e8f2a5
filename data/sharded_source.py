"""A seqio DataSource that shards examples first and shuffles each shard after.

seqio shards a source with fewer files than shards by reading it (shuffled with the
shard's seed) and keeping every S-th example, so shards read in different orders
can overlap. This source reads each split in one fixed order, keeps every S-th
example for shard s, caches that slice in memory and only then shuffles it with
the shard's seed, afresh each epoch. It suits the small local datasets here.
"""

from collections.abc import Callable, Mapping, Sequence

import seqio
import tensorflow as tf

EXAMPLE_SHUFFLE_BUFFER_SIZE = 16_384


class ShardableSource(seqio.DataSource):
    """A source that shards itself in `get_dataset`, any number of ways, and that
    seqio must not cache."""

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> Sequence[str]:
        return [split]

    def num_input_examples(self, split: str) -> None:
        return None  # Keeps seqio from caching (and so freezing) the shuffled order.


class ShardFirstSource(ShardableSource):
    """Examples from `read_split(split)`, a dataset in a fixed order. `identity(split)`,
    if given, says what a split holds (a token store's fingerprint is made of it).
    `num_parts(split)` and `read_part(split, part)`, if given, split it into parts whose
    datasets in order are `read_split`'s (a token store is built part by part)."""

    def __init__(self, read_split: Callable[[str], tf.data.Dataset], splits: Sequence[str],
                 identity: Callable[[str], dict] | None = None,
                 num_parts: Callable[[str], int] | None = None,
                 read_part: Callable[[str, int], tf.data.Dataset] | None = None):
        self._read_split = read_split
        self.identity, self.num_parts, self.read_part = identity, num_parts, read_part
        super().__init__(splits=tuple(splits))

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                    shard_info: seqio.ShardInfo | None = None, *,
                    sequence_length: Mapping[str, int] | None = None, use_cached: bool = False,
                    num_epochs: int | None = 1) -> tf.data.Dataset:
        del sequence_length, use_cached, num_epochs  # Unused, as in seqio's sources.
        dataset = self._read_split(split)
        if shard_info:
            dataset = dataset.shard(shard_info.num_shards, shard_info.index)
        dataset = dataset.cache()
        if shuffle:
            dataset = dataset.shuffle(EXAMPLE_SHUFFLE_BUFFER_SIZE, seed=seed,
                                      reshuffle_each_iteration=True)
        return dataset
