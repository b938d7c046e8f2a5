"""Rows of whole examples, for data with inputs and targets, read from token stores.

Example e of the stream is example i of one Task: a Mixture takes its examples in a
fixed pattern per block (rates count examples, as seqio's do), and each Task's examples
come in a keyed permutation, a new one each epoch. A row holds examples one of two ways:
one sequence per example, its inputs then its targets (a decoder's rows), or the inputs
and the targets apart, each side a row of its own feature length (an encoder-decoder's,
"two-sided"). Windows of `window_examples` consecutive examples are packed next-fit in
stream order, as seqio packs each window of examples it reads: an example joins the
current row while it fits (on both sides), otherwise it starts the next row, and a
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
TWO_SIDED_KEYS = tuple(f"{side}{kind}" for side in ("inputs", "targets")
                       for kind in ("", "_segment_ids", "_positions"))
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
        self.lengths_E2 = np.stack([np.diff(self.inputs_offsets),
                                    np.diff(self.targets_offsets)], axis=1)

    def features(self, example: int) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets) of one example."""
        return (self.store.tokens("inputs", *self.inputs_offsets[example:example + 2]),
                self.store.tokens("targets", *self.targets_offsets[example:example + 2]))


@dataclasses.dataclass(frozen=True)
class _Window:
    sources: np.ndarray   # [W] the Task of each example
    examples: np.ndarray  # [W] its index in that Task's store
    row_starts: np.ndarray  # [rows + 1] the first example of each row, then W

    @property
    def num_rows(self) -> int:
        return len(self.row_starts) - 1


def next_fit(lengths_EK: np.ndarray, capacity_K: Sequence[int]) -> np.ndarray:
    """The first example of each row when examples with `lengths_EK` (one length per
    side) are packed in order into rows of `capacity_K` (a new row whenever the next
    example does not fit on some side), then the number of examples."""
    starts, used = [0], [0] * len(capacity_K)
    for index, lengths in enumerate(lengths_EK.tolist()):
        if any(used) and any(u + n > c for u, n, c in zip(used, lengths, capacity_K)):
            starts.append(index)
            used = [0] * len(capacity_K)
        used = [u + n for u, n in zip(used, lengths)]
    return np.array([*starts, len(lengths_EK)], np.int64)


class ExampleStream:
    """Rows of whole examples of one Task, or of a Mixture of Tasks with `rates`, for
    feature lengths {'inputs': I, 'targets': T}: rows of I + T tokens of inputs then
    targets, or (`two_sided`) rows of I inputs beside rows of T targets."""

    def __init__(self, sources: Sequence[ExampleSource], names: Sequence[str],
                 rates: Sequence[float], seed: int, shuffle: bool,
                 lengths: Mapping[str, int], two_sided: bool, block_examples: int):
        self.sources, self.names = list(sources), list(names)
        self.seed, self.shuffle, self.two_sided = seed, shuffle, two_sided
        self.widths = ({"inputs": lengths["inputs"], "targets": lengths["targets"]}
                       if two_sided else {"targets": lengths["inputs"] + lengths["targets"]})
        # seqio packs windows of as many examples as its longest feature has tokens.
        self.window_examples = max(self.widths.values())
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
        lengths_W2 = np.zeros((len(sources), 2), np.int64)
        for source_id in np.unique(sources):
            chosen = sources == source_id
            lengths_W2[chosen] = self.sources[source_id].lengths_E2[examples[chosen]]
        if not self.two_sided:
            lengths_W2 = lengths_W2.sum(axis=1, keepdims=True)
        return _Window(sources, examples, next_fit(lengths_W2, list(self.widths.values())))

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
        """Rows [first_row, first_row + count) in seqio's packed layout, [count, width]:
        two-sided, `inputs` and `targets` with their segment ids and positions; else
        `targets` etc. and `inputs_width` (each token's example's inputs length)."""
        if self.two_sided:
            packed = {key: np.zeros((count, self.widths[key.split("_")[0]]), np.int32)
                      for key in TWO_SIDED_KEYS}
        else:
            packed = {key: np.zeros((count, self.widths["targets"]), np.int32)
                      for key in PACKED_KEYS}
        for row in range(count):
            cursor = self.cursor_at(first_row + row, cursor)
            self._fill_row(self.window(cursor.window), first_row + row - cursor.first_row,
                           {key: value[row] for key, value in packed.items()})
        return packed

    def _fill_row(self, window: _Window, row: int, out: Mapping[str, np.ndarray]) -> None:
        begin = dict.fromkeys(self.widths, 0)
        for segment, e in enumerate(range(window.row_starts[row], window.row_starts[row + 1])):
            inputs, targets = self.sources[window.sources[e]].features(window.examples[e])
            sides = ({"inputs": inputs, "targets": targets} if self.two_sided
                     else {"targets": np.concatenate([inputs, targets])})
            for side, tokens in sides.items():
                span = slice(begin[side], begin[side] + len(tokens))
                out[side][span] = tokens
                out[f"{side}_segment_ids"][span] = segment + 1
                out[f"{side}_positions"][span] = np.arange(len(tokens))
                begin[side] = span.stop
            if not self.two_sided:
                out["inputs_width"][span] = len(inputs)
