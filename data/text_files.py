"""A Task over the user's own text files: plain-text streams or JSON lines.

A `.txt` file (any extension but `.jsonl`) is one stream of text: unless
`validation_files` are given, its last `validation_fraction` of characters is the
validation split and the rest train. The stream is cut at line ends into chunks of
at most `chunk_chars` characters, so data shards can divide it; the Task then cuts
each chunk into pieces that fit the feature length. A `.jsonl` file holds one
example per line in its `text_key` field; the last `validation_fraction` of lines
is the validation split. Files are read when the Task is registered and must fit in
memory; larger corpora belong in a TFDS dataset.
"""

import json
from collections.abc import Sequence

import gin
import tensorflow as tf
from etils import epath

from t5x_lite.errors import ConfigError

from .lm_task import register_lm_task
from .sharded_source import ShardFirstSource
from .user_files import content_sha256, existing_files, read_utf8

_WHERE = "text_file_task"
FILE_FORMATS = ("auto", "txt", "jsonl")
DEFAULT_CHUNK_CHARS = 4096


@gin.configurable
def text_file_task(files: Sequence[str] | str,
                   validation_files: Sequence[str] | str | None = None,
                   validation_fraction: float = 0.1,
                   file_format: str = "auto",
                   text_key: str = "text",
                   vocabulary: str = "byte",
                   name: str = "text_files",
                   chunk_chars: int = DEFAULT_CHUNK_CHARS) -> str:
    """Registers (or replaces) the Task `name` over `files` and returns its name."""
    _check_options(validation_fraction, file_format, chunk_chars)
    reader = _Reader(file_format, text_key, chunk_chars)
    train_paths = existing_files(files, _WHERE, "files")
    if validation_files is None:
        splits = _split_each_file(reader, train_paths, validation_fraction)
    else:
        splits = {"train": reader.read_all(train_paths),
                  "validation": reader.read_all(existing_files(
                      validation_files, _WHERE, "validation_files"))}
    splits = {split: texts for split, texts in splits.items() if texts}
    if "train" not in splits:
        raise ConfigError(f"text_file_task: no training text in {[str(p) for p in train_paths]}; "
                         "give non-empty files or a smaller validation_fraction.")
    return register_lm_task(name, _in_memory_source(splits), vocabulary)


def _check_options(validation_fraction: float, file_format: str, chunk_chars: int) -> None:
    if not 0 <= validation_fraction < 1:
        raise ConfigError(f"text_file_task.validation_fraction={validation_fraction}: "
                         "use a fraction in [0, 1).")
    if file_format not in FILE_FORMATS:
        raise ConfigError(f"text_file_task.file_format={file_format!r}: use one of {FILE_FORMATS}.")
    if chunk_chars < 1:
        raise ConfigError(f"text_file_task.chunk_chars={chunk_chars}: use a positive number.")


def _split_each_file(reader: "_Reader", paths: list[epath.Path],
                     validation_fraction: float) -> dict[str, list[str]]:
    """Train is each file's first part, validation its last `validation_fraction`."""
    splits = {"train": [], "validation": []}
    for path in paths:
        train, validation = reader.read_split(path, validation_fraction)
        splits["train"].extend(train)
        splits["validation"].extend(validation)
    return splits


def _split_by_position(items, validation_fraction: float):
    """(first part, last `validation_fraction` part) of a string or list."""
    cut = int(len(items) * (1 - validation_fraction))
    return items[:cut], items[cut:]


class _Reader:
    """Reads one file into examples (texts), in file order."""

    def __init__(self, file_format: str, text_key: str, chunk_chars: int):
        self._file_format = file_format
        self._text_key = text_key
        self._chunk_chars = chunk_chars

    def is_jsonl(self, path: epath.Path) -> bool:
        if self._file_format == "auto":
            return path.suffix.lower() == ".jsonl"
        return self._file_format == "jsonl"

    def read_split(self, path: epath.Path,
                   validation_fraction: float) -> tuple[list[str], list[str]]:
        if self.is_jsonl(path):
            return _split_by_position(self._jsonl_texts(path), validation_fraction)
        train, validation = _split_by_position(read_utf8(path, _WHERE), validation_fraction)
        return self._chunks(train), self._chunks(validation)

    def read_all(self, paths: list[epath.Path]) -> list[str]:
        texts = []
        for path in paths:
            texts.extend(self.read_split(path, validation_fraction=0.0)[0])
        return texts

    def _chunks(self, text: str) -> list[str]:
        return chunk_text(text, self._chunk_chars)

    def _jsonl_texts(self, path: epath.Path) -> list[str]:
        texts = []
        for line_number, line in enumerate(read_utf8(path, _WHERE).splitlines(), start=1):
            if line.strip():
                texts.append(_jsonl_field(line, self._text_key, f"{path}:{line_number}"))
        return texts


def chunk_text(text: str, chunk_chars: int) -> list[str]:
    """Consecutive chunks of at most `chunk_chars`, cut after a newline where one is near."""
    chunks, start = [], 0
    while start < len(text):
        end = min(start + chunk_chars, len(text))
        if end < len(text):
            newline = text.rfind("\n", start + chunk_chars // 2, end)
            end = newline + 1 if newline != -1 else end
        chunks.append(text[start:end])
        start = end
    return chunks



def _jsonl_field(line: str, text_key: str, where: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ConfigError(f"text_file_task: {where} is not valid JSON ({error.msg}); "
                         "each line of a .jsonl file must be one JSON object.") from None
    if not isinstance(record, dict) or text_key not in record:
        raise ConfigError(f"text_file_task: {where} has no '{text_key}' field; give every line "
                         "one, or set text_file_task.text_key to the field holding the text.")
    if not isinstance(record[text_key], str):
        raise ConfigError(f"text_file_task: {where} field '{text_key}' is not a string.")
    return record[text_key]


def _in_memory_source(texts_by_split: dict[str, list[str]]) -> ShardFirstSource:
    def read_split(split: str) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(
            {"text": tf.constant(texts_by_split[split], dtype=tf.string)})

    def identity(split: str) -> dict:
        return {"texts_sha256": content_sha256(texts_by_split[split])}

    return ShardFirstSource(read_split, splits=list(texts_by_split), identity=identity)
