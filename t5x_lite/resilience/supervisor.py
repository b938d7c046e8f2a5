"""`t5x_lite supervise -- <command>`: run a training command and restart it when it
was preempted, hung or crashed, up to a budget. Config errors and divergence end it.

A SIGTERM or SIGINT to the supervisor goes to the child; a child that has not
exited after the grace period is killed, and the supervisor exits as preempted.
"""

import signal
import subprocess
import sys
import threading

from t5x_lite.errors import EXIT_CONFIG_ERROR, EXIT_DIVERGED, EXIT_PREEMPTED

FINAL_EXIT_CODES = {0: "finished", EXIT_CONFIG_ERROR: "config error", EXIT_DIVERGED: "diverged"}


def _describe(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return FINAL_EXIT_CODES.get(code, {EXIT_PREEMPTED: "preempted"}.get(code, f"exit code {code}"))


class Supervisor:
    def __init__(self, command: list[str], max_restarts: int, grace_seconds: float):
        self.command, self.max_restarts, self.grace_seconds = command, max_restarts, grace_seconds
        self.stopping = threading.Event()
        self.child: subprocess.Popen | None = None

    def run(self) -> int:
        """Exit code for the supervisor itself."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop_signal)
        for attempt in range(self.max_restarts + 1):
            code = self._run_child()
            print(f"supervise: attempt {attempt + 1} ended: {_describe(code)}", file=sys.stderr)
            if self.stopping.is_set():
                return EXIT_PREEMPTED
            if code in FINAL_EXIT_CODES:
                return code
        print(f"supervise: restart budget of {self.max_restarts} used up", file=sys.stderr)
        return code if code > 0 else 128 - code

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
