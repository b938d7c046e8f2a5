"""Where t5x_lite reads and writes: local disk or Cloud Storage (`gs://`), one API.

Every file of a run directory, every output and every input that may live in a bucket
goes through these functions; orbax, TensorBoard and the profiler take `str(path)`.
"""

from t5x_lite.storage.jsonl import JsonlAppender, read_jsonl
from t5x_lite.storage.model_dir import check_model_dir, check_writable_bucket
from t5x_lite.storage.paths import (MARKERS, PathLike, copy_file, copy_tree, files_under,
                                    is_uri, join, local_copy, make_parent, path, read_text,
                                    remove_tree, set_aside, write_atomic)

__all__ = ["JsonlAppender", "MARKERS", "PathLike", "check_model_dir", "check_writable_bucket",
           "copy_file", "copy_tree", "files_under", "is_uri", "join", "local_copy",
           "make_parent", "path", "read_jsonl", "read_text", "remove_tree", "set_aside",
           "write_atomic"]
