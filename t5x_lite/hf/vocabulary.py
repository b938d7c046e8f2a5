"""Which vocabulary a checkpoint's model speaks, and the sequence length it trained on.

A training run's checkpoint records its operative gin config; the vocabulary is
that of its `DataConfig.mixture_or_task_name` (usually `MIXTURE_OR_TASK_NAME`),
resolved as the trainer resolves it, so checkpoints written before any other record
existed export too. The recorded text is read with gin's parser alone: the caller's
gin config stays as it is. A checkpoint made by `import-hf` instead keeps the original
tokenizer files beside it and says where in its `hf` record.
"""

import dataclasses
import inspect
import os
from collections.abc import Mapping
from typing import NamedTuple

import gin
from gin import config_parser

from t5x_lite import storage
from t5x_lite.errors import ConfigError

DATA_CONFIG = "DataConfig"


@dataclasses.dataclass(frozen=True)
class RunVocabulary:
    """Either a seqio vocabulary, or a directory of HF tokenizer files, or neither."""

    seqio_vocabulary: object | None = None
    tokenizer_dir: str | None = None
    sequence_length: int | None = None


@dataclasses.dataclass(frozen=True)
class RecordedData:
    """The two `DataConfig` fields a run's recorded gin config gives its vocabulary by."""

    mixture_or_task_name: str
    task_feature_lengths: Mapping[str, int]


class _Macro(NamedTuple):
    name: str


class _Reference(NamedTuple):
    name: str
    evaluate: bool


class _Unresolved(Exception):
    """A value the recorded gin text does not determine."""


class _KeepReferences(config_parser.ParserDelegate):
    """Gin's parser delegate that keeps macros and `@references` as plain markers."""

    def configurable_reference(self, scoped_configurable_name, evaluate):
        return _Reference(scoped_configurable_name, evaluate)

    def macro(self, macro_name):
        return _Macro(macro_name)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__


def recorded_bindings(gin_text: str) -> dict[tuple[str, str], object]:
    """The unscoped bindings of `gin_text`, (selector, argument) -> value, read with gin's
    parser alone: a macro is (name, ""); imports, includes and scoped bindings are skipped."""
    bindings = {}
    for statement in config_parser.ConfigParser(gin_text, _KeepReferences()):
        if isinstance(statement, config_parser.BindingStatement) and not statement.scope:
            bindings[(statement.selector, statement.arg_name)] = statement.value
    return bindings


def _names(selector: str, configurable: str) -> bool:
    """Whether `selector` names `configurable`, by its short or module-qualified name."""
    return selector == configurable or selector.endswith(f".{configurable}")


def _bound(bindings: dict, configurable: str, argument: str) -> object:
    for (selector, name), value in bindings.items():
        if name == argument and _names(selector, configurable):
            return value
    raise _Unresolved(f"{configurable}.{argument} is not bound")


def _call(reference: _Reference, bindings: dict, seen: tuple) -> object:
    """What `@name()` evaluates to: the registered function called with the arguments
    the text binds for it (and no other gin binding)."""
    try:
        function = inspect.unwrap(gin.get_configurable(reference.name))
    except Exception as error:  # noqa: BLE001  (gin raises many kinds)
        raise _Unresolved(f"unknown configurable @{reference.name}: {_one_line(error)}") from None
    arguments = {name: resolve(value, bindings, seen)
                 for (selector, name), value in bindings.items()
                 if name and _names(selector, reference.name)}
    return function(**arguments)


def resolve(value: object, bindings: dict, seen: tuple = ()) -> object:
    """`value` with its macros replaced by their bound values and `@name()` evaluated."""
    if isinstance(value, _Macro):
        if value.name in seen:
            raise _Unresolved(f"macro {value.name} refers to itself")
        if (value.name, "") not in bindings:
            raise _Unresolved(f"macro {value.name} is not set")
        return resolve(bindings[(value.name, "")], bindings, (*seen, value.name))
    if isinstance(value, _Reference):
        if not value.evaluate:
            raise _Unresolved(f"@{value.name} names a callable, not a value")
        return _call(value, bindings, seen)
    if isinstance(value, dict):
        return {resolve(key, bindings, seen): resolve(item, bindings, seen)
                for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(resolve(item, bindings, seen) for item in value)
    return value


def data_from_gin(gin_text: str, where: str) -> RecordedData:
    """The run's Task or Mixture and feature lengths, read from its recorded gin config
    without touching gin's own (the caller's) config."""
    from t5x_lite import data  # noqa: F401  (registers the Tasks and gin's data helpers)
    try:
        bindings = recorded_bindings(gin_text)
        return RecordedData(*(resolve(_bound(bindings, DATA_CONFIG, field), bindings)
                              for field in ("mixture_or_task_name", "task_feature_lengths")))
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001  (gin raises many kinds)
        raise ConfigError(f"cannot tell the run's data and vocabulary from the gin config "
                          f"recorded in {where}: {_one_line(error)}") from None


def run_vocabulary(record, model_dir: str, where: str) -> RunVocabulary:
    """The vocabulary of the checkpoint with `record` (a CheckpointRecord) in run
    `model_dir`: its data's Task names it, or, in older records, the recorded gin config."""
    imported = record.hf
    if imported is not None:
        tokenizer_dir = imported.get("tokenizer_dir")
        return RunVocabulary(
            tokenizer_dir=str(storage.join(model_dir, tokenizer_dir)) if tokenizer_dir else None,
            sequence_length=imported.get("max_position_embeddings"))
    from t5x_lite.pipeline import input_pipeline
    if record.data.mixture_or_task_name:
        name, lengths = record.data.mixture_or_task_name, record.data.task_feature_lengths
    elif record.gin_config:
        data = data_from_gin(record.gin_config, where)
        name, lengths = data.mixture_or_task_name, data.task_feature_lengths
    else:
        raise ConfigError(f"{where} records no data or gin config, so its vocabulary is "
                          "unknown.")
    return RunVocabulary(seqio_vocabulary=input_pipeline.output_vocabulary(name),
                         sequence_length=dict(lengths).get("targets"))
