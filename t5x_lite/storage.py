"""The run directory and every file written under it or as an output, on `etils.epath`.

Local paths are made absolute; URIs (`gs://...`) are kept as given, so one set of calls
serves local disk and object stores. Orbax, TensorBoard and the profiler take
`str(path)`.
"""

import json
import os
from collections.abc import Iterator

import jax
from etils import epath

from t5x_lite.errors import ConfigError

PathLike = str | os.PathLike


def is_uri(location: PathLike) -> bool:
    """True for a location with a scheme, such as `gs://bucket/run`."""
    return "://" in os.fspath(location)


def path(location: PathLike) -> epath.Path:
    """`location` as a path: absolute if local, as given if a URI."""
    text = os.fspath(location)
    return epath.Path(text if is_uri(text) else os.path.abspath(text))


def join(location: PathLike, *parts: str) -> epath.Path:
    """`location` (made a path as by `path`) joined with `parts`."""
    return path(location).joinpath(*parts)


def read_text(location: PathLike) -> str:
    return path(location).read_text()


def read_jsonl(location: PathLike) -> list[dict]:
    """The JSON objects of a JSON-lines file, one per non-blank line; [] if it is absent."""
    file = path(location)
    if not file.exists():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def write_atomic(location: PathLike, content: str | bytes) -> None:
    """Writes `content` beside `location`, then renames it into place: readers see the old
    file or the whole new one, and a failed write leaves no partial file. Parent
    directories are made as needed."""
    target = path(location)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        if isinstance(content, bytes):
            partial.write_bytes(content)
        else:
            partial.write_text(content)
        partial.replace(target)
    except BaseException:
        _remove_quietly(partial)
        raise


def _remove_quietly(file: epath.Path) -> None:
    try:
        file.unlink(missing_ok=True)
    except OSError:
        pass


class JsonlAppender:
    """Appends JSON objects, one per line, to one file: on process 0 only, as every run
    record (metrics, recovery actions, evaluation results, goodput) is written.

    Each `append` opens the file in append mode, writes its records and closes it, so
    they are on disk when it returns. On an object store (`gs://` through fsspec),
    `open('a')` overwrites the object instead of appending: a remote backend replaces
    `_write_lines` (rewrite the object with the new lines, or one object per append).
    """

    def __init__(self, location: PathLike):
        self.path = path(location)
        self.enabled = jax.process_index() == 0

    def append(self, *records: dict) -> None:
        if not self.enabled or not records:
            return
        self._write_lines([json.dumps(record) + "\n" for record in records])

    def _write_lines(self, lines: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.writelines(lines)


def set_aside(location: PathLike, new_name: str) -> epath.Path:
    """Renames the file or directory `location` to `new_name` in the same directory
    (replacing a file of that name); returns the new path."""
    source = path(location)
    return source.replace(source.with_name(new_name))


def check_model_dir(location: PathLike) -> epath.Path:
    """The run directory as a path; ConfigError unless it is a directory or one can be
    made there (no file in its place or above it)."""
    model_dir = path(location)
    existing = next((p for p in _self_and_parents(model_dir) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = ("is a file" if existing == model_dir
                 else f"is under {existing}, which is a file")
        raise ConfigError(f"MODEL_DIR={model_dir} {where}, not a directory: point MODEL_DIR "
                          "at a new or existing directory.")
    return model_dir


def _self_and_parents(location: epath.Path) -> Iterator[epath.Path]:
    yield location
    yield from location.parents
