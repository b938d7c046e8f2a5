"""Stream index: keyed permutations, per-epoch row order and the mixture pattern."""

import math

import numpy as np
import pytest

from t5x_lite.pipeline.stream_index import (
    MixturePattern, derive_key, epoch_row, epoch_rows, keyed_permutation,
    keyed_permutation_array)

KEYS = [0, 1, 12345, 2**64 - 1]


def permutation(size: int, key: int) -> list[int]:
    return [keyed_permutation(index, size, key) for index in range(size)]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1000, 4097])
@pytest.mark.parametrize("key", KEYS)
def test_keyed_permutation_is_a_bijection(size, key):
    assert sorted(permutation(size, key)) == list(range(size))


def test_keys_choose_the_permutation():
    orders = [permutation(1000, key) for key in KEYS]
    assert len({tuple(order) for order in orders}) == len(KEYS)
    assert permutation(1000, 12345) == orders[2]
    assert orders[0] != list(range(1000))


def test_keyed_permutation_rejects_bad_arguments():
    for index, size, key in [(0, 0, 0), (-1, 5, 0), (5, 5, 0), (0, 5, -1), (0, 5, 2**64)]:
        with pytest.raises(ValueError):
            keyed_permutation(index, size, key)
    with pytest.raises(ValueError):
        keyed_permutation_array(np.array([0, 5]), 5, 0)


def test_golden_values():
    assert derive_key(0, "task", 3) == 6708392661326826163
    assert keyed_permutation(0, 1, 0) == 0
    assert keyed_permutation(5, 7, 0) == 1
    assert keyed_permutation(5, 7, 123) == 3
    assert keyed_permutation(999, 1000, 2**64 - 1) == 291
    assert keyed_permutation(10**9, 10**9 + 7, 42) == 845722248
    assert keyed_permutation(123456789, 10**9 + 7, 6708392661326826163) == 748953701
    assert keyed_permutation(3, 2**64, 5) == 10644153459354251040
    assert epoch_row(10**9, 1000, 0, "task") == (10**6, 428)
    assert MixturePattern.create([1.0, 2.0, 0.5], 7).sources[:8] == (1, 0, 1, 2, 1, 0, 1)


@pytest.mark.parametrize("size", [1000, 10**9 + 7])
def test_keyed_permutation_array_matches_scalar(size):
    indices = np.random.default_rng(0).integers(0, size, 2000)
    key = derive_key("array", size)
    expected = [keyed_permutation(int(index), size, key) for index in indices]
    got = keyed_permutation_array(indices, size, key)
    assert got.dtype == np.uint64
    assert got.tolist() == expected
    assert keyed_permutation_array(indices.reshape(40, 50), size, key).shape == (40, 50)


def test_epoch_row_visits_every_row_once_per_epoch():
    rows_per_epoch = 97
    epochs = [[epoch_row(e * rows_per_epoch + i, rows_per_epoch, 7, "task")
               for i in range(rows_per_epoch)] for e in range(3)]
    for e, drawn in enumerate(epochs):
        assert {epoch for epoch, _ in drawn} == {e}
        assert sorted(row for _, row in drawn) == list(range(rows_per_epoch))
    assert [row for _, row in epochs[0]] != [row for _, row in epochs[1]]
    assert epoch_row(10**9, 1000, 7, "task") == epoch_row(10**9, 1000, 7, "task")
    assert epoch_row(10**9, 1000, 7, "task") != epoch_row(10**9, 1000, 8, "task")


def test_epoch_row_without_shuffle_is_the_identity():
    drawn = [epoch_row(i, 10, 7, "task", shuffle=False) for i in range(30)]
    assert drawn == [(i // 10, i % 10) for i in range(30)]


def test_epoch_rows_matches_epoch_row():
    indices = np.arange(0, 500, 3)
    epochs, rows = epoch_rows(indices, 37, 5, 2)
    assert list(zip(epochs.tolist(), rows.tolist())) == [
        epoch_row(int(i), 37, 5, 2) for i in indices]


@pytest.mark.parametrize("rates, block_rows, counts", [
    ([1, 1, 1], 10, (4, 3, 3)),
    ([1.0, 2.0, 0.5], 7, (2, 4, 1)),
    ([3, 1], 5, (4, 1)),
    ([1, 1000], 5, (1, 4)),
    ([1, 1, 1000], 3, (1, 1, 1)),
    ([0.3], 4, (4,)),
])
def test_counts_follow_largest_remainder(rates, block_rows, counts):
    pattern = MixturePattern.create(rates, block_rows)
    assert pattern.counts == counts
    assert sum(pattern.counts) == pattern.block_rows == block_rows


PATTERNS = [([1, 1, 1], 10), ([1.0, 2.0, 0.5], 7), ([5, 1, 1, 2], 23), ([1, 1000], 5)]


@pytest.mark.parametrize("rates, block_rows", PATTERNS)
def test_locate_walks_each_source_in_order(rates, block_rows):
    pattern = MixturePattern.create(rates, block_rows)
    located = [pattern.locate(g) for g in range(5 * block_rows)]
    sources = [source for source, _ in located]
    for source, count in enumerate(pattern.counts):
        assert sources.count(source) == 5 * count
        indices = [index for s, index in located[:3 * block_rows] if s == source]
        assert indices == list(range(3 * count))


@pytest.mark.parametrize("rates, block_rows", PATTERNS)
def test_rows_of_counts_locate_results(rates, block_rows):
    pattern = MixturePattern.create(rates, block_rows)
    sources = [pattern.locate(g)[0] for g in range(3 * block_rows)]
    for end in range(3 * block_rows + 1):
        for source in range(len(rates)):
            assert pattern.rows_of(source, end) == sources[:end].count(source)


@pytest.mark.parametrize("rates, block_rows", PATTERNS)
def test_locate_array_matches_locate(rates, block_rows):
    pattern = MixturePattern.create(rates, block_rows)
    global_rows = np.arange(4 * block_rows)
    sources, indices = pattern.locate_array(global_rows)
    assert list(zip(sources.tolist(), indices.tolist())) == [
        pattern.locate(int(g)) for g in global_rows]


def test_sources_are_spread_through_the_block():
    sources = MixturePattern.create([1, 1], 10).sources
    assert sources == (0, 1) * 5


@pytest.mark.parametrize("rates, block_rows", [
    ([1, 0], 4), ([1, -1], 4), ([1, math.nan], 4), ([math.inf], 4), ([], 4),
    ([1, 1, 1], 2), ([1], 0)])
def test_create_rejects_bad_arguments(rates, block_rows):
    with pytest.raises(ValueError):
        MixturePattern.create(rates, block_rows)


def test_bad_rate_is_named():
    with pytest.raises(ValueError, match="nan"):
        MixturePattern.create([1, math.nan], 4)
    with pytest.raises(ValueError, match="raise block_rows"):
        MixturePattern.create([1, 1, 1], 2)
