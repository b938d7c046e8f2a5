"""What every instruction Task here shares: `inputs` and `targets` text features.

The source gives rendered text (a template already applied). Both features are
tokenized with one vocabulary; `targets` ends in EOS, `inputs` does not (the
decoder reads inputs and targets as one sequence). Examples that do not fit the
feature lengths are dropped, never cut. Pretokenized copies are kept, so
`seqio.Evaluator` scores the postprocessed target text.
"""

import functools
from collections.abc import Callable, Sequence

import seqio
import tensorflow as tf

from .lm_task import SHUFFLE_BUFFER_SIZE, vocabulary
from .preprocessors import drop_examples_that_do_not_fit
from .sharded_source import ShardFirstSource
from .user_files import content_sha256


def register_instruction_task(name: str, source: seqio.DataSource, vocabulary_name: str,
                              postprocess_fn: Callable,
                              metric_fns: Sequence[Callable]) -> str:
    """(Re-)registers an instruction Task reading `inputs` and `targets` text; returns its name."""
    vocab = vocabulary(vocabulary_name)
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=[
            functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=True),
            drop_examples_that_do_not_fit,
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features={
            "inputs": seqio.Feature(vocab, add_eos=False, dtype=tf.int32),
            "targets": seqio.Feature(vocab, add_eos=True, dtype=tf.int32),
        },
        postprocess_fn=postprocess_fn,
        metric_fns=list(metric_fns),
        shuffle_buffer_size=SHUFFLE_BUFFER_SIZE,
    )
    return name


def in_memory_source(examples_by_split: Callable[[str], Sequence[dict[str, str]]],
                     splits: Sequence[str]) -> ShardFirstSource:
    """A source over rendered examples, built on first read of each split."""

    def read_split(split: str) -> tf.data.Dataset:
        examples = examples_by_split(split)
        return tf.data.Dataset.from_tensor_slices({
            key: tf.constant([example[key] for example in examples], dtype=tf.string)
            for key in ("inputs", "targets")})

    def identity(split: str) -> dict:
        return {"examples_sha256": content_sha256(examples_by_split(split))}

    return ShardFirstSource(read_split, splits=splits, identity=identity)
