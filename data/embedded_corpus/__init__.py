"""The embedded default corpus: stdlib code and pydoc prose as a local TFDS dataset."""

from .embedded_corpus import INTERPRETER_CONFIG, EmbeddedCorpus, split_name
from .prepare import prepared_builder
