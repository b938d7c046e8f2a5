"""The documents of the embedded corpus and their train/validation split.

The corpus ships with every Python interpreter, so it needs no download:

* code: the standard library's own ``*.py`` files, read in sorted path order;
* prose: the pydoc topic texts (``pydoc_data.topics.topics``).

Split rule: within each kind, the ``ceil(5%)`` of documents whose SHA-256 of
``"<kind>:<name>"`` is smallest form the validation split, the rest train. The
split depends only on the set of document names, never on reading order, and each
kind always has at least one validation document.
"""

import dataclasses
import hashlib
import math
import pathlib
import sysconfig
from typing import Iterator

VALIDATION_FRACTION = 0.05
KINDS = ("code", "prose")

# Test suites, third-party packages, machine-generated codec tables and the
# pydoc topics module (it holds the prose texts verbatim) stay out of `code`.
_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test",
                            "__pycache__", "encodings", "pydoc_data"})
_EXCLUDED_PREFIXES = ("_sysconfigdata", "config-")


@dataclasses.dataclass(frozen=True)
class Document:
    kind: str   # 'code' or 'prose'
    name: str   # path relative to the stdlib root, or the pydoc topic name
    text: str


def _is_code_file(relative: pathlib.PurePath) -> bool:
    if any(part in _EXCLUDED_DIRS for part in relative.parts[:-1]):
        return False
    return not any(part.startswith(_EXCLUDED_PREFIXES) for part in relative.parts)


def code_documents() -> Iterator[Document]:
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if _is_code_file(relative):
            text = path.read_bytes().decode("utf-8", errors="replace")
            yield Document("code", relative.as_posix(), text)


def prose_documents() -> Iterator[Document]:
    from pydoc_data import topics  # pylint: disable=g-import-not-at-top
    for name in sorted(topics.topics):
        yield Document("prose", name, topics.topics[name])


def documents(kind: str) -> list[Document]:
    if kind == "code":
        return list(code_documents())
    if kind == "prose":
        return list(prose_documents())
    raise ValueError(f"Unknown corpus kind {kind!r}: expected one of {KINDS}.")


def _stable_hash(document: Document) -> str:
    return hashlib.sha256(f"{document.kind}:{document.name}".encode()).hexdigest()


def validation_names(docs: list[Document]) -> frozenset[str]:
    """Names of the documents that belong to the validation split."""
    count = math.ceil(VALIDATION_FRACTION * len(docs))
    return frozenset(d.name for d in sorted(docs, key=_stable_hash)[:count])


def split_documents(kind: str) -> dict[str, list[Document]]:
    """Documents of one kind by split ('train', 'validation'), in sorted order."""
    docs = documents(kind)
    held_out = validation_names(docs)
    return {
            "train": [d for d in docs if d.name not in held_out],
            "validation": [d for d in docs if d.name in held_out],
    }
