"""All-or-nothing output directories.

Everything is written into a hidden temporary directory beside the output and
renamed into place at the end; on any failure the temporary directory is removed,
so an export or import either produces the whole directory or leaves nothing.
"""

import contextlib
import os
import shutil

from t5x_lite.errors import ConfigError


def check_writable(path: str, overwrite: bool, protected: tuple[str, ...] = ()) -> str:
    """The absolute output path; ConfigError if it may not be (over)written.

    `protected` are inputs that the output must neither be nor contain (the source
    checkpoint of an export, say); the output may lie inside one.
    """
    path = os.path.abspath(path)
    for source in protected:
        source = os.path.abspath(source)
        if os.path.commonpath([path, source]) == path:
            raise ConfigError(f"the output {path} would replace the input {source}; write "
                              "somewhere else.")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"the output {path} exists and is not a directory; choose "
                          "another path.")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise ConfigError(f"the output {path} exists and is not empty; pass --overwrite to "
                          "replace it, or choose another path.")
    return path


@contextlib.contextmanager
def atomic_directory(path: str, overwrite: bool):
    """Yields a temporary directory that becomes `path` when the block succeeds."""
    path = check_writable(path, overwrite)
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    partial = os.path.join(parent, f".{name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        yield partial
        _replace(partial, path)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _replace(partial: str, path: str) -> None:
    """Renames `partial` to `path`, setting an existing `path` aside until then."""
    if not os.path.exists(path):
        os.rename(partial, path)
        return
    parent, name = os.path.split(path)
    previous = os.path.join(parent, f".{name}.previous-{os.getpid()}")
    os.rename(path, previous)
    try:
        os.rename(partial, path)
    except BaseException:
        os.rename(previous, path)
        raise
    shutil.rmtree(previous)
