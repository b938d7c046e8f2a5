"""Whether a checkpoint's data position continues under a data config: the same rows
(batch size and row length; on token stores only the row length, since they count rows),
drawn from the same data with the same seed."""

import dataclasses
import sys
from collections.abc import Mapping

from t5x_lite.errors import ConfigError
from t5x_lite.pipeline import store_build
from t5x_lite.pipeline.input_pipeline import DataConfig, store_lengths, tasks_of, uses_store


def position_meta(cfg: DataConfig) -> dict:
    """What a data position counts: recorded with each checkpoint."""
    return {"global_batch_size": cfg.global_batch_size,
            "task_feature_lengths": dict(cfg.task_feature_lengths)}


def resume_config(cfg: DataConfig, step: int, meta: dict, model_dir: str) -> DataConfig:
    """The data config that continues checkpoint `step` (its `meta`): `cfg`, or `cfg` on
    the skip stream when the checkpoint was written on it and `cfg` lets the stream be
    chosen. Raises ConfigError if the checkpoint counted its data position in batches of
    another size or row length, or drew its rows from other data or with another seed."""
    if "stream" in meta:  # token stores count rows: only the row length must stay
        _check_same_row_length(cfg, step, meta, model_dir)
        _check_same_data(cfg, step, meta["stream"], model_dir)
        return cfg
    _check_same_rows(cfg, step, meta, model_dir)
    if cfg.stream == "auto" and uses_store(cfg):
        print(f"data: checkpoint step {step} was written on the seqio stream; it continues "
              "there (DataConfig.stream = 'skip')", file=sys.stderr)
        return dataclasses.replace(cfg, stream="skip")
    if uses_store(cfg) and not cfg.allow_data_change:
        raise ConfigError(f"checkpoint step {step} in MODEL_DIR={model_dir} was trained on the "
                          "seqio stream, not token stores: resume with DataConfig.stream = "
                          "'skip', or set DataConfig.allow_data_change = True.")
    return cfg


def _check_same_row_length(cfg: DataConfig, step: int, meta: dict, model_dir: str) -> None:
    saved = meta.get("task_feature_lengths", dict(cfg.task_feature_lengths))
    lengths = dict(cfg.task_feature_lengths)
    if saved != lengths:
        raise ConfigError(
            f"checkpoint step {step} in MODEL_DIR={model_dir} counted rows of "
            f"{_row_tokens(saved)} tokens; this config has rows of {_row_tokens(lengths)}: "
            f"resume with TASK_FEATURE_LENGTHS={saved}, or start a new MODEL_DIR.")


def _check_same_rows(cfg: DataConfig, step: int, meta: dict, model_dir: str) -> None:
    saved_batch = meta.get("global_batch_size", cfg.global_batch_size)
    saved_lengths = meta.get("task_feature_lengths", dict(cfg.task_feature_lengths))
    lengths = dict(cfg.task_feature_lengths)
    if saved_batch == cfg.global_batch_size and saved_lengths == lengths:
        return
    fixes = ([f"BATCH_SIZE={saved_batch}"] if saved_batch != cfg.global_batch_size else []) + (
        [f"TASK_FEATURE_LENGTHS={saved_lengths}"] if saved_lengths != lengths else [])
    raise ConfigError(
        f"checkpoint step {step} in MODEL_DIR={model_dir} counted its data position in "
        f"batches of {saved_batch} x {_row_tokens(saved_lengths)} tokens; this config has "
        f"{cfg.global_batch_size} x {_row_tokens(lengths)}: resume with {' and '.join(fixes)}, "
        "or start a new MODEL_DIR.")


def stream_identity(cfg: DataConfig) -> dict | None:
    """What the store stream's training rows are drawn from: the seed and each Task's
    store fingerprint (None for the skip stream). Recorded with each checkpoint."""
    if not uses_store(cfg):
        return None
    lengths = store_lengths(cfg)
    return {"seed": cfg.seed,
            "stores": {task.name: store_build.fingerprint_of(task, "train", lengths)[0]
                       for task in tasks_of(cfg.mixture_or_task_name) if "train" in task.splits}}


def _check_same_data(cfg: DataConfig, step: int, saved: dict, model_dir: str) -> None:
    current = stream_identity(cfg)
    if saved == current or cfg.allow_data_change:
        return
    if current is None:
        raise ConfigError(f"checkpoint step {step} in MODEL_DIR={model_dir} was trained on "
                          "token stores, and this config reads the seqio stream: resume with "
                          "DataConfig.stream = 'store', or set DataConfig.allow_data_change = "
                          "True.")
    if saved.get("seed") != current["seed"]:
        change = f"DataConfig.seed was {saved.get('seed')} and is {current['seed']}"
    else:
        before, now = saved.get("stores", {}), current["stores"]
        task = next(name for name in sorted(set(before) | set(now))
                    if before.get(name) != now.get(name))
        change = (f"Task '{task}' reads other data than it did (its source, vocabulary or "
                  "preprocessors changed)" if task in before and task in now else
                  f"Task '{task}' {'joined' if task in now else 'left'} the mixture")
    raise ConfigError(f"checkpoint step {step} in MODEL_DIR={model_dir} was trained on other "
                      f"data: {change}; resume with the data the run started with, or set "
                      "DataConfig.allow_data_change = True to go on with this data.")


def _row_tokens(lengths: Mapping[str, int]) -> str:
    """`32` for {'targets': 32}; the lengths themselves when there are inputs too."""
    return str(lengths["targets"]) if list(lengths) == ["targets"] else str(dict(lengths))
