"""A run's data and vocabulary, read from the gin text its checkpoint records, leave the
caller's gin config as it was."""

import gin
import pytest
import seqio

from t5x_lite.checkpoints.record import CheckpointRecord
from t5x_lite.config import gin_config
from t5x_lite.config.configurables import register_configurables
from t5x_lite.errors import ConfigError
from t5x_lite.hf import vocabulary

RECORDED = """
import some.module.this.process.lacks
MIXTURE_OR_TASK_NAME = %NAME
NAME = 'embedded'
TASK_FEATURE_LENGTHS = {'targets': 64}
DataConfig.mixture_or_task_name = %MIXTURE_OR_TASK_NAME
DataConfig.task_feature_lengths = %TASK_FEATURE_LENGTHS
DataConfig.global_batch_size = 8
NotAConfigurableHere.value = @nor_this()
"""


@pytest.fixture
def parsed_quickstart():
    gin.clear_config()
    register_configurables()
    gin_config.parse(["quickstart.gin"], ["BATCH_SIZE = 3"])
    yield gin.config_str()
    gin.clear_config()


def test_recorded_data_through_macros_and_unknown_configurables(parsed_quickstart):
    data = vocabulary.data_from_gin(RECORDED, "checkpoint 7")
    assert (data.mixture_or_task_name, dict(data.task_feature_lengths)) == (
        "embedded", {"targets": 64})
    assert gin.config_str() == parsed_quickstart


def test_a_run_vocabulary_from_a_recorded_config(parsed_quickstart):
    run = vocabulary.run_vocabulary(CheckpointRecord.from_json({"gin_config": RECORDED}),
                                   "/unused", "checkpoint 7")
    assert isinstance(run.seqio_vocabulary, seqio.ByteVocabulary)
    assert run.sequence_length == 64
    assert gin.config_str() == parsed_quickstart


@pytest.mark.parametrize("text,fragment", [
    ("DataConfig.mixture_or_task_name = 'embedded'", "DataConfig.task_feature_lengths is not "
                                                     "bound"),
    ("DataConfig.mixture_or_task_name = %GONE\nDataConfig.task_feature_lengths = {}",
     "macro GONE is not set"),
    ("M = @no_such_task()\nDataConfig.mixture_or_task_name = %M\n"
     "DataConfig.task_feature_lengths = {}", "unknown configurable @no_such_task"),
    ("DataConfig.task_feature_lengths = {'targets': (", "cannot tell"),
])
def test_an_unreadable_record_is_one_config_error(parsed_quickstart, text, fragment):
    with pytest.raises(ConfigError, match="recorded in checkpoint 7") as raised:
        vocabulary.data_from_gin(text, "checkpoint 7")
    assert fragment in str(raised.value) and "\n" not in str(raised.value)
    assert gin.config_str() == parsed_quickstart
