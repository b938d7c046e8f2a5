"""Small models and synthetic packed batches shared by the tests."""

import numpy as np

from t5x_lite.models.config import DecoderConfig

TINY = DecoderConfig(num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2, head_dim=8,
                     mlp_dim=64, vocab_size=64)


def packed_batch(rows: int, length: int, vocab: int, seed: int = 0) -> dict:
    """Rows holding two packed segments each (second starts at length // 3 + row % 5)."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(3, vocab, size=(rows, length), dtype=np.int32)
    segment_ids = np.ones((rows, length), np.int32)
    positions = np.tile(np.arange(length, dtype=np.int32), (rows, 1))
    for row in range(rows):
        split = length // 3 + row % 5
        segment_ids[row, split:] = 2
        positions[row, split:] = np.arange(length - split)
    inputs = np.roll(targets, 1, axis=1)
    inputs[positions == 0] = 0
    return {"decoder_input_tokens": inputs, "decoder_target_tokens": targets,
            "decoder_loss_weights": np.ones((rows, length), np.int32),
            "decoder_segment_ids": segment_ids, "decoder_positions": positions}
