"""The decoder's seqio feature converters: language-modeling data and instruction data.

`LanguageModelFeatureConverter` is seqio's decoder converter; unpacked, it adds the
segment ids and positions packed rows have.

For instruction data:

seqio's `PrefixLMFeatureConverter(loss_on_targets_only=True)` concatenates each
example's `inputs` and `targets` into one decoder sequence, packs sequences into
rows of `inputs + targets` length, shifts the tokens right within each segment and
gives loss weight 1 only to target tokens (EOS included). This converter keeps all
of that and emits exactly the features the train and eval steps read: it drops
`decoder_causal_attention` (the model attends causally everywhere, so a
bidirectional prefix mask has no use) and, unpacked, adds the segment ids and
positions packed rows have (segment 1 on tokens, 0 on padding; positions 0..L-1).
"""

from collections.abc import Mapping
from typing import ClassVar

import seqio
import tensorflow as tf

_CAUSAL_ATTENTION = "decoder_causal_attention"
_POSITION_FEATURES = ("decoder_segment_ids", "decoder_positions")
_INT32 = seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)


class InstructionFeatureConverter(seqio.PrefixLMFeatureConverter):
    """Decoder features with loss on targets only: `decoder_{input,target}_tokens`,
    `decoder_loss_weights`, `decoder_segment_ids`, `decoder_positions`."""

    MODEL_FEATURES: ClassVar[dict[str, seqio.FeatureConverter.FeatureSpec]] = {
        **{key: spec for key, spec in seqio.PrefixLMFeatureConverter.MODEL_FEATURES.items()
           if key != _CAUSAL_ATTENTION},
        **{key: _INT32 for key in _POSITION_FEATURES},
    }

    def __init__(self, pack: bool = True):
        super().__init__(loss_on_targets_only=True, pack=pack)

    def _convert_example(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        converted = dict(super()._convert_example(features))
        del converted[_CAUSAL_ATTENTION]
        return converted if self.pack else _with_unpacked_segments(converted)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
        lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
        del lengths[_CAUSAL_ATTENTION]
        row_length = lengths["decoder_target_tokens"]
        return {**lengths, **{key: row_length for key in _POSITION_FEATURES}}


def _with_unpacked_segments(features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Segment 1 on tokens, 0 on padding; positions 0..L-1."""
    targets = features["decoder_target_tokens"]
    return {**features,
            "decoder_segment_ids": tf.cast(targets != 0, tf.int32),
            "decoder_positions": tf.range(tf.size(targets), dtype=tf.int32)}


class LanguageModelFeatureConverter(seqio.DecoderFeatureConverter):
    """Decoder features with loss on every token, the same five as instruction data's."""

    def __call__(self, ds: tf.data.Dataset,
                 task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        converted = super().__call__(ds, task_feature_lengths)
        return converted if self.pack else converted.map(_with_unpacked_segments)
