"""TFDS builder for the embedded corpus: stdlib code and pydoc prose, built offline."""

import pathlib
import sys

import tensorflow_datasets as tfds
from etils import epath

from . import documents

# The corpus is whatever this interpreter ships, so each interpreter version
# gets its own builder config (and so its own prepared files).
INTERPRETER_CONFIG = "python{}_{}_{}".format(*sys.version_info[:3])


def split_name(kind: str, split: str) -> str:
    """The TFDS split holding one kind ('code' | 'prose') of one split."""
    return f"{kind}_{split}"


class EmbeddedCorpus(tfds.core.GeneratorBasedBuilder):
    """Python standard library sources (code) and pydoc topic texts (prose)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Stdlib *.py files and pydoc topics; 5% validation by hash."}
    # TFDS would guess this folder from the module name, which setup.py remaps.
    pkg_dir_path = epath.Path(pathlib.Path(__file__).parent)
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(
        name=INTERPRETER_CONFIG, description="Corpus of the running Python interpreter.")]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=documents.__doc__,
            features=tfds.features.FeaturesDict({
                "text": tfds.features.Text(),
                "name": tfds.features.Text(),
            }),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        generators = {}
        for kind in documents.KINDS:
            for split, docs in documents.split_documents(kind).items():
                generators[split_name(kind, split)] = self._generate_examples(docs)
        return generators

    def _generate_examples(self, docs):
        for doc in docs:
            yield doc.name, {"text": doc.text, "name": doc.name}
