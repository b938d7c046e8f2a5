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


MAX_DROPS_IN_A_ROW = 10_000


def drop_examples_that_do_not_fit(dataset: tf.data.Dataset,
                                  sequence_length: Mapping[str, int] | None = None,
                                  output_features: Mapping[str, seqio.Feature] | None = None,
                                  max_drops_in_a_row: int = MAX_DROPS_IN_A_ROW) -> tf.data.Dataset:
    """Drops tokenized examples with a feature longer than its length (EOS included).

    Instruction examples are dropped rather than cut: a cut prompt or answer teaches
    a wrong answer. If `max_drops_in_a_row` examples in a row do not fit, reading
    fails with an error naming the lengths, instead of searching an endless stream.
    """
    if not sequence_length:
        return dataset
    limits = {key: length - int(output_features[key].add_eos)
              for key, length in sequence_length.items()
              if length is not None and key in output_features}

    def fits(example):
        return tf.reduce_all([tf.size(example[key]) <= limit for key, limit in limits.items()])

    def count_drops(drops_in_a_row, example):
        keep = fits(example)
        drops_in_a_row = tf.where(keep, tf.constant(0, tf.int64), drops_in_a_row + 1)
        check = tf.debugging.assert_less(
            drops_in_a_row, tf.constant(max_drops_in_a_row, tf.int64),
            message=f"{max_drops_in_a_row} examples in a row are longer than the feature "
                    f"lengths {dict(sequence_length)}: raise the lengths (TASK_FEATURE_LENGTHS).")
        with tf.control_dependencies([check]):
            return drops_in_a_row, (example, tf.identity(keep))

    kept = dataset.scan(tf.constant(0, tf.int64), count_drops).filter(lambda _, keep: keep)
    return kept.map(lambda example, _: example)
