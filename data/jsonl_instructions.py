"""An instruction Task over the user's own JSON-lines files of input/target pairs.

Each non-blank line is one JSON object with a string field `input_key` and a
string field `target_key`. Templates are (inputs pattern, targets pattern) pairs of
`str.format` patterns over the line's fields, where `{input}` and `{target}` name
the two keys whatever they are called (write literal braces as `{{` and `}}`);
one template is chosen per example by hash. Unless `validation_files` are given,
a pair is in the validation split when the hash of its input and target falls in
the first `validation_fraction` of the hash range, so the split does not depend on
line order. Files are read when the Task is registered and must fit in memory.

In gin:

    jsonl_instruction_task.name = 'my_qa'
    jsonl_instruction_task.files = ['/data/qa.jsonl']
    jsonl_instruction_task.input_key = 'question'
    jsonl_instruction_task.target_key = 'answer'
    jsonl_instruction_task.templates = [('Q: {input}\\nA: ', '{target}')]
    MIXTURE_OR_TASK_NAME = @jsonl_instruction_task()
"""

import hashlib
import json
from collections.abc import Sequence

import gin
from etils import epath

from t5x_lite.errors import ConfigError

from .instruction_metrics import metric_fns, postprocessor
from .instruction_task import in_memory_source, register_instruction_task
from .templates import Template, as_templates, render
from .user_files import existing_files, read_utf8

_WHERE = "jsonl_instruction_task"
DEFAULT_TEMPLATES = (Template("{input}", "{target}"),)


@gin.configurable
def jsonl_instruction_task(name: str,
                           files: Sequence[str] | str,
                           validation_files: Sequence[str] | str | None = None,
                           input_key: str = "input",
                           target_key: str = "target",
                           templates: Sequence | None = None,
                           validation_fraction: float = 0.1,
                           vocabulary: str = "byte",
                           postprocess: str = "strip",
                           metrics: Sequence[str] = ("exact_match",)) -> str:
    """Registers (or replaces) the instruction Task `name` over `files`; returns its name."""
    if not 0 <= validation_fraction < 1:
        raise ConfigError(f"{_WHERE}.validation_fraction={validation_fraction}: "
                          "use a fraction in [0, 1).")
    reader = _PairReader(name, input_key, target_key,
                         as_templates(templates) if templates is not None else DEFAULT_TEMPLATES)
    if validation_files is None:
        splits = _split_by_hash(reader.read(existing_files(files, _WHERE, "files")),
                                validation_fraction)
    else:
        splits = {"train": _examples(reader.read(existing_files(files, _WHERE, "files"))),
                  "validation": _examples(reader.read(
                      existing_files(validation_files, _WHERE, "validation_files")))}
    splits = {split: examples for split, examples in splits.items() if examples}
    if "train" not in splits:
        raise ConfigError(f"{_WHERE}: no training pairs in {files}; give non-empty files or a "
                          "smaller validation_fraction.")
    return register_instruction_task(name, in_memory_source(splits.__getitem__, list(splits)),
                                     vocabulary, postprocessor(postprocess), metric_fns(metrics))


def is_validation_pair(inputs: str, targets: str, validation_fraction: float) -> bool:
    digest = hashlib.sha256(json.dumps([inputs, targets]).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < validation_fraction


def _examples(pairs: list[tuple[dict, dict[str, str]]]) -> list[dict[str, str]]:
    return [example for _, example in pairs]


def _split_by_hash(pairs: list[tuple[dict, dict]],
                   validation_fraction: float) -> dict[str, list[dict[str, str]]]:
    splits = {"train": [], "validation": []}
    for record, example in pairs:
        held_out = is_validation_pair(record["input"], record["target"], validation_fraction)
        splits["validation" if held_out else "train"].append(example)
    return splits


class _PairReader:
    """Reads files into (fields, rendered example) pairs, in file order."""

    def __init__(self, task: str, input_key: str, target_key: str,
                 templates: Sequence[Template]):
        self._task, self._templates = task, templates
        self._input_key, self._target_key = input_key, target_key

    def read(self, paths: list[epath.Path]) -> list[tuple[dict, dict[str, str]]]:
        pairs = []
        for path in paths:
            for line_number, line in enumerate(read_utf8(path, _WHERE).splitlines(), start=1):
                if line.strip():
                    pairs.append(self._pair(line, f"{path}:{line_number}"))
        return pairs

    def _pair(self, line: str, where: str) -> tuple[dict, dict[str, str]]:
        record = _json_object(line, where)
        for key in (self._input_key, self._target_key):
            if not isinstance(record.get(key), str):
                raise ConfigError(f"{_WHERE}: {where} has no string field '{key}'; give every "
                                  f"line one, or set {_WHERE}.input_key / target_key.")
        fields = {**record, "input": record[self._input_key],
                  "target": record[self._target_key]}
        try:
            example = render(self._templates, fields, key=f"{self._task}:{fields['input']}")
        except (KeyError, IndexError, ValueError) as error:
            raise ConfigError(f"{_WHERE}: a template does not fit {where} ({error!r}); use only "
                              "fields the line has, and write literal braces as {{ }}.") from None
        return fields, example


def _json_object(line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{_WHERE}: {where} is not valid JSON ({error.msg}); each line of a "
                          "JSON-lines file must be one JSON object.") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{_WHERE}: {where} is not a JSON object.")
    return record
