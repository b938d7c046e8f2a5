"""What every language-modeling Task here shares: a `targets` feature and text preprocessing."""

import functools

import seqio
import tensorflow as tf

from t5x_lite.pipeline import vocabularies
from t5x_lite.errors import ConfigError

from . import preprocessors

VOCABULARIES = {
    "byte": vocabularies.byte_vocabulary,
    "spm": vocabularies.sentencepiece_vocabulary,
    # With T5's extra ids (span corruption's sentinels): ByT5's and T5's layouts.
    "byte_t5": lambda: vocabularies.byte_vocabulary(vocabularies.T5_EXTRA_IDS["byte"]),
    "spm_t5": lambda: vocabularies.sentencepiece_vocabulary(
        extra_ids=vocabularies.T5_EXTRA_IDS["spm"]),
}
SHUFFLE_BUFFER_SIZE = 1_000  # Pieces; the sources already shuffle whole documents.


def vocabulary(name: str) -> seqio.Vocabulary:
    if name not in VOCABULARIES:
        raise ConfigError(f"Unknown vocabulary {name!r}: use one of {sorted(VOCABULARIES)}.")
    return VOCABULARIES[name]()


def register_lm_task(name: str, source: seqio.DataSource, vocabulary_name: str) -> str:
    """(Re-)registers a decoder-only LM Task reading a `text` field; returns its name.

    Text is tokenized, cut into pieces that fit the `targets` length, and ends in EOS.
    """
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=[
            functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
            functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
            preprocessors.split_to_feature_length,
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features={
            "targets": seqio.Feature(vocabulary(vocabulary_name), add_eos=True, dtype=tf.int32),
        },
        shuffle_buffer_size=SHUFFLE_BUFFER_SIZE,
    )
    return name
