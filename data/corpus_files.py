"""A Task over a large corpus of files: read as a stream, never whole, so a token store of
tens of GB builds in bounded memory.

`train_files` and `validation_files` are paths or glob patterns, local or `gs://`. A
`.jsonl` file (or `.jsonl.gz`) holds one document per line in its `text_key` field; any
other file (`.txt`, `.txt.gz`, ...) is a stream of text, cut at line ends into documents
of at most `chunk_chars` characters (as `text_file_task` does). Files are read in sorted
order. The
Task's store is keyed by each file's path, size and modification time, not by hashing
its content, so a corpus is not read twice to be recognised.
"""

import gzip
import io
import json
from collections.abc import Iterator, Sequence

import gin
import tensorflow as tf
from etils import epath

from t5x_lite import storage
from t5x_lite.errors import ConfigError

from .lm_task import register_lm_task
from .sharded_source import ShardFirstSource

_WHERE = "corpus_task"


@gin.configurable
def corpus_task(train_files: Sequence[str] | str, validation_files: Sequence[str] | str = (),
                text_key: str = "text", vocabulary: str = "byte", name: str = "corpus",
                chunk_chars: int = 4096) -> str:
    """Registers (or replaces) the Task `name` over the files; returns its name."""
    splits = {"train": _matching(train_files, "train_files")}
    if validation_files:
        splits["validation"] = _matching(validation_files, "validation_files")

    def read_files(files: list[epath.Path]) -> tf.data.Dataset:
        return tf.data.Dataset.from_generator(
            lambda: ({"text": text} for text in documents(files, text_key, chunk_chars)),
            output_signature={"text": tf.TensorSpec((), tf.string)})

    def identity(split: str) -> dict:
        return {"files": [_file_identity(path) for path in splits[split]],
                "text_key": text_key, "chunk_chars": chunk_chars}

    source = ShardFirstSource(lambda split: read_files(splits[split]), list(splits), identity,
                              num_parts=lambda split: len(splits[split]),
                              read_part=lambda split, part: read_files(splits[split][part:part + 1]))
    return register_lm_task(name, source, vocabulary)


def _matching(patterns: Sequence[str] | str, argument: str) -> list[epath.Path]:
    """The files the patterns name, sorted; ConfigError naming a pattern that matches none."""
    files = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        path = storage.path(pattern)
        matches = sorted(path.parent.glob(path.name)) if any(c in pattern for c in "*?[") else (
            [path] if path.is_file() else [])
        if not matches:
            raise ConfigError(f"{_WHERE}.{argument}: no file matches {pattern}; give existing "
                              "files or patterns such as '/data/shard-*.jsonl.gz'.")
        files.extend(matches)
    return sorted(set(files), key=str)


def _file_identity(path: epath.Path) -> dict:
    stat = path.stat()
    return {"path": str(path), "size": stat.length, "mtime": stat.mtime}


def documents(files: list[epath.Path], text_key: str, chunk_chars: int) -> Iterator[str]:
    """Each file's documents in turn, read line by line."""
    for path in files:
        with path.open("rb") as raw:
            stream = gzip.GzipFile(fileobj=raw) if path.name.endswith(".gz") else raw
            lines = io.TextIOWrapper(stream, encoding="utf-8")
            if ".jsonl" in path.name:
                yield from _jsonl_documents(lines, text_key, path)
            else:
                yield from _chunks(lines, chunk_chars)


def _chunks(lines: Iterator[str], chunk_chars: int) -> Iterator[str]:
    """Consecutive lines joined into pieces of at most `chunk_chars` characters (a longer
    line is cut)."""
    piece = ""
    for line in lines:
        while len(piece) + len(line) > chunk_chars:
            room = chunk_chars - len(piece)
            if piece and room < len(line):
                yield piece
                piece = ""
                continue
            yield piece + line[:room]
            piece, line = "", line[room:]
        piece += line
    if piece:
        yield piece


def _jsonl_documents(lines: io.TextIOWrapper, text_key: str, path: epath.Path) -> Iterator[str]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{_WHERE}: {path}:{number} is not valid JSON ({error.msg}).") \
                from None
        if not isinstance(record, dict) or text_key not in record:
            raise ConfigError(f"{_WHERE}: {path}:{number} has no '{text_key}' field; set "
                              "corpus_task.text_key to the field holding the text.")
        yield record[text_key]
