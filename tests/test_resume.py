"""A run killed with SIGKILL and started again replays bit-identical losses."""

import json
import os
import signal
import subprocess
import time

import jax
import numpy as np

from tests.cli import cli_env, losses_by_step, run_cli, saved_state, train_command

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
        saved = os.path.isdir(os.path.join(model_dir, "checkpoints", "4"))
        if saved and os.path.exists(metrics) and max(
                losses_by_step(model_dir), default=0) >= kill_after_step:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()


def _assert_same_final_state(model_dir, reference_dir) -> None:
    final, reference = saved_state(model_dir, STEPS), saved_state(reference_dir, STEPS)
    assert jax.tree.structure(final) == jax.tree.structure(reference)
    jax.tree.map(np.testing.assert_array_equal, final, reference)


def _goodput_records(model_dir) -> list[dict]:
    return [json.loads(line) for line in (model_dir / "goodput.jsonl").read_text().splitlines()]


def test_sigkill_then_restart_replays_identical_losses(tmp_path):
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    result = run_cli(train_command(reference_dir, STEPS, MESH, SAVE_EVERY), num_devices=4)
    assert result.returncode == 0, result.stderr[-3000:]
    reference = losses_by_step(reference_dir)

    # Killed once the asynchronous save of step 4 has reached disk, at step 6 or later.
    _start_and_kill_after(resumed_dir, kill_after_step=int(np.random.default_rng().integers(6, 10)))
    killed_at = max(losses_by_step(resumed_dir))
    result = run_cli(train_command(resumed_dir, STEPS, MESH, SAVE_EVERY), num_devices=4)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = losses_by_step(resumed_dir)

    assert sorted(resumed) == sorted(reference) == list(range(1, STEPS + 1))
    assert "restored step" in result.stderr, f"the restart did not resume (killed at {killed_at})"
    for step, losses in resumed.items():
        assert all(loss == reference[step][0] for loss in losses), (step, losses, reference[step])
    _assert_same_final_state(resumed_dir, reference_dir)

    (restart,) = _goodput_records(resumed_dir)  # the killed attempt wrote none
    restored = restart["first_step"]
    assert f"restored step {restored}" in result.stderr and restart["last_step"] == STEPS
    # Steps restored+1 ... killed_at ran twice; the first of them is booked as the compile.
    assert restart["steps"]["redone"] == max(killed_at - restored - 1, 0)


def test_corrupted_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    result = run_cli(train_command(reference_dir, STEPS, MESH, SAVE_EVERY), num_devices=4)
    assert result.returncode == 0, result.stderr[-3000:]
    corrupt_then_die = ["--gin.FaultInjector.corrupt_checkpoint_at_step=8",
                        "--gin.FaultInjector.signal_at_step=8"]
    result = run_cli(train_command(resumed_dir, STEPS, MESH, SAVE_EVERY, *corrupt_then_die),
                     num_devices=4)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]

    result = run_cli(train_command(resumed_dir, STEPS, MESH, SAVE_EVERY), num_devices=4)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checkpoint step 8 is unreadable" in result.stderr
    assert "restored step 4" in result.stderr
    assert (resumed_dir / "checkpoints" / "8.corrupt").is_dir()
    reference, resumed = losses_by_step(reference_dir), losses_by_step(resumed_dir)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step, losses in resumed.items():
        assert all(loss == reference[step][0] for loss in losses), (step, losses)
    _assert_same_final_state(resumed_dir, reference_dir)


def test_sigterm_saves_the_current_step_and_restart_continues_from_it(tmp_path):
    reference_dir, preempted_dir = tmp_path / "reference", tmp_path / "preempted"
    steps = 30  # enough steps left after the signal that the run cannot finish first
    result = run_cli(train_command(reference_dir, steps, MESH, SAVE_EVERY), num_devices=4)
    assert result.returncode == 0, result.stderr[-3000:]

    never = "--gin.CheckpointConfig.save_every=1000"
    process = subprocess.Popen(train_command(preempted_dir, steps, MESH, never),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=cli_env(4))
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if (preempted_dir / "metrics.jsonl").exists() and max(losses_by_step(preempted_dir),
                                                              default=0) >= 5:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 75, stderr[-3000:]
    saved = sorted(int(name) for name in os.listdir(preempted_dir / "checkpoints")
                   if name.isdigit())
    stopped_at = max(losses_by_step(preempted_dir))
    assert saved == [stopped_at] and 5 <= stopped_at < steps, (saved, stopped_at)

    result = run_cli(train_command(preempted_dir, steps, MESH, never), num_devices=4)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"restored step {stopped_at}" in result.stderr
    reference, resumed = losses_by_step(reference_dir), losses_by_step(preempted_dir)
    assert {step: len(losses) for step, losses in resumed.items()} == {
        step: 1 for step in range(1, steps + 1)}
    assert {step: losses[0] for step, losses in resumed.items()} == {
        step: losses[0] for step, losses in reference.items()}


def test_sigkill_while_an_async_save_is_in_flight(tmp_path):
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    result = run_cli(train_command(reference_dir, STEPS, MESH, SAVE_EVERY), num_devices=4)
    assert result.returncode == 0, result.stderr[-3000:]
    kill = "--gin.FaultInjector.signal_at_step=8"  # step 8's save has just been started
    result = run_cli(train_command(killed_dir, STEPS, MESH, SAVE_EVERY, kill), num_devices=4)
    assert result.returncode == -signal.SIGKILL

    result = run_cli(train_command(killed_dir, STEPS, MESH, SAVE_EVERY), num_devices=4)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "restored step 4" in result.stderr or "restored step 8" in result.stderr
    reference, resumed = losses_by_step(reference_dir), losses_by_step(killed_dir)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step, losses in resumed.items():
        assert all(loss == reference[step][0] for loss in losses), (step, losses)
    _assert_same_final_state(killed_dir, reference_dir)
