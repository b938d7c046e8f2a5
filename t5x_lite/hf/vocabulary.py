"""Which vocabulary a checkpoint's model speaks, and the sequence length it trained on.

A training run's checkpoint records its operative gin config; the vocabulary is
that of its `DataConfig.mixture_or_task_name` (usually `MIXTURE_OR_TASK_NAME`),
resolved as the trainer resolves it, so checkpoints written before any other record
existed export too. A checkpoint made by `import-hf` instead keeps the original
tokenizer files beside it and says where in its `hf` record.
"""

import dataclasses

import gin

from t5x_lite import storage
from t5x_lite.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class RunVocabulary:
    """Either a seqio vocabulary, or a directory of HF tokenizer files, or neither."""

    seqio_vocabulary: object | None = None
    tokenizer_dir: str | None = None
    sequence_length: int | None = None


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__


def data_config_from_gin(gin_config: str, where: str):
    """The run's `DataConfig`, built from its recorded gin config.

    Gin's global config is cleared before and after: this replaces whatever
    config the calling process had parsed.
    """
    from t5x_lite.cli import main
    main.register_configurables()
    from t5x_lite.pipeline import input_pipeline

    gin.clear_config()
    try:
        gin.parse_config(gin_config, skip_unknown=True)
        return input_pipeline.DataConfig()
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001  (gin raises many kinds)
        raise ConfigError(f"cannot tell the run's data and vocabulary from the gin config "
                          f"recorded in {where}: {_one_line(error)}") from None
    finally:
        gin.clear_config()


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
        data = data_config_from_gin(record.gin_config, where)
        name, lengths = data.mixture_or_task_name, data.task_feature_lengths
    else:
        raise ConfigError(f"{where} records no data or gin config, so its vocabulary is "
                          "unknown.")
    return RunVocabulary(seqio_vocabulary=input_pipeline.output_vocabulary(name),
                         sequence_length=dict(lengths).get("targets"))
