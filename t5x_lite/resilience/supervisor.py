"""`t5x_lite supervise -- <command>`: run a training command and restart it when it
was preempted, hung or crashed, up to a budget. Config errors and divergence end it.

A SIGTERM or SIGINT to the supervisor goes to the child; a child that has not
exited after the grace period is killed, and the supervisor exits as preempted.

With the run's MODEL_DIR (`--model_dir`, else the command's `--gin.MODEL_DIR=`), the
supervisor reads how far each attempt logged, from local disk or `gs://`, and stops
restarting a run that `max_stalled` attempts in a row did not move forward.
"""

import ast
import signal
import subprocess
import sys
import threading

from t5x_lite import storage
from t5x_lite.errors import EXIT_CONFIG_ERROR, EXIT_DIVERGED, EXIT_PREEMPTED

FINAL_EXIT_CODES = {0: "finished", EXIT_CONFIG_ERROR: "config error", EXIT_DIVERGED: "diverged"}


def _describe(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return FINAL_EXIT_CODES.get(code, {EXIT_PREEMPTED: "preempted"}.get(code, f"exit code {code}"))


def _as_exit_code(code: int) -> int:
    """A child's return code as an exit status: killed by signal N is 128 + N."""
    return code if code > 0 else 128 - code


def model_dir_of(command: list[str]) -> str | None:
    """The MODEL_DIR a `t5x_lite train` command binds with `--gin.MODEL_DIR=...`, if any."""
    for arg in command:
        if arg.startswith("--gin.MODEL_DIR="):
            value = arg.split("=", 1)[1].strip()
            try:
                return str(ast.literal_eval(value))
            except (ValueError, SyntaxError):
                return value
    return None


def logged_step(model_dir: str) -> int:
    """The highest step in MODEL_DIR's metrics.jsonl (0 if none)."""
    records = storage.read_jsonl(storage.join(model_dir, "metrics.jsonl"))
    return max((record.get("step", 0) for record in records), default=0)


class Supervisor:
    def __init__(self, command: list[str], max_restarts: int, grace_seconds: float,
                 model_dir: str | None = None, max_stalled: int = 3):
        self.command, self.max_restarts, self.grace_seconds = command, max_restarts, grace_seconds
        self.model_dir = model_dir or model_dir_of(command)
        self.max_stalled = max_stalled
        self.stopping = threading.Event()
        self.child: subprocess.Popen | None = None

    def run(self) -> int:
        """Exit code for the supervisor itself."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop_signal)
        best_step, stalled = self._progress() or 0, 0
        for attempt in range(self.max_restarts + 1):
            code = self._run_child()
            step = self._progress()
            reached = f"; metrics reach step {step}" if step is not None else ""
            print(f"supervise: attempt {attempt + 1} ended: {_describe(code)}{reached}",
                  file=sys.stderr)
            if self.stopping.is_set():
                return EXIT_PREEMPTED
            if code in FINAL_EXIT_CODES:
                return code
            stalled = stalled + 1 if step is not None and step <= best_step else 0
            best_step = max(best_step, step or 0)
            if self.max_stalled and stalled >= self.max_stalled:
                print(f"supervise: {stalled} attempts in a row ended without a step past "
                      f"{best_step}; not restarting", file=sys.stderr)
                return _as_exit_code(code)
        print(f"supervise: restart budget of {self.max_restarts} used up", file=sys.stderr)
        return _as_exit_code(code)

    def _progress(self) -> int | None:
        """How far the run has logged, or None without a MODEL_DIR (or a readable one)."""
        if self.model_dir is None:
            return None
        try:
            return logged_step(self.model_dir)
        except Exception as error:  # noqa: BLE001  (watching must not end the supervision)
            print(f"supervise: cannot read {self.model_dir}: {error}", file=sys.stderr)
            return None

    def _run_child(self) -> int:
        self.child = subprocess.Popen(self.command, start_new_session=True)
        return self.child.wait()

    def _on_stop_signal(self, signum, _frame) -> None:
        self.stopping.set()
        child = self.child
        if child is None or child.poll() is not None:
            return
        child.send_signal(signum)
        threading.Thread(target=self._kill_after_grace, args=(child,), daemon=True).start()

    def _kill_after_grace(self, child: subprocess.Popen) -> None:
        try:
            child.wait(timeout=self.grace_seconds)
        except subprocess.TimeoutExpired:
            print(f"supervise: child still running {self.grace_seconds:.0f} s after the stop "
                  "signal; sending SIGKILL", file=sys.stderr)
            child.kill()
