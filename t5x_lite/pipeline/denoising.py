"""Pretraining objectives for encoder-decoder models: a row of raw tokens becomes
(encoder inputs, decoder targets), with noise that is a pure function of (seed, row).

Objectives:
- span corruption (T5): a random spans noise mask chooses spans of the row; each noise
  span is replaced in the inputs by one sentinel, and the targets are, span by span,
  that sentinel followed by the span's tokens;
- prefix LM: the row split at a random point into inputs and targets;
- UL2's mixture of denoisers (Tay et al. 2022): each row draws one denoiser (a span
  corruption setting or prefix LM) and its inputs start with the denoiser's paradigm
  token ("[NLU]", "[S2S]", "[NLG]"), whose id the caller supplies.

Conventions:
- Sentinels count down, as in T5 with a seqio vocabulary with extra ids: sentinel k (the
  k-th noise span of the row, from 0) is `first_sentinel_id - k`, where
  `first_sentinel_id` is the vocabulary's first extra id (`vocab_size - 1`). A row
  with S noise spans must hold only tokens below `first_sentinel_id - S` (so that no
  token reads as a sentinel); with a vocabulary that holds only the sentinels from
  its extra ids, S must not exceed the number of extra ids.
- No EOS is added here; the caller appends it to inputs and targets (`t5_lengths`
  counts it).
- Names end in their shape: `_L` the raw row, `_I` the inputs, `_T` the targets, `_S`
  one entry per noise span.

Randomness: every draw comes from a 64-bit key (`row_key(seed, row, purpose)`),
through `stream_index`'s own splitmix64-style mixer and SHA-256 key derivation, not
numpy's Generator methods or tf.random, whose streams may change with a library
upgrade. So row g's noise is known from (seed, g) alone, and a run resumed at any row
gets the same noise without replaying the rows before it.
"""

import dataclasses
import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from t5x_lite.pipeline import stream_index



def row_key(seed: int, row: int, purpose: str) -> int:
    """The 64-bit key of row `row`'s noise for `purpose` (e.g. "span_corruption")."""
    return stream_index.derive_key(seed, purpose, row)


def _uniform_unit(key: int) -> float:
    """A keyed draw, uniform in [0, 1) on a 2**-53 grid."""
    return (key >> 11) * 2.0 ** -53


def _uniform_int(key: int, size: int) -> int:
    """A keyed draw, uniform in range(size) (bias below size / 2**64)."""
    return (key * size) >> 64


def random_segmentation(num_items: int, num_segments: int, key: int) -> np.ndarray:
    """Lengths of a random partition of `num_items` items into `num_segments` nonempty
    segments in order, int64[num_segments]: the segments are cut at `num_segments - 1`
    of the `num_items - 1` gaps between items, the gaps with the smallest keyed draws
    (those first in a keyed shuffle of the gaps)."""
    if not 1 <= num_segments <= num_items:
        raise ValueError(f"cannot cut {num_items} items into {num_segments} segments")
    draws_G = stream_index.keyed_draws(num_items - 1, key)
    cut_gaps = np.sort(np.argsort(draws_G, kind="stable")[:num_segments - 1])
    boundaries = np.concatenate([[0], cut_gaps + 1, [num_items]])
    return np.diff(boundaries)


def span_counts(length: int, noise_density: float,
                mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a row of `length` tokens, as in T5."""
    if length < 2:
        raise ValueError(f"a row of {length} tokens is too short to noise")
    if not (0 < noise_density < 1 and mean_span_length >= 1):
        raise ValueError(f"need 0 < noise_density < 1 and mean_span_length >= 1, got "
                         f"{noise_density}, {mean_span_length}")
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(1, round(num_noise / mean_span_length))
    return num_noise, min(num_spans, num_noise, length - num_noise)


def noise_mask(length: int, noise_density: float, mean_span_length: float,
               key: int) -> np.ndarray:
    """T5's random spans noise mask, bool[length] (True: noise): non-noise and noise
    spans alternate, starting with non-noise and ending with noise, their lengths
    random partitions of the non-noise and noise tokens."""
    num_noise, num_spans = span_counts(length, noise_density, mean_span_length)
    noise_S = random_segmentation(num_noise, num_spans,
                                  stream_index.derive_key(key, "noise_spans"))
    nonnoise_S = random_segmentation(length - num_noise, num_spans,
                                     stream_index.derive_key(key, "nonnoise_spans"))
    span_lengths = np.stack([nonnoise_S, noise_S], axis=1).ravel()
    is_noise = np.tile([False, True], num_spans)
    return np.repeat(is_noise, span_lengths)


def corrupt_spans(tokens_L: np.ndarray, mask_L: np.ndarray,
                  first_sentinel_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of `tokens_L` with noise mask `mask_L`, in T5's format."""
    tokens_L, mask_L = np.asarray(tokens_L), np.asarray(mask_L, bool)
    span_start_L = mask_L & ~np.concatenate([[False], mask_L[:-1]])
    num_spans = int(span_start_L.sum())
    if num_spans and int(tokens_L.max()) >= first_sentinel_id - num_spans:
        raise ValueError(f"a token is not below {first_sentinel_id - num_spans}, one "
                         f"less than the row's lowest sentinel")
    sentinels_S = (first_sentinel_id - np.arange(num_spans)).astype(tokens_L.dtype)
    inputs_L = tokens_L.copy()
    inputs_L[span_start_L] = sentinels_S
    inputs_I = inputs_L[~mask_L | span_start_L]
    span_start_in_noise_S = (np.cumsum(mask_L) - 1)[span_start_L]
    targets_T = np.insert(tokens_L[mask_L], span_start_in_noise_S, sentinels_S)
    return inputs_I, targets_T


def span_corruption(tokens_L: np.ndarray, key: int, noise_density: float = 0.15,
                    mean_span_length: float = 3.0, *,
                    first_sentinel_id: int) -> tuple[np.ndarray, np.ndarray]:
    """T5's span corruption of one row: (inputs, targets), without EOS."""
    mask_L = noise_mask(len(tokens_L), noise_density, mean_span_length, key)
    return corrupt_spans(tokens_L, mask_L, first_sentinel_id)


def _split_at_sentinels(values: np.ndarray, first_sentinel_id: int,
                        num_spans: int | None = None) -> list[np.ndarray]:
    """`values` cut before each sentinel, in order (at most `num_spans` of them)."""
    pieces, start, span = [], 0, 0
    for position, value in enumerate(values.tolist()):
        if (num_spans is None or span < num_spans) and value == first_sentinel_id - span:
            pieces.append(values[start:position])
            start, span = position + 1, span + 1
    pieces.append(values[start:])
    return pieces


def reconstruct(inputs_I: np.ndarray, targets_T: np.ndarray,
                first_sentinel_id: int) -> np.ndarray:
    """The raw row back from span-corrupted (inputs, targets)."""
    inputs_I, targets_T = np.asarray(inputs_I), np.asarray(targets_T)
    kept = _split_at_sentinels(inputs_I, first_sentinel_id)
    num_spans = len(kept) - 1
    lead, *spans = _split_at_sentinels(targets_T, first_sentinel_id, num_spans)
    if lead.size or len(spans) != num_spans:
        raise ValueError("the targets do not hold one sentinel per span of the inputs")
    pieces = [piece for pair in zip(kept, spans) for piece in pair] + [kept[-1]]
    return np.concatenate(pieces).astype(inputs_I.dtype)


def t5_lengths(inputs_length: int, noise_density: float,
               mean_span_length: float) -> tuple[int, int]:
    """(raw_tokens_length, targets_length), as T5's `random_spans_helper`: the longest
    raw row whose span-corrupted inputs plus EOS fit `inputs_length`, and the length of
    its targets plus EOS."""

    def corrupted_lengths(raw_length: int) -> tuple[int, int]:
        num_noise, num_spans = span_counts(raw_length, noise_density, mean_span_length)
        return raw_length - num_noise + num_spans + 1, num_noise + num_spans + 1

    if inputs_length < 3:
        raise ValueError(f"inputs_length {inputs_length} is below 3")
    raw_length = inputs_length - 1
    while corrupted_lengths(raw_length + 1)[0] <= inputs_length:
        raw_length += 1
    targets_length = corrupted_lengths(raw_length)[1]
    # As T5: at density 0.5, one raw token less brings targets back to inputs_length.
    if noise_density == 0.5 and targets_length > inputs_length:
        raw_length -= 1
        targets_length = corrupted_lengths(raw_length)[1]
    return raw_length, targets_length


def prefix_lm(tokens_L: np.ndarray, key: int) -> tuple[np.ndarray, np.ndarray]:
    """The row split at a keyed point, uniform in [1, len - 1]: (prefix, rest)."""
    tokens_L = np.asarray(tokens_L)
    if len(tokens_L) < 2:
        raise ValueError(f"a row of {len(tokens_L)} tokens is too short to split")
    split = 1 + _uniform_int(stream_index.derive_key(key, "prefix_split"),
                             len(tokens_L) - 1)
    return tokens_L[:split], tokens_L[split:]


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """One UL2 denoiser: span corruption with its settings, or prefix LM."""

    name: str
    paradigm_token: str | None  # Prepended to inputs; its id comes from the caller.
    kind: str  # "span" or "prefix".
    noise_density: float = 0.0  # Span corruption only.
    mean_span_length: float = 0.0  # Span corruption only.

    def __post_init__(self):
        if self.kind == "span":
            span_counts(2, self.noise_density, self.mean_span_length)  # Validates.
        elif self.kind != "prefix":
            raise ValueError(f"denoiser kind {self.kind!r} is not 'span' or 'prefix'")


UL2_DENOISERS = (
    Denoiser("R-span3-d0.15", "[NLU]", "span", 0.15, 3.0),
    Denoiser("R-span8-d0.15", "[NLU]", "span", 0.15, 8.0),
    Denoiser("S-prefix", "[S2S]", "prefix"),
    Denoiser("X-span3-d0.5", "[NLG]", "span", 0.5, 3.0),
    Denoiser("X-span8-d0.5", "[NLG]", "span", 0.5, 8.0),
    Denoiser("X-span64-d0.15", "[NLG]", "span", 0.15, 64.0),
    Denoiser("X-span64-d0.5", "[NLG]", "span", 0.5, 64.0),
)


def choose_denoiser(key: int, rates: Sequence[float]) -> int:
    """Index of the denoiser drawn by `key`, denoiser i with chance rates[i] / sum."""
    if not rates or min(rates) < 0 or sum(rates) <= 0:
        raise ValueError(f"rates {list(rates)} are not nonnegative with a positive sum")
    threshold = _uniform_unit(stream_index.derive_key(key, "ul2_denoiser")) * sum(rates)
    for index, cumulative in enumerate(itertools.accumulate(rates)):
        if threshold < cumulative and rates[index] > 0:
            return index
    return max(i for i, rate in enumerate(rates) if rate > 0)  # Float rounding only.


def apply_denoiser(tokens_L: np.ndarray, key: int, denoiser: Denoiser,
                   paradigm_ids: Mapping[str, int],
                   first_sentinel_id: int) -> tuple[np.ndarray, np.ndarray]:
    """`denoiser`'s (inputs, targets) of the row, inputs led by its paradigm token."""
    tokens_L = np.asarray(tokens_L)
    if denoiser.kind == "span":
        inputs_I, targets_T = span_corruption(
            tokens_L, key, denoiser.noise_density, denoiser.mean_span_length,
            first_sentinel_id=first_sentinel_id)
    else:
        inputs_I, targets_T = prefix_lm(tokens_L, key)
    if denoiser.paradigm_token is not None:
        paradigm_id = paradigm_ids[denoiser.paradigm_token]
        inputs_I = np.concatenate([np.asarray([paradigm_id], tokens_L.dtype), inputs_I])
    return inputs_I, targets_T


def ul2_example(tokens_L: np.ndarray, key: int, denoisers: Sequence[Denoiser],
                rates: Sequence[float], paradigm_ids: Mapping[str, int],
                first_sentinel_id: int) -> tuple[np.ndarray, np.ndarray]:
    """UL2's mixture of denoisers on one row: a keyed draw picks the denoiser (with
    `rates`), then a separate key drives its noise."""
    if len(rates) != len(denoisers):
        raise ValueError(f"{len(rates)} rates for {len(denoisers)} denoisers")
    denoiser = denoisers[choose_denoiser(key, rates)]
    return apply_denoiser(tokens_L, stream_index.derive_key(key, "ul2_noise"), denoiser,
                          paradigm_ids, first_sentinel_id)
