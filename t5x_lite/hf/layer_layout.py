"""A layer stack in a params tree, scanned or unscanned, one block at a time.

Scanned, the blocks of a stack are one subtree `{prefix}blocks` whose arrays carry a
leading layers axis; unscanned, each block is its own subtree `{prefix}layer_{i}`. The
decoder's stack has no prefix; the encoder-decoder's are `encoder_` and `decoder_`.
"""

from collections.abc import Iterator, Mapping

import jax
import numpy as np

from t5x_lite.hf.checkpoint_reader import to_host


def host_layers(params: dict, num_layers: int, scan_layers: bool,
                prefix: str = "") -> Iterator[tuple[int, dict]]:
    """(index, that block's params on the host), one block at a time."""
    for index in range(num_layers):
        if scan_layers:
            layer = jax.tree.map(lambda stacked, i=index: stacked[i], params[f"{prefix}blocks"])
        else:
            layer = params[f"{prefix}layer_{index}"]
        yield index, to_host(layer)


def from_layers(layers: list[dict], scan_layers: bool, prefix: str = "") -> dict:
    """The params subtrees that hold `layers` (host block subtrees, in order)."""
    if scan_layers:
        return {f"{prefix}blocks": _stack(layers)}
    return {f"{prefix}layer_{index}": layer for index, layer in enumerate(layers)}


def _stack(layers: list) -> dict | np.ndarray:
    """Blocks stacked along a new leading `layers` axis."""
    first = layers[0]
    if isinstance(first, Mapping):
        return {key: _stack([layer[key] for layer in layers]) for key in first}
    return np.stack(layers)
