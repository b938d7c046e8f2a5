"""The built-in Tasks and Mixtures: the embedded corpus with byte and SentencePiece vocabularies.

Tasks `embedded_code`, `embedded_prose` and Mixture `embedded` use bytes; the `_spm`
variants use the project SentencePiece model. The mixture upweights prose to 20%
(about 5x its share of the corpus) so a model sees English next to code.
"""

import seqio
import tensorflow as tf

from . import embedded_corpus
from .lm_task import register_lm_task
from .sharded_source import ShardFirstSource

MIXTURE_RATES = {"code": 0.8, "prose": 0.2}
_VOCABULARY_SUFFIXES = {"byte": "", "spm": "_spm"}


def embedded_corpus_source(kind: str) -> ShardFirstSource:
    """One kind ('code' | 'prose') of the embedded corpus, prepared on first read."""
    def read_split(split: str) -> tf.data.Dataset:
        builder = embedded_corpus.prepared_builder()
        return builder.as_dataset(split=embedded_corpus.split_name(kind, split),
                                  shuffle_files=False)

    def identity(split: str) -> dict:
        return {"embedded_corpus": embedded_corpus.INTERPRETER_CONFIG,
                "version": str(embedded_corpus.EmbeddedCorpus.VERSION), "kind": kind,
                "split": split}

    return ShardFirstSource(read_split, splits=("train", "validation"), identity=identity)


def sample_until_all_empty(datasets, rates, seed) -> tf.data.Dataset:
    """A Mixture's sampling that goes on from the other Tasks when one runs out (a data
    shard may hold no validation prose)."""
    return tf.data.Dataset.sample_from_datasets(datasets, rates, seed,
                                                stop_on_empty_dataset=False)


def task_name(kind: str, vocabulary_name: str = "byte") -> str:
    return f"embedded_{kind}{_VOCABULARY_SUFFIXES[vocabulary_name]}"


def mixture_name(vocabulary_name: str = "byte") -> str:
    return f"embedded{_VOCABULARY_SUFFIXES[vocabulary_name]}"


def register_embedded_tasks() -> None:
    for vocabulary_name in _VOCABULARY_SUFFIXES:
        for kind in MIXTURE_RATES:
            register_lm_task(task_name(kind, vocabulary_name), embedded_corpus_source(kind),
                             vocabulary_name)
        seqio.MixtureRegistry.remove(mixture_name(vocabulary_name))
        seqio.MixtureRegistry.add(
            mixture_name(vocabulary_name),
            [(task_name(kind, vocabulary_name), rate) for kind, rate in MIXTURE_RATES.items()],
            sample_fn=sample_until_all_empty)


register_embedded_tasks()
