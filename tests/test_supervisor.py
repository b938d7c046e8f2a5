"""`t5x_lite supervise`: restarts on preemption, hangs and crashes, not on config errors."""

import signal
import subprocess
import sys
import textwrap
import time

from tests.cli import cli_env, losses_by_step, run_cli, train_command

# A child that reads its planned exit codes from a file, one per attempt; a code with a
# "+" first logs step 10 x attempt to <log>.run/metrics.jsonl, as a run that moved on.
CHILD = textwrap.dedent("""
    import json, os, signal, sys, time
    plan_path, log_path = sys.argv[1], sys.argv[2]
    with open(log_path, "a") as log:
        log.write("attempt\\n")
    attempts = sum(1 for _ in open(log_path))
    plan = open(plan_path).read().split()
    code = plan[min(attempts, len(plan)) - 1]
    if code.startswith("+"):
        os.makedirs(log_path + ".run", exist_ok=True)
        with open(os.path.join(log_path + ".run", "metrics.jsonl"), "a") as metrics:
            metrics.write(json.dumps({"step": 10 * attempts}) + "\\n")
        code = code[1:]
    if code == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if code == "ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(600)
    sys.exit(int(code))
""")


def _supervise(tmp_path, plan: str, *flags: str):
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "plan").write_text(plan)
    command = [sys.executable, "-m", "t5x_lite", "supervise", *flags, "--", sys.executable,
               str(tmp_path / "child.py"), str(tmp_path / "plan"), str(tmp_path / "log")]
    return command


def _attempts(tmp_path) -> int:
    return len((tmp_path / "log").read_text().splitlines())


def test_restarts_after_preemption_hang_and_crash_until_it_finishes(tmp_path):
    result = run_cli(_supervise(tmp_path, "75 76 kill 1 0"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert _attempts(tmp_path) == 5
    for described in ("preempted", "exit code 76", "killed by SIGKILL", "exit code 1",
                      "finished"):
        assert described in result.stderr


def test_no_restart_after_a_config_error_or_divergence(tmp_path):
    for code in (2, 77):
        (tmp_path / "log").unlink(missing_ok=True)
        result = run_cli(_supervise(tmp_path, f"{code} 0"))
        assert result.returncode == code
        assert _attempts(tmp_path) == 1


def test_restart_budget(tmp_path):
    result = run_cli(_supervise(tmp_path, "1", "--max_restarts=2"))
    assert result.returncode == 1
    assert _attempts(tmp_path) == 3
    assert "restart budget of 2 used up" in result.stderr


def test_restarts_stop_when_attempts_make_no_progress(tmp_path):
    run = f"--model_dir={tmp_path / 'log.run'}"
    result = run_cli(_supervise(tmp_path, "+1 +1 1 1 1 +1", run, "--max_restarts=9"))
    assert result.returncode == 1
    assert _attempts(tmp_path) == 5  # two that moved on, then three that did not
    assert "attempt 2 ended: exit code 1; metrics reach step 20" in result.stderr
    assert "3 attempts in a row ended without a step past 20; not restarting" in result.stderr

    (tmp_path / "log").unlink()
    result = run_cli(_supervise(tmp_path, "1", run, "--max_restarts=4", "--max_stalled=0"))
    assert _attempts(tmp_path) == 5 and "restart budget of 4 used up" in result.stderr


def test_sigterm_is_forwarded_then_escalated_to_sigkill(tmp_path):
    process = subprocess.Popen(_supervise(tmp_path, "ignore_term", "--grace_seconds=1"),
                               stderr=subprocess.PIPE, text=True, env=cli_env(1))
    deadline = time.time() + 60
    while not (tmp_path / "log").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 75, stderr
    assert "sending SIGKILL" in stderr
    assert _attempts(tmp_path) == 1


def test_a_hung_training_run_is_ended_by_the_watchdog_and_restarted_to_completion(tmp_path):
    train = train_command(tmp_path, 12, "--gin.FaultInjector.hang_at_step=6",
                          "--gin.CheckpointConfig.save_every=4",
                          "--gin.WatchdogConfig.floor_seconds=3", "--gin.WatchdogConfig.factor=5")
    result = run_cli([sys.executable, "-m", "t5x_lite", "supervise", "--", *train], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "watchdog: no step completed" in result.stderr and "in maybe_hang" in result.stderr
    assert "exit code 76" in result.stderr and "restored step 4" in result.stderr
    assert "ended: finished; metrics reach step 12" in result.stderr  # read from MODEL_DIR
    assert sorted(losses_by_step(tmp_path)) == list(range(1, 13))
