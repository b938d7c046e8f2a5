"""Paths on local disk and on Cloud Storage (`gs://`), through `etils.epath`'s one API.

Local paths are made absolute; URIs are kept as given. An object store has no
directories, no rename and no append: writes of one object are already atomic there,
and a directory is set aside or published by copying its files, the files that mark
it finished (`MARKERS`) last in and first out.
"""

import contextlib
import functools
import importlib.util
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

# With TensorFlow installed, epath would send gs:// to tf.io.gfile, a second client with
# its own endpoint and credential handling; gcsfs serves every gs:// path here instead.
os.environ.setdefault("EPATH_USE_TF", "false")

import fsspec.config  # noqa: E402
from etils import epath  # noqa: E402  (after the backend choice above)

# gcsfs keeps directory listings forever by default, so one process would not see the
# objects another writes (checkpoint steps, record parts): list afresh every time.
fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)

from t5x_lite.errors import ConfigError  # noqa: E402

PathLike = str | os.PathLike

# Files whose presence tells a reader a directory is complete: orbax's commit marker
# of a checkpoint step on an object store, the config of a Hugging Face model, and the
# manifest of a token store.
MARKERS = ("commit_success.txt", "config.json", "manifest.json")

_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")

# Schemes with a backend: (module that must be importable, extra that installs it).
BACKENDS = {"gs": ("gcsfs", "gcs")}


def is_uri(location: PathLike) -> bool:
    """True for a location that starts with a scheme, such as `gs://bucket/run`."""
    return _SCHEME.match(os.fspath(location)) is not None


def path(location: PathLike) -> epath.Path:
    """`location` as a path: absolute if local, as given if a URI of a supported scheme;
    ConfigError for a scheme with no installed backend."""
    text = os.fspath(location)
    if not is_uri(text):
        return epath.Path(os.path.abspath(text))
    _check_scheme(text)
    return epath.Path(text)


def _check_scheme(text: str) -> None:
    scheme = text.split("://", 1)[0]
    if scheme not in BACKENDS:
        why = " (orbax cannot write checkpoints there)" if scheme == "s3" else ""
        raise ConfigError(f"{text}: {scheme}:// is not supported{why}; use a local path "
                          "(a mounted bucket is one) or gs://.")
    module, extra = BACKENDS[scheme]
    if not _importable(module):
        raise ConfigError(f"{text}: {scheme}:// needs {module}, which is not installed; "
                          f'pip install "t5x_lite[{extra}]".')


@functools.cache
def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def join(location: PathLike, *parts: str) -> epath.Path:
    """`location` (made a path as by `path`) joined with `parts`."""
    return path(location).joinpath(*parts)


def read_text(location: PathLike) -> str:
    return path(location).read_text()


def make_parent(file: epath.Path) -> None:
    """Makes the directory `file` goes in; nothing on an object store, which has none
    (and where gcsfs would create a missing bucket)."""
    if not is_uri(file):
        file.parent.mkdir(parents=True, exist_ok=True)


def write_atomic(location: PathLike, content: str | bytes) -> None:
    """Writes `content` so that readers see the old file or the whole new one, and a
    failed write leaves no partial file. Locally: beside the target, then renamed into
    place (parent directories made as needed); on an object store: one upload."""
    target = path(location)
    if is_uri(target):
        _write(target, content)
        return
    make_parent(target)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        _write(partial, content)
        partial.replace(target)
    except BaseException:
        _remove_quietly(partial)
        raise


def _write(file: epath.Path, content: str | bytes) -> None:
    if isinstance(content, bytes):
        file.write_bytes(content)
    else:
        file.write_text(content)


def _remove_quietly(file: epath.Path) -> None:
    try:
        file.unlink(missing_ok=True)
    except OSError:
        pass


def files_under(directory: PathLike) -> list[epath.Path]:
    """Every file below `directory`, at any depth, in name order."""
    files = []
    for child in sorted(path(directory).iterdir()):
        files.extend(files_under(child) if child.is_dir() else [child])
    return files


def copy_file(source: epath.Path, destination: epath.Path) -> None:
    """Streams `source` to `destination`, across backends (local to gs:// and back)."""
    make_parent(destination)
    with source.open("rb") as reader, destination.open("wb") as writer:
        shutil.copyfileobj(reader, writer, 8 << 20)


def _markers_last(files: list[epath.Path]) -> list[epath.Path]:
    return sorted(files, key=lambda file: file.name in MARKERS)


def copy_tree(source: PathLike, destination: PathLike) -> None:
    """Copies the files under `source` to the same places under `destination`, the
    MARKERS last: a reader never sees a marked directory before all its files."""
    source, destination = path(source), path(destination)
    for file in _markers_last(files_under(source)):
        copy_file(file, destination / file.relative_to(source))


def remove_tree(location: PathLike) -> None:
    """Removes a directory and everything under it; on an object store the MARKERS go
    first, so an interrupted removal leaves nothing that reads as complete."""
    directory = path(location)
    if not directory.exists():
        return
    if is_uri(directory):
        for marker in [f for f in files_under(directory) if f.name in MARKERS]:
            marker.unlink(missing_ok=True)
    directory.rmtree()


def set_aside(location: PathLike, new_name: str) -> epath.Path:
    """Moves the file or directory `location` to `new_name` in the same directory
    (replacing what is there); returns the new path. Locally a rename; on an object
    store a copy then a removal, markers last in and first out."""
    source = path(location)
    target = source.with_name(new_name)
    if not is_uri(source):
        return source.replace(target)
    if not source.is_dir():
        copy_file(source, target)
        source.unlink()
        return target
    remove_tree(target)
    copy_tree(source, target)
    remove_tree(source)
    return target


@contextlib.contextmanager
def local_copy(location: PathLike) -> Iterator[str]:
    """A local directory with the contents of `location`: itself if local, else a
    temporary download, removed afterwards."""
    source = path(location)
    if not is_uri(source):
        yield str(source)
        return
    with tempfile.TemporaryDirectory(prefix="t5x_lite-download-") as local:
        for file in files_under(source):
            copy_file(file, epath.Path(local) / file.relative_to(source))
        yield local
