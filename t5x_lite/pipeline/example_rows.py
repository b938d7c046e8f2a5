"""Rows of whole examples, for data with inputs and targets, read from token stores.

Example e of the stream is example i of one Task: a Mixture takes its examples in a
fixed pattern per block (rates count examples, as seqio's do), and each Task's examples
come in a keyed permutation, a new one each epoch. Each example becomes one sequence,
its inputs then its targets. Windows of `window_examples` consecutive examples are
packed next-fit in stream order, as seqio packs each window of examples it reads: an
example joins the current row while it fits, otherwise it starts the next row, and a
window's last row ends with the window. A window's row count depends on its examples'
lengths, so row g is found by walking windows forward from a known window start (a
`WindowCursor`), counting lengths only; a checkpoint records the cursor of its next
row's window, so a resume walks at most a batch of rows.
"""

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import numpy as np

from t5x_lite.pipeline import stream_index
from t5x_lite.pipeline.token_store import TokenStore

PACKED_KEYS = ("targets", "targets_segment_ids", "targets_positions", "inputs_width")
_CACHED_WINDOWS = 64


@dataclasses.dataclass(frozen=True)
class WindowCursor:
    """Window `window` of the stream starts at global row `first_row`."""

    window: int = 0
    first_row: int = 0

    def to_json(self) -> list[int]:
        return [self.window, self.first_row]

    @classmethod
    def from_json(cls, value: Sequence[int] | None) -> "WindowCursor":
        return cls(*value) if value else cls()


class ExampleSource:
    """A Task's store of inputs and targets, examples already trimmed to fit a row."""

    def __init__(self, store: TokenStore):
        self.store = store
        self.inputs_offsets = store.offsets("inputs")
        self.targets_offsets = store.offsets("targets")
        self.num_examples = store.num_examples
        self.lengths = np.diff(self.inputs_offsets) + np.diff(self.targets_offsets)

    def sequence(self, example: int) -> tuple[np.ndarray, int]:
        """(inputs then targets, the inputs' length) of one example."""
        inputs = self.store.tokens("inputs", *self.inputs_offsets[example:example + 2])
        targets = self.store.tokens("targets", *self.targets_offsets[example:example + 2])
        return np.concatenate([inputs, targets]), len(inputs)


@dataclasses.dataclass(frozen=True)
class _Window:
    sources: np.ndarray   # [W] the Task of each example
    examples: np.ndarray  # [W] its index in that Task's store
    row_starts: np.ndarray  # [rows + 1] the first example of each row, then W

    @property
    def num_rows(self) -> int:
        return len(self.row_starts) - 1


def next_fit(lengths: np.ndarray, row_length: int) -> np.ndarray:
    """The first example of each row when `lengths` are packed in order into rows of
    `row_length` (a new row whenever the next example does not fit), then len(lengths)."""
    starts, used = [0], 0
    for index, length in enumerate(lengths.tolist()):
        if used + length > row_length and used:
            starts.append(index)
            used = 0
        used += length
    return np.array([*starts, len(lengths)], np.int64)


class ExampleStream:
    """Rows of `row_length` tokens of whole examples of one Task, or of a Mixture of Tasks
    with `rates`."""

    def __init__(self, sources: Sequence[ExampleSource], names: Sequence[str],
                 rates: Sequence[float], seed: int, shuffle: bool, row_length: int,
                 block_examples: int):
        self.sources, self.names = list(sources), list(names)
        self.seed, self.shuffle, self.row_length = seed, shuffle, row_length
        self.window_examples = row_length  # seqio packs windows of that many examples
        self.pattern = stream_index.MixturePattern.create(
            list(rates), block_examples if len(self.sources) > 1 else 1)
        self.window = functools.lru_cache(maxsize=_CACHED_WINDOWS)(self._window)

    def _window(self, index: int) -> _Window:
        """Window `index`: its examples and where each of its rows starts."""
        first = index * self.window_examples
        stream_examples = np.arange(first, first + self.window_examples, dtype=np.int64)
        sources, examples = stream_index.mixture_rows(
            self.pattern, stream_examples, [source.num_examples for source in self.sources],
            self.seed, self.names, self.shuffle)
        lengths = np.zeros(len(sources), np.int64)
        for source_id in np.unique(sources):
            chosen = sources == source_id
            lengths[chosen] = self.sources[source_id].lengths[examples[chosen]]
        return _Window(sources, examples, next_fit(lengths, self.row_length))

    def cursor_at(self, row: int, cursor: WindowCursor) -> WindowCursor:
        """The cursor of the window holding global row `row`, walking from `cursor`."""
        if row < cursor.first_row:
            raise ValueError(f"row {row} is before the cursor's window ({cursor})")
        while row >= cursor.first_row + self.window(cursor.window).num_rows:
            cursor = WindowCursor(cursor.window + 1,
                                  cursor.first_row + self.window(cursor.window).num_rows)
        return cursor

    def packed_rows(self, first_row: int, count: int,
                    cursor: WindowCursor) -> dict[str, np.ndarray]:
        """Rows [first_row, first_row + count) in seqio's packed layout, each
        [count, row_length], plus `inputs_width` (each token's example's inputs length)."""
        packed = {key: np.zeros((count, self.row_length), np.int32) for key in PACKED_KEYS}
        for row in range(count):
            cursor = self.cursor_at(first_row + row, cursor)
            self._fill_row(self.window(cursor.window), first_row + row - cursor.first_row,
                           {key: value[row] for key, value in packed.items()})
        return packed

    def _fill_row(self, window: _Window, row: int, out: Mapping[str, np.ndarray]) -> None:
        begin = 0
        for segment, e in enumerate(range(window.row_starts[row], window.row_starts[row + 1])):
            tokens, inputs_width = self.sources[window.sources[e]].sequence(window.examples[e])
            end = begin + len(tokens)
            out["targets"][begin:end] = tokens
            out["targets_segment_ids"][begin:end] = segment + 1
            out["targets_positions"][begin:end] = np.arange(len(tokens))
            out["inputs_width"][begin:end] = inputs_width
            begin = end

