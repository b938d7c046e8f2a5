"""Prepare the embedded corpus under the cache dir, once, with no network access."""

import logging
import time

import tensorflow_datasets as tfds

from .. import cache
from .embedded_corpus import INTERPRETER_CONFIG, EmbeddedCorpus

_NAME = f"{EmbeddedCorpus.name}/{INTERPRETER_CONFIG}:{EmbeddedCorpus.VERSION}"


def _data_dir() -> str:
    return str(cache.cache_dir() / "tfds")


def prepared_builder() -> tfds.core.DatasetBuilder:
    """The corpus builder, preparing its files first if the cache dir has none yet."""
    builder = tfds.builder(_NAME, data_dir=_data_dir())
    if builder.is_prepared():
        return builder
    with cache.exclusive_lock("embedded_corpus"):
        builder = tfds.builder(_NAME, data_dir=_data_dir())
        if not builder.is_prepared():
            _prepare(builder)
    return tfds.builder(_NAME, data_dir=_data_dir())


def _prepare(builder: tfds.core.DatasetBuilder) -> None:
    started = time.perf_counter()
    tfds.disable_progress_bar()
    config = tfds.download.DownloadConfig(
        try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP)
    builder.download_and_prepare(download_config=config)
    logging.info("Built the embedded corpus in %s (%.1f s).",
                 builder.data_dir, time.perf_counter() - started)
