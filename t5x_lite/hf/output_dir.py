"""All-or-nothing output directories.

Locally, everything is written into a hidden temporary directory beside the output and
renamed into place at the end; on any failure the temporary directory is removed, so an
export or import either produces the whole directory or leaves nothing. On an object
store, which has no rename, the output is written into a local temporary directory and
then copied to its place with the files that mark it complete (`storage.MARKERS`:
`config.json`, checkpoint commit markers) last; a copy cut short is removed, and one cut
short harder holds no marker, so no loader takes it for a model. An output replaced
there (`overwrite`) is removed, markers first, before the new one is copied.
"""

import contextlib
import os
import tempfile

from etils import epath

from t5x_lite import storage
from t5x_lite.errors import ConfigError


def check_writable(location: storage.PathLike, overwrite: bool,
                   protected: tuple[storage.PathLike, ...] = ()) -> str:
    """The absolute output path; ConfigError if it may not be (over)written.

    `protected` are inputs that the output must neither be nor contain (the source
    checkpoint of an export, say); the output may lie inside one.
    """
    path = storage.path(location)
    for source in map(storage.path, protected):
        if source == path or path in source.parents:
            raise ConfigError(f"the output {path} would replace the input {source}; write "
                              "somewhere else.")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"the output {path} exists and is not a directory; choose "
                          "another path.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ConfigError(f"the output {path} exists and is not empty; pass --overwrite to "
                          "replace it, or choose another path.")
    return str(path)


@contextlib.contextmanager
def atomic_directory(location: storage.PathLike, overwrite: bool):
    """Yields a temporary directory (a path string) that becomes `location` when the
    block succeeds."""
    path = storage.path(check_writable(location, overwrite))
    if storage.is_uri(path):
        with _published_on_success(path) as partial:
            yield partial
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.rmtree(missing_ok=True)
    partial.mkdir()
    try:
        yield str(partial)
        _replace(partial, path)
    except BaseException:
        partial.rmtree(missing_ok=True)
        raise


@contextlib.contextmanager
def _published_on_success(path: epath.Path):
    storage.check_writable_bucket(path, f"the output {path}")
    with tempfile.TemporaryDirectory(prefix="t5x_lite-output-") as partial:
        yield partial
        storage.remove_tree(path)
        try:
            storage.copy_tree(partial, path)
        except BaseException:
            storage.remove_tree(path)
            raise


def _replace(partial: epath.Path, path: epath.Path) -> None:
    """Renames `partial` to `path`, setting an existing `path` aside until then."""
    if not path.exists():
        storage.set_aside(partial, path.name)
        return
    previous = storage.set_aside(path, f".{path.name}.previous-{os.getpid()}")
    try:
        storage.set_aside(partial, path.name)
    except BaseException:
        storage.set_aside(previous, path.name)
        raise
    previous.rmtree()
