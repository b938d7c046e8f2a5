"""The encoder-decoder's seqio feature converter.

seqio's `EncDecFeatureConverter` maps `inputs` to `encoder_input_tokens` and `targets` to
`decoder_target_tokens`, with `decoder_input_tokens` the targets shifted right by the start
token 0 within each segment and loss weight 1 on every non-padding target. Packed, it adds
segment ids and positions of both sides; this converter adds them unpacked too (segment 1
on tokens, 0 on padding; positions 0..L-1), so both kinds of rows have the same features.
"""

from collections.abc import Mapping
from typing import ClassVar

import seqio
import tensorflow as tf

_SIDES = (("encoder", "encoder_input_tokens", "inputs"),
          ("decoder", "decoder_target_tokens", "targets"))
_INT32 = seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)


class EncDecFeatureConverter(seqio.EncDecFeatureConverter):
    """seqio's encoder-decoder features, with segment ids and positions unpacked too."""

    MODEL_FEATURES: ClassVar[dict[str, seqio.FeatureConverter.FeatureSpec]] = {
        **seqio.EncDecFeatureConverter.MODEL_FEATURES,
        **{f"{side}_{kind}": _INT32 for side, _, _ in _SIDES
           for kind in ("segment_ids", "positions")},
    }

    def _convert_example(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        converted = dict(super()._convert_example(features))
        if not self.pack:
            for side, tokens, _ in _SIDES:
                converted[f"{side}_segment_ids"] = tf.cast(converted[tokens] != 0, tf.int32)
                converted[f"{side}_positions"] = tf.range(tf.size(converted[tokens]),
                                                          dtype=tf.int32)
        return converted

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
        lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
        for side, _, feature in _SIDES:
            for kind in ("segment_ids", "positions"):
                lengths[f"{side}_{kind}"] = task_feature_lengths[feature]
        return lengths
