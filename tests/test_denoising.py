"""Denoising objectives: span corruption, prefix LM and UL2's mixture of denoisers."""

import itertools

import numpy as np
import pytest

from t5x_lite.pipeline import denoising
from t5x_lite.pipeline.denoising import (
    UL2_DENOISERS, apply_denoiser, choose_denoiser, corrupt_spans, noise_mask, prefix_lm,
    random_segmentation, reconstruct, row_key, span_corruption, t5_lengths, ul2_example)

FIRST_SENTINEL = 32099  # T5's vocabulary: 32100 ids, the last 100 of them extra ids.
TOKEN_LIMIT = 31000  # Test tokens lie below every sentinel a row uses.
PARADIGM_IDS = {"[NLU]": 32100, "[S2S]": 32101, "[NLG]": 32102}


def random_row(length: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, TOKEN_LIMIT, length).astype(np.int32)


def noise_spans(mask_L: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of True in the mask."""
    padded = np.concatenate([[False], mask_L, [False]]).astype(np.int8)
    steps = np.diff(padded)
    starts, ends = np.flatnonzero(steps == 1), np.flatnonzero(steps == -1)
    return list(zip(starts.tolist(), (ends - starts).tolist()))


def test_corrupt_spans_follows_t5s_format():
    tokens = np.arange(10, 18, dtype=np.int32)
    mask = np.array([0, 0, 1, 1, 0, 0, 0, 1], bool)
    inputs, targets = corrupt_spans(tokens, mask, 100)
    assert inputs.tolist() == [10, 11, 100, 14, 15, 16, 99]
    assert targets.tolist() == [100, 12, 13, 99, 17]
    assert inputs.dtype == targets.dtype == np.int32
    assert reconstruct(inputs, targets, 100).tolist() == tokens.tolist()


def test_tokens_that_could_read_as_sentinels_are_refused():
    tokens = np.array([1, 2, 3, 98, 5], np.int32)  # 2 spans: sentinels 100, 99.
    with pytest.raises(ValueError, match="not below 98"):
        corrupt_spans(tokens, np.array([0, 1, 0, 1, 1], bool), 100)


@pytest.mark.parametrize("num_items,num_segments", [(1, 1), (2, 2), (10, 1), (10, 10),
                                                    (500, 37)])
def test_random_segmentation_is_a_partition(num_items, num_segments):
    for key in range(20):
        lengths = random_segmentation(num_items, num_segments, key)
        assert len(lengths) == num_segments
        assert lengths.min() >= 1 and lengths.sum() == num_items


def test_random_segmentation_chooses_every_cut_set_about_equally():
    counts = {}
    for key in range(3000):  # 5 items into 3 segments: C(4, 2) = 6 ways.
        lengths = tuple(random_segmentation(5, 3, row_key(0, key, "segmentation")))
        counts[lengths] = counts.get(lengths, 0) + 1
    assert len(counts) == 6
    assert all(abs(count / 3000 - 1 / 6) < 0.03 for count in counts.values()), counts


SETTINGS = list(itertools.product([0.15, 0.5], [3.0, 8.0, 64.0]))


@pytest.mark.parametrize("density,span", SETTINGS)
def test_inputs_and_targets_reconstruct_the_row(density, span):
    lengths = np.random.default_rng(1).integers(20, 601, 40)
    for row, length in enumerate(lengths.tolist()):
        tokens = random_row(length, row)
        key = row_key(3, row, "span_corruption")
        inputs, targets = span_corruption(tokens, key, density, span,
                                          first_sentinel_id=FIRST_SENTINEL)
        assert reconstruct(inputs, targets, FIRST_SENTINEL).tolist() == tokens.tolist()
        mask = noise_mask(length, density, span, key)
        num_noise, num_spans = denoising.span_counts(length, density, span)
        assert int(mask.sum()) == num_noise and len(noise_spans(mask)) == num_spans
        assert not mask[0] and mask[-1]
        sentinels = list(range(FIRST_SENTINEL, FIRST_SENTINEL - num_spans, -1))
        assert inputs[inputs >= FIRST_SENTINEL - num_spans + 1].tolist() == sentinels
        assert targets[targets >= FIRST_SENTINEL - num_spans + 1].tolist() == sentinels
        assert targets[0] == FIRST_SENTINEL
        assert len(inputs) == length - num_noise + num_spans
        assert len(targets) == num_noise + num_spans


@pytest.mark.parametrize("density,span,position_tolerance", [(0.15, 3.0, 0.04),
                                                             (0.5, 8.0, 0.06)])
def test_noise_density_and_span_length_match_the_settings(density, span,
                                                          position_tolerance):
    masks = np.stack([noise_mask(568, density, span, row_key(1, row, "span_corruption"))
                      for row in range(2000)])
    spans = [length for mask in masks for _, length in noise_spans(mask)]
    assert masks.mean() == pytest.approx(density, rel=0.02)
    assert np.mean(spans) == pytest.approx(span, rel=0.02)
    assert np.std(spans) > 0.5 * span  # Span lengths vary, as a random partition's do.
    # Away from the row's ends (which start non-noise, end noise) every position is
    # noise about equally often: the spans really move from row to row.
    per_position = masks[:, 50:-50].mean(axis=0)
    assert np.abs(per_position - density).max() < position_tolerance
    assert len({mask.tobytes() for mask in masks}) == len(masks)


def test_same_seed_and_row_give_the_same_example():
    tokens = random_row(568, 0)

    def example(seed, row):
        return span_corruption(tokens, row_key(seed, row, "span_corruption"),
                               first_sentinel_id=FIRST_SENTINEL)

    first, again = example(5, 123), example(5, 123)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    for other in (example(5, 124), example(6, 123)):
        assert not np.array_equal(first[0], other[0])
    assert row_key(5, 123, "span_corruption") != row_key(5, 123, "prefix_lm")


def test_row_key_is_derive_key_of_seed_purpose_row():
    from t5x_lite.pipeline.stream_index import derive_key
    assert row_key(0, 7, "span_corruption") == derive_key(0, "span_corruption", 7)
    assert row_key(0, 7, "span_corruption") == 14676491275381428017


def test_golden_masks():
    key = row_key(0, 7, "span_corruption")
    assert noise_mask(30, 0.15, 3.0, key).astype(int).tolist() == [0] * 26 + [1] * 4
    assert noise_mask(40, 0.5, 3.0, key).astype(int).tolist() == [
        0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 0, 0, 0,
        1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1]
    assert noise_spans(noise_mask(100, 0.15, 3.0, key)) == [
        (30, 5), (42, 2), (55, 3), (83, 4), (99, 1)]
    assert random_segmentation(20, 5, key).tolist() == [1, 4, 8, 3, 4]
    inputs, targets = prefix_lm(np.arange(100), key)
    assert inputs.tolist() == list(range(6)) and targets.tolist() == list(range(6, 100))
    assert [choose_denoiser(row_key(0, row, "ul2"), [1] * 7) for row in range(10)] == [
        6, 6, 2, 3, 4, 0, 0, 6, 5, 1]


def test_t5_lengths_match_t5():
    assert t5_lengths(512, 0.15, 3.0) == (568, 114)
    assert t5_lengths(512, 0.5, 3.0) == (766, 512)  # T5's density-0.5 adjustment.
    assert t5_lengths(626, 0.15, 3.0) == (694, 140)


@pytest.mark.parametrize("inputs_length,density,span", [
    (512, 0.15, 3.0), (512, 0.5, 3.0), (512, 0.15, 8.0), (512, 0.5, 64.0),
    (100, 0.15, 64.0), (19, 0.5, 3.0)])
def test_t5_lengths_fit_the_corrupted_rows(inputs_length, density, span):
    raw_length, targets_length = t5_lengths(inputs_length, density, span)
    for row in range(100):
        inputs, targets = span_corruption(
            random_row(raw_length, row), row_key(2, row, "span_corruption"), density,
            span, first_sentinel_id=FIRST_SENTINEL)
        assert len(inputs) + 1 <= inputs_length
        assert len(targets) + 1 == targets_length  # Fits, with no padding wasted.
    longer, _ = span_corruption(random_row(raw_length + 1, 0), 0, density, span,
                                first_sentinel_id=FIRST_SENTINEL)
    if density != 0.5:  # At 0.5, T5's adjustment gives up one raw token.
        assert len(longer) + 1 > inputs_length  # The longest raw row that fits.


def test_prefix_lm_splits_uniformly_and_reconstructs():
    splits = []
    for row in range(4000):
        tokens = random_row(5, row)
        inputs, targets = prefix_lm(tokens, row_key(0, row, "prefix_lm"))
        assert np.concatenate([inputs, targets]).tolist() == tokens.tolist()
        splits.append(len(inputs))
    frequencies = np.bincount(splits, minlength=5) / len(splits)
    assert frequencies[0] == 0 and np.abs(frequencies[1:] - 0.25).max() < 0.025
    inputs, targets = prefix_lm(np.array([7, 8]), 12345)
    assert inputs.tolist() == [7] and targets.tolist() == [8]


def test_ul2_denoisers_are_the_papers():
    settings = [(d.paradigm_token, d.kind, d.noise_density, d.mean_span_length)
                for d in UL2_DENOISERS]
    assert settings == [("[NLU]", "span", 0.15, 3.0), ("[NLU]", "span", 0.15, 8.0),
                        ("[S2S]", "prefix", 0.0, 0.0), ("[NLG]", "span", 0.5, 3.0),
                        ("[NLG]", "span", 0.5, 8.0), ("[NLG]", "span", 0.15, 64.0),
                        ("[NLG]", "span", 0.5, 64.0)]
    with pytest.raises(ValueError):
        denoising.Denoiser("bad", None, "span", 0.0, 3.0)


@pytest.mark.parametrize("rates", [[1] * 7, [2, 1, 4, 1, 1, 0.5, 0.5]])
def test_ul2_chooses_each_denoiser_at_its_rate(rates):
    draws = [choose_denoiser(row_key(4, row, "ul2"), rates) for row in range(20000)]
    frequencies = np.bincount(draws, minlength=7) / len(draws)
    assert np.abs(frequencies - np.array(rates) / sum(rates)).max() < 0.01


def test_ul2_example_leads_with_the_chosen_paradigm_token():
    rates = [1, 1, 2, 1, 1, 1, 1]
    for row in range(300):
        tokens = random_row(64 + row % 200, row)
        key = row_key(9, row, "ul2")
        inputs, targets = ul2_example(tokens, key, UL2_DENOISERS, rates, PARADIGM_IDS,
                                      FIRST_SENTINEL)
        denoiser = UL2_DENOISERS[choose_denoiser(key, rates)]
        assert inputs[0] == PARADIGM_IDS[denoiser.paradigm_token]
        noise_key = denoising.stream_index.derive_key(key, "ul2_noise")
        expected = apply_denoiser(tokens, noise_key, denoiser, PARADIGM_IDS, FIRST_SENTINEL)
        assert inputs.tolist() == expected[0].tolist()
        assert targets.tolist() == expected[1].tolist()
        if denoiser.kind == "span":
            restored = reconstruct(inputs[1:], targets, FIRST_SENTINEL)
        else:
            restored = np.concatenate([inputs[1:], targets])
        assert restored.tolist() == tokens.tolist()


def test_ul2_example_without_a_paradigm_token():
    plain = denoising.Denoiser("R", None, "span", 0.15, 3.0)
    tokens = random_row(100, 0)
    inputs, targets = ul2_example(tokens, 1, [plain], [1.0], {}, FIRST_SENTINEL)
    assert reconstruct(inputs, targets, FIRST_SENTINEL).tolist() == tokens.tolist()
