"""The user's data files named in gin, local or on an object store (`gs://`)."""

import hashlib
import json
import os
from collections.abc import Sequence

from etils import epath

from t5x_lite import storage
from t5x_lite.errors import ConfigError


def existing_files(files: Sequence[str] | str, where: str, argument: str) -> list[epath.Path]:
    """The files as paths; ConfigError naming `where.argument` if one does not exist."""
    paths = [storage.path(os.path.expanduser(f))
             for f in ([files] if isinstance(files, str) else files)]
    if not paths:
        raise ConfigError(f"{where}.{argument} is empty: give at least one file.")
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"{where}: file not found: {path} (from {where}.{argument}); "
                              "give the path of an existing file.")
    return paths


def read_utf8(path: epath.Path, where: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{where}: {path} is not UTF-8 text (byte {error.start}); "
                          "convert it to UTF-8.") from None


def content_sha256(content) -> str:
    """A digest of JSON-able content (texts, examples): what a token store is keyed by."""
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
