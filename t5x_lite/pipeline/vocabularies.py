"""Vocabularies: raw bytes (ByT5 layout) and a SentencePiece model trained on the embedded corpus.

Both reserve pad=0, eos=1, unk=2. The byte vocabulary maps byte b to id b + 3.
The SentencePiece model is BPE with byte fallback and no text normalization, so
decoding an encoding gives back the exact input, indentation and newlines included.

Either may end in extra ids, the sentinels of span corruption, as in T5: extra id k
is id `vocab_size - 1 - k`. ByT5 has 125 of them (384 ids in all), T5's SentencePiece
vocabularies 100 (`T5_EXTRA_IDS`).
"""

import io
import logging
import os
import pathlib
import time

import sentencepiece as spm
import seqio

from t5x_lite import storage

DEFAULT_SPM_VOCAB_SIZE = 8192
# Enough lines to learn the merges, few enough to train in seconds on two cores.
MAX_SPM_TRAINING_LINES = 200_000
T5_EXTRA_IDS = {"byte": 125, "spm": 100}

_SPM_TRAINER_OPTIONS = dict(
    model_type="bpe",
    pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
    byte_fallback=True,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=False,
    allow_whitespace_only_pieces=True,
    split_digits=True,
    max_sentence_length=1 << 14,
    input_sentence_size=0,  # The caller already capped and chose the lines.
    num_threads=2,
    minloglevel=2,
)


def byte_vocabulary(extra_ids: int = 0) -> seqio.ByteVocabulary:
    """UTF-8 bytes; ids 0, 1, 2 are pad, eos, unk, byte b is id b + 3, then `extra_ids`."""
    return seqio.ByteVocabulary(extra_ids=extra_ids)


def cached_sentencepiece_path(vocab_size: int = DEFAULT_SPM_VOCAB_SIZE) -> pathlib.Path:
    """Where the cache keeps the model for this interpreter's corpus and this size."""
    from t5x_lite.data import cache, embedded_corpus  # pylint: disable=g-import-not-at-top
    name = f"embedded_{embedded_corpus.INTERPRETER_CONFIG}_bpe{vocab_size}.model"
    return cache.cache_dir() / "spm" / name


def build_sentencepiece_vocab(vocab_size: int = DEFAULT_SPM_VOCAB_SIZE,
                              output_path: str | None = None) -> str:
    """Trains the SentencePiece model on the embedded corpus unless the cache has it.

    Returns the model path: `output_path` (a copy of the cached model) if given,
    else the cached file.
    """
    cached = _ensure_cached_model(vocab_size)
    if output_path is None:
        return str(cached)
    destination = storage.path(os.path.expanduser(output_path))
    if str(destination) != str(cached.resolve()):
        storage.write_atomic(destination, cached.read_bytes())
    return str(destination)


def build_vocab_command(vocab_size: int, output_path: str | None) -> str:
    """`t5x_lite build-vocab`: builds (or finds) the model and says where it is."""
    was_cached = cached_sentencepiece_path(vocab_size).exists()
    started = time.perf_counter()
    path = build_sentencepiece_vocab(vocab_size, output_path)
    how = "found in the cache" if was_cached else (
        f"trained on the embedded corpus in {time.perf_counter() - started:.1f} s")
    print(f"SentencePiece vocabulary ({vocab_size} pieces, {how}): {path}")
    return path


def sentencepiece_vocabulary(vocab_size: int = DEFAULT_SPM_VOCAB_SIZE,
                             extra_ids: int = 0) -> seqio.SentencePieceVocabulary:
    """The project SentencePiece vocabulary (`vocab_size` pieces, then `extra_ids`); it is
    trained on first use if not built yet."""
    return _EmbeddedSentencePieceVocabulary(vocab_size, extra_ids)


class _EmbeddedSentencePieceVocabulary(seqio.SentencePieceVocabulary):
    """A SentencePiece vocabulary that builds its cached model when first loaded."""

    def __init__(self, vocab_size: int, extra_ids: int = 0):
        self._trained_vocab_size = vocab_size
        super().__init__(str(cached_sentencepiece_path(vocab_size)), extra_ids=extra_ids)

    def _model_context(self):
        if self._model is None and not os.path.exists(self._sentencepiece_model_file):
            logging.warning("SentencePiece vocabulary %s is not built yet; training it now "
                            "(`t5x_lite build-vocab` does this ahead of time).",
                            self._sentencepiece_model_file)
            build_sentencepiece_vocab(self._trained_vocab_size)
        return super()._model_context()


def _ensure_cached_model(vocab_size: int) -> pathlib.Path:
    from t5x_lite.data import cache  # pylint: disable=g-import-not-at-top
    path = cached_sentencepiece_path(vocab_size)
    if path.exists():
        return path
    with cache.exclusive_lock(path.stem):
        if not path.exists():
            storage.write_atomic(path, _train_sentencepiece(vocab_size))
    return path


def _train_sentencepiece(vocab_size: int) -> bytes:
    lines = _training_lines()
    model = io.BytesIO()
    started = time.perf_counter()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model,
                                   vocab_size=vocab_size, **_SPM_TRAINER_OPTIONS)
    logging.info("Trained a %d-piece SentencePiece model on %d lines in %.1f s.",
                 vocab_size, len(lines), time.perf_counter() - started)
    return model.getvalue()


def _training_lines() -> list[str]:
    """Non-blank lines of the corpus's train split, evenly thinned to the cap."""
    from t5x_lite.data.embedded_corpus import documents  # pylint: disable=g-import-not-at-top
    lines = [line
             for kind in documents.KINDS
             for doc in documents.split_documents(kind)["train"]
             for line in doc.text.splitlines() if line.strip()]
    if len(lines) <= MAX_SPM_TRAINING_LINES:
        return lines
    return [lines[i * len(lines) // MAX_SPM_TRAINING_LINES]
            for i in range(MAX_SPM_TRAINING_LINES)]
