"""The data stream read from token stores: row g of the global stream is a pure function
of (seed, g, the stores), computed by index arithmetic, so any position is reached in
constant time and every process reads only its own rows.

Language-modeling rows are cut from each Task's examples concatenated one after another
(concatenate, then split): row r of a Task is its tokens [r * L, (r + 1) * L), with a
segment per example (or part of one) and positions from 0 within each. A Mixture takes
its rows in a fixed pattern per block of MIXTURE_BLOCK_ROWS rows, in proportion to its
rates (so rates count rows, that is tokens); each Task's rows come in a keyed
permutation, a new one each epoch. For an encoder-decoder objective each row is then
denoised into one example (`DenoisedStream`).
"""

from collections.abc import Mapping, Sequence

import numpy as np
import seqio

from t5x_lite.pipeline import objectives, stream_index
from t5x_lite.pipeline.example_rows import TWO_SIDED_KEYS
from t5x_lite.pipeline.objectives import Objective
from t5x_lite.pipeline.token_store import TokenStore

MIXTURE_BLOCK_ROWS = 1024
PACKED_KEYS = ("targets", "targets_segment_ids", "targets_positions")


class LmRows:
    """A Task's store as rows of `length` tokens: its examples concatenated, then split
    (the tokens after the last whole row are left out)."""

    def __init__(self, store: TokenStore, length: int):
        self.store, self.length = store, length
        offsets = store.offsets("targets")
        self.starts = offsets[:-1]
        self.num_rows = int(offsets[-1]) // length

    def packed(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Rows `rows` in seqio's packed layout, each [len(rows), length]."""
        length = self.length
        targets = np.stack([self.store.tokens("targets", r * length, (r + 1) * length)
                            for r in rows.tolist()]) if len(rows) else np.zeros((0, length))
        begin_R1 = (rows.astype(np.int64) * length)[:, None]
        token_RL = begin_R1 + np.arange(length)
        example_RL = np.searchsorted(self.starts, token_RL, side="right") - 1
        first_example_R1 = example_RL[:, :1]
        segment_start_RL = np.maximum(self.starts[example_RL], begin_R1)
        return {"targets": targets.astype(np.int32),
                "targets_segment_ids": (example_RL - first_example_R1 + 1).astype(np.int32),
                "targets_positions": (token_RL - segment_start_RL).astype(np.int32)}


class StoreStream:
    """Rows of one Task, or of a Mixture of Tasks with `rates`."""

    def __init__(self, sources: Sequence[LmRows], names: Sequence[str],
                 rates: Sequence[float], seed: int, shuffle: bool,
                 block_rows: int = MIXTURE_BLOCK_ROWS):
        self.sources, self.names = list(sources), list(names)
        self.seed, self.shuffle = seed, shuffle
        self.pattern = stream_index.MixturePattern.create(
            list(rates), block_rows if len(self.sources) > 1 else 1)

    def packed_rows(self, global_rows: np.ndarray) -> dict[str, np.ndarray]:
        """Rows `global_rows` of the stream, in seqio's packed layout."""
        length = self.sources[0].length
        packed = {key: np.zeros((len(global_rows), length), np.int32) for key in PACKED_KEYS}
        source_ids, rows = stream_index.mixture_rows(
            self.pattern, global_rows, [source.num_rows for source in self.sources], self.seed,
            self.names, self.shuffle)
        for source_id in np.unique(source_ids):
            chosen = source_ids == source_id
            for key, value in self.sources[source_id].packed(rows[chosen]).items():
                packed[key][chosen] = value
        return packed


class DenoisedStream:
    """A stream of raw rows with each row made one example by an encoder-decoder
    objective: row g's noise is keyed by (seed, g), so it is known from g alone."""

    def __init__(self, raw_rows: StoreStream, objective: Objective,
                 vocabulary: seqio.Vocabulary, lengths: Mapping[str, int], seed: int):
        self.raw_rows, self.objective, self.vocabulary = raw_rows, objective, vocabulary
        self.lengths, self.seed = dict(lengths), seed

    def packed_rows(self, global_rows: np.ndarray) -> dict[str, np.ndarray]:
        """Rows `global_rows` in seqio's packed encoder-decoder layout: `inputs` and
        `targets` with their segment ids (1, one example per row) and positions."""
        raw_RL = self.raw_rows.packed_rows(global_rows)["targets"]
        packed = {key: np.zeros((len(global_rows), self.lengths[key.split("_")[0]]), np.int32)
                  for key in TWO_SIDED_KEYS}
        for r, (row, tokens_L) in enumerate(zip(global_rows.tolist(), raw_RL)):
            key = objectives.row_key(self.seed, row, self.objective)
            example = self.objective.example(tokens_L, key, self.vocabulary, self.lengths)
            for side, tokens in zip(("inputs", "targets"), example):
                packed[side][r, :len(tokens)] = tokens
                packed[f"{side}_segment_ids"][r, :len(tokens)] = 1
                packed[f"{side}_positions"][r, :len(tokens)] = np.arange(len(tokens))
        return packed
