"""The checkpoint record: its schema, and checkpoints written before it still restore,
continue bitwise as they would have, and export."""

import json
import pathlib
import shutil
import sys

import numpy as np
import pytest

from t5x_lite.checkpoints.record import CheckpointRecord, DataRecord
from tests.cli import losses_by_step, run_cli, train_command

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "run_v1"
# The run that wrote the fixture (steps 1-4, saved at 4), and what its own code went on to
# log for steps 5 and 6 when restarted from that checkpoint (to 1e-5: XLA's CPU code
# differs by a few ulps between processor generations).
FIXTURE_MODEL = [f"--gin.DecoderConfig.{name}={value}" for name, value in (
    ("num_layers", 1), ("embed_dim", 16), ("num_heads", 2), ("num_kv_heads", 1),
    ("head_dim", 8), ("mlp_dim", 32))] + ["--gin.CheckpointConfig.save_every=4"]
CONTINUED_LOSSES = {5: 5.932538986206055, 6: 5.9378790855407715}


def _meta(model_dir, step: int) -> dict:
    return json.loads((model_dir / "checkpoints" / str(step) / "meta" / "metadata").read_text())


def test_record_round_trips():
    record = CheckpointRecord("decoder", {"num_layers": 2}, 7,
                              DataRecord("embedded", {"targets": 32}, 8,
                                         {"type": "ByteVocabulary", "vocab_size": 259,
                                          "eos_id": 1, "pad_id": 0}), "X = 1\n")
    assert CheckpointRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
    assert record.data.position_unit() == {"global_batch_size": 8,
                                           "task_feature_lengths": {"targets": 32}}


def test_a_record_in_the_first_layout_reads_as_a_decoder_record():
    legacy = _meta(FIXTURE, 4)
    assert "format" not in legacy and "family" not in legacy
    record = CheckpointRecord.from_json(legacy)
    assert record.family == "decoder" and record.data_position == 4
    assert record.model_config["num_layers"] == 1 and record.model_config["scan_layers"] is True
    assert record.data.position_unit() == {"global_batch_size": 8,
                                           "task_feature_lengths": {"targets": 32}}
    assert record.data.mixture_or_task_name is None and "MIXTURE_OR_TASK_NAME" in record.gin_config


@pytest.fixture(scope="module")
def continued_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("continued") / "run"
    shutil.copytree(FIXTURE, model_dir)
    result = run_cli(train_command(model_dir, 6, *FIXTURE_MODEL))
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir, result


def test_a_checkpoint_of_the_first_layout_restores_and_continues(continued_run):
    model_dir, result = continued_run
    assert "restored step 4" in result.stderr
    assert "continues there (DataConfig.stream = 'skip')" in result.stderr
    losses = {step: losses[0] for step, losses in losses_by_step(model_dir).items()}
    assert sorted(losses) == sorted(CONTINUED_LOSSES)
    np.testing.assert_allclose([losses[s] for s in sorted(losses)],
                               [CONTINUED_LOSSES[s] for s in sorted(losses)], rtol=1e-5)
    record = CheckpointRecord.from_json(_meta(model_dir, 6))
    assert _meta(model_dir, 6)["format"] == 2
    assert record.family == "decoder" and record.data_position == 6
    assert record.data.mixture_or_task_name == "embedded"
    assert record.data.vocabulary["vocab_size"] <= record.model_config["vocab_size"]


@pytest.mark.parametrize("step", [4, 6])
def test_checkpoints_of_both_layouts_export(continued_run, tmp_path, step):
    model_dir, _ = continued_run
    out = tmp_path / "hf"
    result = run_cli([sys.executable, "-m", "t5x_lite", "export-hf", f"--model_dir={model_dir}",
                      f"--step={step}", f"--out={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["hidden_size"] == 16
    assert (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists()
