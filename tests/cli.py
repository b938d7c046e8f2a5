"""Runs the installed CLI in a subprocess, as a user would."""

import os
import subprocess
import sys
import time

SMALL_RUN = ["--gin_file=quickstart.gin", "--gin.BATCH_SIZE=8",
             "--gin.TASK_FEATURE_LENGTHS={'targets': 32}", "--gin.train.eval_every=None",
             "--gin.train.log_every=1"]


def cli_env(num_devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
    return env


def train_command(model_dir, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "t5x_lite", "train", *SMALL_RUN,
            f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}", *extra]


def run_cli(args: list[str], num_devices: int = 2, timeout: int = 600):
    return subprocess.run(args, capture_output=True, text=True, env=cli_env(num_devices),
                          timeout=timeout)


def read_metrics(model_dir) -> list[dict]:
    """MODEL_DIR's metrics records, as t5x_lite reads them back (local or gs://)."""
    from t5x_lite import storage
    return storage.read_jsonl(storage.join(model_dir, "metrics.jsonl"))


def losses_by_step(model_dir) -> dict[int, list[float]]:
    losses: dict[int, list[float]] = {}
    for record in read_metrics(model_dir):
        if "loss" in record:
            losses.setdefault(record["step"], []).append(record["loss"])
    return losses


def saved_state(model_dir, step: int) -> dict:
    """The state saved at `step` as host numpy arrays, whatever mesh wrote it."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp
    path = os.path.abspath(os.path.join(model_dir, "checkpoints", str(step), "state"))
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))


def hang_then_kill(command: list[str], model_dir, saved_step: int = 4,
                   num_devices: int = 4) -> int:
    """Runs `command` (a train command whose host loop stalls after a later step, by
    `FaultInjector.hang_at_step`) until step `saved_step`'s checkpoint is on disk and a
    step past it is logged, then SIGKILLs it; returns the last step it logged."""
    import signal  # pylint: disable=g-import-not-at-top
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=cli_env(num_devices))
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        saved = (model_dir / "checkpoints" / str(saved_step)).is_dir()
        if saved and (model_dir / "metrics.jsonl").exists() and max(
                losses_by_step(model_dir), default=0) > saved_step:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    return max(losses_by_step(model_dir))


def assert_bitwise_resume(resumed_dir, reference_dir, steps: int, repeated_step: int) -> None:
    """The resumed run logged every step's loss exactly as the reference did (step
    `repeated_step` twice: before the kill and after) and saved the same final state."""
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    reference, resumed = losses_by_step(reference_dir), losses_by_step(resumed_dir)
    assert sorted(resumed) == sorted(reference) == list(range(1, steps + 1))
    assert len(resumed[repeated_step]) == 2
    for step, losses in resumed.items():
        assert all(loss == reference[step][0] for loss in losses), (step, losses, reference[step])
    final, expected = saved_state(resumed_dir, steps), saved_state(reference_dir, steps)
    assert jax.tree.structure(final) == jax.tree.structure(expected)
    jax.tree.map(np.testing.assert_array_equal, final, expected)


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_processes(args: list[str], num_processes: int, devices_each: int, port: int):
    """Starts one `t5x_lite train` per process of a run on 127.0.0.1."""
    return [subprocess.Popen(
        [*args, f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
         f"--process_id={index}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=cli_env(devices_each)) for index in range(num_processes)]


def run_processes(args: list[str], num_processes: int = 2, devices_each: int = 2,
                  timeout: int = 600) -> list[tuple[int, str]]:
    processes = start_processes(args, num_processes, devices_each, free_port())
    stderrs = [process.communicate(timeout=timeout)[1] for process in processes]
    return [(process.returncode, stderr) for process, stderr in zip(processes, stderrs)]


def wait_for_step(model_dir, step: int, processes, timeout: float = 300) -> None:
    """Waits until metrics.jsonl holds `step` (while every process is still running)."""
    deadline = time.time() + timeout
    while time.time() < deadline and all(p.poll() is None for p in processes):
        if os.path.exists(os.path.join(model_dir, "metrics.jsonl")) and max(
                losses_by_step(model_dir), default=0) >= step:
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} never appeared in {model_dir}")


def assert_one_line_error(result, command: str, *fragments: str) -> None:
    """Exit code 2, no traceback, and a last stderr line naming the problem."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"t5x_lite {command}: error:"), last_line
    for fragment in fragments:
        assert fragment in last_line, last_line
