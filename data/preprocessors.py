"""Preprocessors the built-in Tasks share."""

from collections.abc import Mapping

import seqio
import tensorflow as tf

from t5x_lite.errors import ConfigError


def split_to_feature_length(dataset: tf.data.Dataset,
                            sequence_length: Mapping[str, int] | None,
                            output_features: Mapping[str, seqio.Feature],
                            feature_key: str = "targets") -> tf.data.Dataset:
    """Cuts each tokenized example into consecutive pieces that fit the feature length.

    A piece leaves room for the EOS that `append_eos_after_trim` adds, so packing
    never truncates text away. Without a sequence length examples pass unchanged.
    """
    if not sequence_length or sequence_length.get(feature_key) is None:
        return dataset
    eos_room = 1 if output_features[feature_key].add_eos else 0
    piece_length = sequence_length[feature_key] - eos_room
    if piece_length < 1:
        raise ConfigError(f"Feature length {sequence_length[feature_key]} of '{feature_key}' "
                         "leaves no room for tokens: use a length of at least 2.")

    def to_pieces(example):
        tokens = example[feature_key]
        num_pieces = -(-tf.size(tokens, out_type=tf.int64) // piece_length)

        def piece(index):
            start = index * piece_length
            return {**example, feature_key: tokens[start:start + piece_length]}

        return tf.data.Dataset.range(num_pieces).map(piece)

    return dataset.flat_map(to_pieces)
