"""Two processes (jax.distributed on 127.0.0.1, 2 CPU devices each): preemption of one
process stops both at the same step; a killed peer ends the survivor; restarts replay
bit-identical losses."""

import os
import signal
import time

from tests.cli import (free_port, losses_by_step, run_processes, start_processes,
                       train_command, wait_for_step)

STEPS = 24
COMMON = ["--gin.MESH_SHAPE=(-1, 1, 1)", "--gin.DataConfig.num_data_shards=2",
          "--gin.WatchdogConfig.floor_seconds=30"]


def _reference(tmp_path) -> dict:
    model_dir = tmp_path / "reference"
    results = run_processes(train_command(model_dir, STEPS, *COMMON))
    assert [code for code, _ in results] == [0, 0], results[0][1][-2000:]
    return losses_by_step(model_dir)


def _assert_same_losses(model_dir, reference: dict) -> None:
    resumed = losses_by_step(model_dir)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step, losses in resumed.items():
        assert all(loss == reference[step][0] for loss in losses), (step, losses)


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
    reference = _reference(tmp_path)
    model_dir, never = tmp_path / "run", "--gin.CheckpointConfig.save_every=1000"
    processes = start_processes(train_command(model_dir, STEPS, *COMMON, never), 2, 2,
                                free_port())
    wait_for_step(model_dir, 5, processes)
    processes[1].send_signal(signal.SIGTERM)
    stderrs = [process.communicate(timeout=300)[1] for process in processes]
    assert [p.returncode for p in processes] == [75, 75], stderrs[0][-2000:]
    saved = [int(n) for n in os.listdir(model_dir / "checkpoints") if n.isdigit()]
    stopped_at = max(losses_by_step(model_dir))
    assert saved == [stopped_at], (saved, stopped_at)
    assert all(f"saved step {stopped_at}" in stderr for stderr in stderrs)

    results = run_processes(train_command(model_dir, STEPS, *COMMON, never))
    assert [code for code, _ in results] == [0, 0], results[0][1][-2000:]
    assert f"restored step {stopped_at}" in results[0][1]
    assert all(len(v) == 1 for v in losses_by_step(model_dir).values())
    _assert_same_losses(model_dir, reference)


def test_a_killed_peer_ends_the_survivor_and_the_restart_matches(tmp_path):
    reference = _reference(tmp_path)
    model_dir, save = tmp_path / "run", "--gin.CheckpointConfig.save_every=4"
    processes = start_processes(train_command(model_dir, STEPS, *COMMON, save), 2, 2,
                                free_port())
    wait_for_step(model_dir, 9, processes)
    processes[1].kill()
    started = time.time()
    processes[0].communicate(timeout=120)
    assert processes[0].returncode != 0
    assert time.time() - started < 90

    results = run_processes(train_command(model_dir, STEPS, *COMMON, save))
    assert [code for code, _ in results] == [0, 0], results[0][1][-2000:]
    assert "restored step" in results[0][1]
    _assert_same_losses(model_dir, reference)
