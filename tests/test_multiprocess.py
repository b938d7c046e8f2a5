"""Several processes (jax.distributed on 127.0.0.1): preemption of one process stops
both at the same step; a killed peer ends the survivor; restarts replay bit-identical
losses. Through launch/local.py, 2 and 4 processes on a hybrid (DCN x ICI) mesh train
as one process does, and a checkpoint written by 2 processes resumes on 1 and on 4."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.cli import (
    cli_env,
    free_port,
    losses_by_step,
    read_metrics,
    run_processes,
    start_processes,
    train_command,
    wait_for_step,
)

STEPS = 24
COMMON = ["--gin.MESH_SHAPE=(-1, 1, 1)", "--gin.DataConfig.num_data_shards=2",
          "--gin.WatchdogConfig.floor_seconds=30"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """Losses of an uninterrupted two-process run."""
    model_dir = tmp_path_factory.mktemp("reference")
    results = run_processes(train_command(model_dir, STEPS, *COMMON))
    assert [code for code, _ in results] == [0, 0], results[0][1][-2000:]
    return losses_by_step(model_dir)


def _assert_same_losses(model_dir, reference: dict) -> None:
    resumed = losses_by_step(model_dir)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step, losses in resumed.items():
        assert all(loss == reference[step][0] for loss in losses), (step, losses)


def test_sigterm_to_one_process_stops_both_at_the_same_step(reference, tmp_path):
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


def test_a_killed_peer_ends_the_survivor_and_the_restart_matches(reference, tmp_path):
    model_dir, save = tmp_path / "run", "--gin.CheckpointConfig.save_every=4"
    heartbeat = "--heartbeat_timeout_seconds=15"
    processes = start_processes(train_command(model_dir, STEPS, *COMMON, save, heartbeat), 2, 2,
                                free_port())
    wait_for_step(model_dir, 9, processes)
    processes[1].kill()
    started = time.time()
    processes[0].communicate(timeout=120)
    assert processes[0].returncode != 0
    assert time.time() - started < 60

    results = run_processes(train_command(model_dir, STEPS, *COMMON, save))
    assert [code for code, _ in results] == [0, 0], results[0][1][-2000:]
    assert "restored step" in results[0][1]
    _assert_same_losses(model_dir, reference)


# The same global mesh, data 2 x fsdp 2, laid out over 1, 2 and 4 processes: MESH_SHAPE
# is the mesh within a process (a slice), DCN_MESH_SHAPE the processes.
LAYOUTS = {1: ("(2, 2, 1)", "None"), 2: ("(1, 2, 1)", "(2, 1, 1)"),
           4: ("(1, 1, 1)", "(2, 2, 1)")}
LAUNCHER = os.path.join(os.path.dirname(os.path.dirname(__file__)), "launch", "local.py")
SHORT = ["--gin.DataConfig.num_data_shards=4", "--gin.CheckpointConfig.save_every=4",
         "--gin.WatchdogConfig.floor_seconds=60"]
SHORT_STEPS = 8


def _layout(num_processes: int, mesh: str | None = None) -> list[str]:
    ici, dcn = LAYOUTS[num_processes]
    return [f"--gin.MESH_SHAPE={mesh or ici}", f"--gin.DCN_MESH_SHAPE={dcn}"]


def _train(model_dir, num_processes: int, log_dir, mesh: str | None = None) -> str:
    """Trains SHORT_STEPS steps on 4 devices over `num_processes`; returns process 0's log."""
    command = train_command(model_dir, SHORT_STEPS, *SHORT, *_layout(num_processes, mesh))
    if num_processes == 1:
        result = subprocess.run(command, capture_output=True, text=True, env=cli_env(4),
                                timeout=600, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stderr
    result = subprocess.run(
        [sys.executable, LAUNCHER, f"--num_processes={num_processes}",
         f"--devices_per_process={4 // num_processes}", f"--log_dir={log_dir}", "--", *command],
        capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    with open(os.path.join(log_dir, "process_0.log")) as f:
        return f.read()


def _keep_metrics_until(model_dir, step: int) -> None:
    kept = [record for record in read_metrics(model_dir) if record["step"] <= step]
    with open(os.path.join(model_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(record) + "\n" for record in kept)


def _last_losses(model_dir, steps) -> list[float]:
    losses = losses_by_step(model_dir)
    return [losses[step][-1] for step in steps]


@pytest.fixture(scope="module")
def one_process_losses(tmp_path_factory) -> list[float]:
    model_dir = tmp_path_factory.mktemp("one_process")
    _train(model_dir, 1, None)
    return _last_losses(model_dir, range(1, SHORT_STEPS + 1))


@pytest.fixture(scope="module")
def two_process_dir(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("two_processes")
    _train(model_dir, 2, model_dir / "logs")
    return model_dir


def test_two_processes_train_as_one(one_process_losses, two_process_dir):
    assert sorted(losses_by_step(two_process_dir)) == list(range(1, SHORT_STEPS + 1))
    np.testing.assert_allclose(_last_losses(two_process_dir, range(1, SHORT_STEPS + 1)),
                               one_process_losses, rtol=1e-5)
    assert len(os.listdir(two_process_dir / "logs")) == 2


@pytest.mark.parametrize("num_processes,mesh", [(1, "(1, 4, 1)"), (4, None)])
def test_a_two_process_checkpoint_resumes_on(num_processes, mesh, one_process_losses,
                                             two_process_dir, tmp_path):
    model_dir = tmp_path / "run"
    shutil.copytree(two_process_dir, model_dir, ignore=shutil.ignore_patterns("logs"))
    shutil.rmtree(model_dir / "checkpoints" / str(SHORT_STEPS))
    _keep_metrics_until(model_dir, 4)
    log = _train(model_dir, num_processes, tmp_path / "logs", mesh)
    assert "restored step 4" in log
    if num_processes == 4:  # four processes train as one (from the restored step on)
        assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 1}" in log
    assert sorted(losses_by_step(model_dir)) == list(range(1, SHORT_STEPS + 1))
    np.testing.assert_allclose(_last_losses(model_dir, range(5, SHORT_STEPS + 1)),
                               one_process_losses[4:], rtol=1e-5)
