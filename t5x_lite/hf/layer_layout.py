"""A layer stack in a params tree, scanned or unscanned, one block at a time.

Scanned, the blocks of a stack are one subtree `{prefix}blocks` whose arrays carry a
leading layers axis; unscanned, each block is its own subtree `{prefix}layer_{i}`. The
decoder's stack has no prefix; the encoder-decoder's are `encoder_` and `decoder_`.
A model of several stacks in depth order (the MoE decoder's `dense_blocks`, then
`blocks`) numbers its unscanned blocks `layer_{i}` through all of them.
"""

from collections.abc import Iterator, Mapping, Sequence

import jax
import numpy as np

from t5x_lite.hf.checkpoint_reader import to_host

Stacks = Sequence[tuple[str, int]]  # (scanned subtree, its number of blocks), in depth order


def host_layers(params: dict, num_layers: int, scan_layers: bool,
                prefix: str = "") -> Iterator[tuple[int, dict]]:
    """(index, that block's params on the host), one block at a time."""
    return host_layers_of_stacks(params, [(f"{prefix}blocks", num_layers)], scan_layers, prefix)


def host_layers_of_stacks(params: dict, stacks: Stacks, scan_layers: bool,
                          prefix: str = "") -> Iterator[tuple[int, dict]]:
    """(index through all stacks, that block's params on the host), one block at a time."""
    index = 0
    for name, count in stacks:
        for position in range(count):
            if scan_layers:
                layer = jax.tree.map(lambda stacked, p=position: stacked[p], params[name])
            else:
                layer = params[f"{prefix}layer_{index}"]
            yield index, to_host(layer)
            index += 1


def from_layers(layers: list[dict], scan_layers: bool, prefix: str = "") -> dict:
    """The params subtrees that hold `layers` (host block subtrees, in order)."""
    return from_layers_of_stacks(layers, [(f"{prefix}blocks", len(layers))], scan_layers, prefix)


def from_layers_of_stacks(layers: list[dict], stacks: Stacks, scan_layers: bool,
                          prefix: str = "") -> dict:
    """The params subtrees that hold `layers` (host block subtrees in depth order, as
    many as the stacks hold together)."""
    if not scan_layers:
        return {f"{prefix}layer_{index}": layer for index, layer in enumerate(layers)}
    subtrees, start = {}, 0
    for name, count in stacks:
        subtrees[name] = _stack(layers[start:start + count])
        start += count
    return subtrees


def _stack(layers: list) -> dict | np.ndarray:
    """Blocks stacked along a new leading `layers` axis."""
    first = layers[0]
    if isinstance(first, Mapping):
        return {key: _stack([layer[key] for layer in layers]) for key in first}
    return np.stack(layers)
