"""Stream index: row g of the global data stream computed from (seed, g) alone.

A mixture of T sources is laid out in blocks of `block_rows` rows. Every block has the
same fixed pattern (`MixturePattern`): which source each row position draws from, and
how many rows of the block each source gets. Row g of the mixture is therefore row i of
one source's own stream, with i known in O(1). A source's stream walks its rows epoch
by epoch, each epoch in the order of a permutation keyed by (seed, stream, epoch)
(`epoch_row`), so row i of a source is also known in O(1), without reading any row
before it.

The permutation is a Feistel network whose round function is a splitmix64-style mixer
written out in Python integers (and in the same uint64 arithmetic for numpy arrays),
not a library's hash or random generator, so the stream cannot change with a library
upgrade.
"""

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_ROUNDS = 6
_KEY_PREFIX = "t5x_lite stream key|"


def _mix64(value: int) -> int:
    z = (value + _GOLDEN) & MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & MASK64
    return z ^ (z >> 31)


def _mix64_array(values: np.ndarray) -> np.ndarray:
    z = values + np.uint64(_GOLDEN)  # uint64 arrays wrap modulo 2**64.
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    return z ^ (z >> np.uint64(31))


def keyed_draws(count: int, key: int) -> np.ndarray:
    """`count` distinct 64-bit draws: splitmix64's stream for `key`, uint64[count]."""
    counters = np.uint64(key) + np.arange(count, dtype=np.uint64) * np.uint64(_GOLDEN)
    return _mix64_array(counters)  # a bijection, so the draws differ


def _round_keys(key: int) -> tuple[int, ...]:
    if not 0 <= key <= MASK64:
        raise ValueError(f"key {key} is not a 64-bit unsigned integer")
    return tuple(_mix64((key + r * _GOLDEN) & MASK64) for r in range(_ROUNDS))


def _half_bits(size: int) -> int:
    """The smallest h with 2 ** (2 * h) >= size."""
    if not 1 <= size <= 1 << 64:
        raise ValueError(f"size {size} is not in [1, 2**64]")
    return ((size - 1).bit_length() + 1) // 2


def _feistel(value: int, half_bits: int, round_keys: tuple[int, ...]) -> int:
    half_mask = (1 << half_bits) - 1
    left, right = value >> half_bits, value & half_mask
    for round_key in round_keys:
        left, right = right, left ^ (_mix64(right ^ round_key) & half_mask)
    return (left << half_bits) | right


def _feistel_array(values: np.ndarray, half_bits: int,
                   round_keys: tuple[int, ...]) -> np.ndarray:
    shift, half_mask = np.uint64(half_bits), np.uint64((1 << half_bits) - 1)
    left, right = values >> shift, values & half_mask
    for round_key in round_keys:
        left, right = right, left ^ (_mix64_array(right ^ np.uint64(round_key)) & half_mask)
    return (left << shift) | right


def keyed_permutation(index: int, size: int, key: int) -> int:
    """Position of `index` under the permutation of range(size) chosen by `key`."""
    half_bits, round_keys = _half_bits(size), _round_keys(key)
    if not 0 <= index < size:
        raise ValueError(f"index {index} is not in range({size})")
    value = _feistel(index, half_bits, round_keys)
    while value >= size:
        value = _feistel(value, half_bits, round_keys)
    return value


def keyed_permutation_array(indices: np.ndarray, size: int, key: int) -> np.ndarray:
    """`keyed_permutation` of every entry of `indices`, as uint64."""
    half_bits, round_keys = _half_bits(size), _round_keys(key)
    indices = np.asarray(indices)
    if indices.size == 0:
        return np.zeros(indices.shape, np.uint64)
    if not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"indices must be integers, not {indices.dtype}")
    if int(indices.min()) < 0 or int(indices.max()) >= size:
        raise ValueError(f"indices are not all in range({size})")
    values = _feistel_array(indices.astype(np.uint64).ravel(), half_bits, round_keys)
    if size < 1 << (2 * half_bits):
        outside = np.flatnonzero(values >= np.uint64(size))
        while outside.size:
            values[outside] = _feistel_array(values[outside], half_bits, round_keys)
            outside = outside[values[outside] >= np.uint64(size)]
    return values.reshape(indices.shape)


def derive_key(*parts: int | str) -> int:
    """A 64-bit key from the parts' text (so 3 and "3" give the same key)."""
    for part in parts:
        if not isinstance(part, (int, str, np.integer)):
            raise TypeError(f"key part {part!r} is not an int or a str")
    text = _KEY_PREFIX + "|".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def epoch_row(index: int, rows_per_epoch: int, seed: int, stream: str | int,
              shuffle: bool = True) -> tuple[int, int]:
    """(epoch, row of the source) of the index-th row drawn from the source."""
    if index < 0 or rows_per_epoch < 1:
        raise ValueError(f"need index >= 0 and rows_per_epoch >= 1, got {index}, "
                         f"{rows_per_epoch}")
    epoch, offset = divmod(index, rows_per_epoch)
    if not shuffle:
        return epoch, offset
    return epoch, keyed_permutation(offset, rows_per_epoch,
                                    derive_key(seed, stream, epoch))


def epoch_rows(indices: np.ndarray, rows_per_epoch: int, seed: int, stream: str | int,
               shuffle: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """`epoch_row` of every entry of `indices`, as two int64 arrays."""
    indices = np.asarray(indices, np.int64)
    if rows_per_epoch < 1 or (indices.size and indices.min() < 0):
        raise ValueError("need indices >= 0 and rows_per_epoch >= 1")
    epochs, rows = np.divmod(indices, rows_per_epoch)
    if shuffle:
        for epoch in np.unique(epochs):
            in_epoch = epochs == epoch
            key = derive_key(seed, stream, int(epoch))
            rows[in_epoch] = keyed_permutation_array(rows[in_epoch], rows_per_epoch, key)
    return epochs, rows


def _largest_remainder(rates: Sequence[float], block_rows: int) -> list[int]:
    exact_rates = [Fraction(rate) for rate in rates]
    total = sum(exact_rates)
    quotas = [rate * block_rows / total for rate in exact_rates]
    counts = [math.floor(quota) for quota in quotas]
    by_remainder = sorted(range(len(quotas)), key=lambda t: (counts[t] - quotas[t], t))
    for source in by_remainder[:block_rows - sum(counts)]:
        counts[source] += 1
    for source in range(len(counts)):
        if counts[source] == 0:
            donor = max((s for s in range(len(counts)) if counts[s] > 1),
                        key=lambda s: (counts[s] - quotas[s], -s))
            counts[donor] -= 1
            counts[source] += 1
    return counts


@dataclasses.dataclass(frozen=True)
class MixturePattern:
    """Which source each row of a block of the mixed stream draws from."""

    counts: tuple[int, ...]  # Rows per block of each source.
    sources: tuple[int, ...]  # Source of each row position of the block.
    occurrences: tuple[int, ...]  # Earlier rows of the block from the same source.
    rows_before: tuple[tuple[int, ...], ...] = dataclasses.field(repr=False)
    # rows_before[t][p]: rows of source t among the block's first p positions.

    @classmethod
    def create(cls, rates: Sequence[float], block_rows: int) -> "MixturePattern":
        if not rates:
            raise ValueError("a mixture needs at least one rate")
        for source, rate in enumerate(rates):
            if not (math.isfinite(rate) and rate > 0):
                raise ValueError(f"rate {rate!r} of source {source} is not finite and > 0")
        if block_rows < len(rates):
            raise ValueError(f"block_rows={block_rows} is less than the {len(rates)} "
                             f"sources; raise block_rows to at least {len(rates)}")
        counts = _largest_remainder(rates, block_rows)
        order = sorted((Fraction(2 * k + 1, 2 * count), source, k)
                       for source, count in enumerate(counts) for k in range(count))
        sources = tuple(source for _, source, _ in order)
        rows_before = []
        for source in range(len(counts)):
            prefix = [0]
            for position_source in sources:
                prefix.append(prefix[-1] + (position_source == source))
            rows_before.append(tuple(prefix))
        return cls(tuple(counts), sources, tuple(k for _, _, k in order),
                   tuple(rows_before))

    @property
    def block_rows(self) -> int:
        return len(self.sources)

    def locate(self, global_row: int) -> tuple[int, int]:
        """(source, index in that source's stream) of row `global_row` of the mixture."""
        if global_row < 0:
            raise ValueError(f"global_row {global_row} is negative")
        block, position = divmod(global_row, self.block_rows)
        source = self.sources[position]
        return source, block * self.counts[source] + self.occurrences[position]

    def locate_array(self, global_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`locate` of every entry of `global_rows`, as two int64 arrays."""
        global_rows = np.asarray(global_rows, np.int64)
        if global_rows.size and global_rows.min() < 0:
            raise ValueError("global_rows must not be negative")
        blocks, positions = np.divmod(global_rows, self.block_rows)
        sources = np.asarray(self.sources, np.int64)[positions]
        occurrences = np.asarray(self.occurrences, np.int64)[positions]
        return sources, blocks * np.asarray(self.counts, np.int64)[sources] + occurrences

    def rows_of(self, source: int, global_rows_end: int) -> int:
        """How many of the first `global_rows_end` rows of the mixture are `source`'s."""
        if not 0 <= source < len(self.counts) or global_rows_end < 0:
            raise ValueError(f"no source {source} or negative end {global_rows_end}")
        blocks, position = divmod(global_rows_end, self.block_rows)
        return blocks * self.counts[source] + self.rows_before[source][position]


def mixture_rows(pattern: MixturePattern, indices: np.ndarray, sizes: Sequence[int],
                 seed: int, names: Sequence[str], shuffle: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(source, row within that source) of each entry of `indices` in a mixture's stream:
    the pattern's source, then `epoch_rows` of that source (`sizes` rows per epoch,
    permuted under its name)."""
    sources, rows = pattern.locate_array(np.asarray(indices, np.int64))
    for source in np.unique(sources):
        chosen = sources == source
        _, rows[chosen] = epoch_rows(rows[chosen], sizes[source], seed, names[source], shuffle)
    return sources, rows
