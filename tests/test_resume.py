"""A run killed with SIGKILL and started again replays bit-identical losses."""

import os
import signal
import subprocess
import time

import numpy as np

from tests.cli import cli_env, losses_by_step, run_cli, train_command

STEPS = 14
MESH = "--gin.MESH_SHAPE=(2, 2, 1)"
SAVE_EVERY = "--gin.CheckpointConfig.save_every=4"


def _start_and_kill_after(model_dir, kill_after_step: int):
    process = subprocess.Popen(train_command(model_dir, STEPS, MESH, SAVE_EVERY),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=cli_env(4))
    metrics = os.path.join(model_dir, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if os.path.exists(metrics) and max(losses_by_step(model_dir), default=0) >= kill_after_step:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_sigkill_then_restart_replays_identical_losses(tmp_path):
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    result = run_cli(train_command(reference_dir, STEPS, MESH, SAVE_EVERY), num_devices=4)
    assert result.returncode == 0, result.stderr[-3000:]
    reference = losses_by_step(reference_dir)

    _start_and_kill_after(resumed_dir, kill_after_step=int(np.random.default_rng().integers(5, 10)))
    killed_at = max(losses_by_step(resumed_dir))
    result = run_cli(train_command(resumed_dir, STEPS, MESH, SAVE_EVERY), num_devices=4)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = losses_by_step(resumed_dir)

    assert sorted(resumed) == sorted(reference) == list(range(1, STEPS + 1))
    assert "restored step" in result.stderr, f"the restart did not resume (killed at {killed_at})"
    for step, losses in resumed.items():
        assert all(loss == reference[step][0] for loss in losses), (step, losses, reference[step])


def _corrupt(step_dir):
    for root, _, files in os.walk(step_dir / "state"):
        for name in files:
            with open(os.path.join(root, name), "r+b") as f:
                f.truncate(max(os.path.getsize(f.name) // 3, 1))
                f.seek(0)
                f.write(b"\xff\x00garbage")


def test_corrupted_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    result = run_cli(train_command(reference_dir, STEPS, MESH, SAVE_EVERY), num_devices=4)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli(train_command(resumed_dir, 8, MESH, SAVE_EVERY), num_devices=4)
    assert result.returncode == 0, result.stderr[-3000:]
    _corrupt(resumed_dir / "checkpoints" / "8")

    result = run_cli(train_command(resumed_dir, STEPS, MESH, SAVE_EVERY), num_devices=4)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checkpoint step 8 is unreadable" in result.stderr
    assert "restored step 4" in result.stderr
    assert (resumed_dir / "checkpoints" / "8.corrupt").is_dir()
    reference, resumed = losses_by_step(reference_dir), losses_by_step(resumed_dir)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step, losses in resumed.items():
        assert all(loss == reference[step][0] for loss in losses), (step, losses)
