"""The command line: the quickstart trains, and bad input ends in one clear line."""

import os

import pytest

from tests.cli import (
    assert_one_line_error,
    losses_by_step,
    read_metrics,
    run_cli,
    train_command,
)


@pytest.fixture(scope="module")
def quickstart_dir(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("quickstart")
    result = run_cli(train_command(model_dir, 40, "--gin.CheckpointConfig.save_every=20",
                                   "--gin.train.eval_every=20"))
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir


def test_quickstart_loss_falls(quickstart_dir):
    losses = losses_by_step(quickstart_dir)
    assert sorted(losses) == list(range(1, 41))
    first, last = losses[1][0], sum(losses[s][0] for s in range(36, 41)) / 5
    assert last < first - 1.0, (first, last)


def test_run_writes_its_records(quickstart_dir):
    records = read_metrics(quickstart_dir)
    train_record = next(r for r in records if "loss" in r)
    for key in ("step", "loss", "learning_rate", "grad_norm", "tokens_per_second", "mfu"):
        assert key in train_record
    assert train_record["mfu"] > 0
    eval_steps = [r["step"] for r in records if "eval_loss" in r]
    assert eval_steps == [20, 40]
    assert os.listdir(quickstart_dir / "tensorboard")
    assert "DecoderConfig.num_layers = 4" in (quickstart_dir / "config.gin").read_text()
    assert sorted(os.listdir(quickstart_dir / "checkpoints" )) == ["20", "40"]


def test_throughput_counts_completed_steps_only(quickstart_dir):
    """Every step is logged, and the steps before a save or an eval (20, 40) finish inside
    blocks that the tokens/s clock skips: only completed work counts, never above peak."""
    records = [r for r in read_metrics(quickstart_dir) if "tokens_per_second" in r]
    assert [r["step"] for r in records] == list(range(1, 41))
    for record in records:
        assert record["tokens_per_second"] > 0, record
        assert record["mfu"] < 1.0, record


def test_finished_run_restarts_without_training(quickstart_dir):
    result = run_cli(train_command(quickstart_dir, 40))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "restored step 40" in result.stderr


def test_checkpoint_shape_mismatch(quickstart_dir):
    result = run_cli(train_command(quickstart_dir, 41, "--gin.DecoderConfig.mlp_dim=512"))
    assert_one_line_error(result, "train", "does not match the model", "(4, 384, 128)",
                           "(4, 512, 128)")


def _files(model_dir) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(root, name), model_dir):
            open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(model_dir) for name in names}


def test_resume_with_another_row_length_is_refused(quickstart_dir):
    """Token stores count rows, so the batch size may change on resume; the row may not."""
    before = _files(quickstart_dir)
    result = run_cli(train_command(quickstart_dir, 41, "--gin.BATCH_SIZE=16",
                                   "--gin.TASK_FEATURE_LENGTHS={'targets': 64}"))
    assert_one_line_error(result, "train", "checkpoint step 40", "counted rows of 32 tokens",
                          "this config has rows of 64", "TASK_FEATURE_LENGTHS={'targets': 32}",
                          "start a new MODEL_DIR")
    assert "BATCH_SIZE" not in result.stderr.strip().splitlines()[-1]
    assert _files(quickstart_dir) == before


def test_initial_checkpoint_starts_a_new_run_from_trained_params(quickstart_dir, tmp_path):
    initial = f"--gin.INITIAL_CHECKPOINT_PATH='{quickstart_dir}'"
    result = run_cli(train_command(tmp_path, 2, initial))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"initialized params from {quickstart_dir}" in result.stderr
    fresh_first_loss = losses_by_step(quickstart_dir)[1][0]
    assert losses_by_step(tmp_path)[1][0] < fresh_first_loss - 1.0


def test_missing_required_macro(tmp_path):
    result = run_cli(train_command(tmp_path, 5)[:-2] + ["--gin.TRAIN_STEPS=5"])
    assert_one_line_error(result, "train", "MODEL_DIR", "is not set")


def test_misspelt_binding(tmp_path):
    result = run_cli(train_command(tmp_path, 5, "--gin.train.modle_dir='/x'"))
    assert_one_line_error(result, "train", "modle_dir")


def test_missing_gin_file(tmp_path):
    result = run_cli(train_command(tmp_path, 5, "--gin_file=no_such_config.gin"))
    assert_one_line_error(result, "train", "no_such_config.gin", "not found")
    assert not os.listdir(tmp_path)


def test_missing_text_file(tmp_path):
    result = run_cli(train_command(tmp_path, 5, "--gin_file=experiments/shakespeare_char.gin",
                                   f"--gin.TEXT_FILES=['{tmp_path}/no_such.txt']"))
    assert_one_line_error(result, "train", "file not found", "no_such.txt")


def test_bad_mesh_shape(tmp_path):
    result = run_cli(train_command(tmp_path, 5, "--gin.MESH_SHAPE=(3, 1, 1)"))
    assert_one_line_error(result, "train", "MESH_SHAPE=(3, 1, 1) does not fit 2 devices")


@pytest.mark.parametrize("steps, extra, fragments", [
    (2, ["--gin.BATCH_SIZE=-8"], ["BATCH_SIZE=-8", "positive"]),
    (2, ["--gin.TASK_FEATURE_LENGTHS={'targets': 0}"], ["TASK_FEATURE_LENGTHS=", "length 0"]),
    (0, [], ["TRAIN_STEPS=0", "positive"]),
    (2, ["--gin.BATCH_SIZE=3"], ["BATCH_SIZE=3", "2 data-parallel devices", "multiple of 2"]),
    (2, ["--gin.BATCH_SIZE=4", "--gin.train.num_microbatches=4"],
     ["BATCH_SIZE=4", "num_microbatches=4", "multiple of 8"]),
], ids=["batch_size", "feature_length", "train_steps", "batch_over_mesh", "microbatches"])
def test_bad_numbers_write_nothing(tmp_path, steps, extra, fragments):
    model_dir = tmp_path / "run"
    result = run_cli(train_command(model_dir, steps, *extra))
    assert_one_line_error(result, "train", *fragments)
    assert not model_dir.exists()


def test_model_dir_that_is_a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    result = run_cli(train_command(path, 2))
    assert_one_line_error(result, "train", f"MODEL_DIR={path} is a file")
    assert path.read_text() == "keep me" and os.listdir(tmp_path) == ["notes.txt"]


def test_unknown_command():
    import sys
    result = run_cli([sys.executable, "-m", "t5x_lite", "trian"])
    assert result.returncode == 2
    assert "usage: t5x_lite" in result.stderr
