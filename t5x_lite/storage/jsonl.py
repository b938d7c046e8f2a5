"""JSON-lines run records (metrics, recovery actions, evaluation results, goodput),
appended on process 0 and read back whole.

Locally a record file is one file, appended to. An object cannot be appended to, so on
an object store the file `<name>` is a folder `<name>.parts/` of objects, one per
append (`<key>.jsonl`), merged now and then into one object that names the last part
it holds (`<key>.merged.jsonl`). Keys sort in the order of the appends, across
restarts. A reader takes the newest merged object and the parts after it, so a crash
at any point of a merge loses nothing and counts nothing twice.
"""

import json
import os
import time

import jax
from etils import epath

from t5x_lite.storage.paths import PathLike, is_uri, make_parent, path, write_atomic

PARTS_SUFFIX = ".parts"
MERGED_SUFFIX = ".merged.jsonl"
MERGE_EVERY = 64  # appends between merges on an object store


def read_jsonl(location: PathLike) -> list[dict]:
    """The records of a JSON-lines file, in order; [] if there is none. A line cut short
    by a crash mid-write is skipped."""
    file = path(location)
    if is_uri(file):
        return _parse(_parts_text(_parts_folder(file)))
    return _parse(file.read_text() if file.exists() else "")


def _parse(text: str) -> list[dict]:
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _parts_folder(file: epath.Path) -> epath.Path:
    return file.with_name(file.name + PARTS_SUFFIX)


def _key(part: epath.Path) -> str:
    return part.name.split(".", 1)[0]


def _current_parts(folder: epath.Path) -> list[epath.Path]:
    """The newest merged object, then the parts after it, in order."""
    if not folder.exists():
        return []
    objects = sorted(folder.iterdir(), key=lambda part: (_key(part), part.name))
    merged = [part for part in objects if part.name.endswith(MERGED_SUFFIX)]
    if not merged:
        return objects
    newest = merged[-1]
    return [newest] + [part for part in objects
                       if _key(part) > _key(newest) and not part.name.endswith(MERGED_SUFFIX)]


def _parts_text(folder: epath.Path) -> str:
    return "".join(part.read_text() for part in _current_parts(folder))


def _ends_a_line(file: epath.Path) -> bool:
    """True if `file` is absent, empty or ends with a newline."""
    if not file.exists():
        return True
    with file.open("rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class JsonlAppender:
    """Appends JSON objects, one per line, to one record file, on process 0 only.

    Each `append` has its records stored when it returns: a local file is opened in
    append mode and closed; on an object store one object is written per call.
    """

    def __init__(self, location: PathLike):
        self.path = path(location)
        self.enabled = jax.process_index() == 0
        self._remote = is_uri(self.path)
        self._last_key = ""
        self._appends = 0
        self._line_ended = False

    def append(self, *records: dict) -> None:
        if not self.enabled or not records:
            return
        text = "".join(json.dumps(record) + "\n" for record in records)
        if self._remote:
            self._append_object(text)
        else:
            self._append_to_file(text)

    def _append_to_file(self, text: str) -> None:
        make_parent(self.path)
        if not self._line_ended:  # a line a crash cut short is ended before ours
            text = ("" if _ends_a_line(self.path) else "\n") + text
            self._line_ended = True
        with self.path.open("a") as f:
            f.write(text)

    def _append_object(self, text: str) -> None:
        folder = _parts_folder(self.path)
        write_atomic(folder / f"{self._next_key()}.jsonl", text)
        self._appends += 1
        if self._appends % MERGE_EVERY == 0:
            self._merge(folder)

    def _next_key(self) -> str:
        """Increasing nanoseconds and the process id: unique, and in append order."""
        stamp = max(time.time_ns(), int(self._last_key[:20] or 0) + 1)
        self._last_key = f"{stamp:020d}-{os.getpid()}"
        return self._last_key

    def _merge(self, folder: epath.Path) -> None:
        """Writes the current parts as one merged object, then removes them."""
        parts = _current_parts(folder)
        newest = _key(parts[-1])
        write_atomic(folder / f"{newest}{MERGED_SUFFIX}",
                     "".join(part.read_text() for part in parts))
        for part in folder.iterdir():
            if _key(part) <= newest and part.name != f"{newest}{MERGED_SUFFIX}":
                part.unlink(missing_ok=True)
