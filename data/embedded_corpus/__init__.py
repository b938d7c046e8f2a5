"""The embedded default corpus: stdlib code and pydoc prose as a local TFDS dataset."""

from .embedded_corpus import EmbeddedCorpus, INTERPRETER_CONFIG, split_name
from .prepare import prepared_builder
