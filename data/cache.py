"""The local cache: prepared datasets and trained vocabularies live under one directory."""

import contextlib
import fcntl
import os
import pathlib
from collections.abc import Iterator

CACHE_DIR_ENV = "T5X_LITE_CACHE_DIR"


def cache_dir() -> pathlib.Path:
    """`$T5X_LITE_CACHE_DIR`, or `~/.cache/t5x_lite`."""
    return pathlib.Path(os.environ.get(CACHE_DIR_ENV) or "~/.cache/t5x_lite").expanduser().resolve()


@contextlib.contextmanager
def exclusive_lock(name: str) -> Iterator[None]:
    """Holds a file lock so only one process at a time builds the artifact `name`."""
    lock_dir = cache_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
