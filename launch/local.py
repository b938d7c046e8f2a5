"""Rehearse a multi-host run on one machine: N processes x D CPU devices on 127.0.0.1.

    python launch/local.py --num_processes=2 --devices_per_process=2 [--log_dir=DIR] \
        [--port=PORT] [--grace_seconds=10] [--dry-run] -- t5x_lite train --gin_file=...

Each process gets the T5X_LITE_* variables that make `t5x_lite train` join the run,
and D simulated CPU devices. Process i writes DIR/process_<i>.log; process 0's
output is also shown here. When a process fails, the others get SIGTERM and, after
`--grace_seconds`, SIGKILL; the exit code is the first failure's (128 + N for a
signal N). A SIGTERM or SIGINT to this launcher goes to every process.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import common

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_env(index: int, num_processes: int, devices: int, port: int,
                xla_flags: str = "") -> dict[str, str]:
    """The variables process `index` runs with, on top of this launcher's environment."""
    kept = [flag for flag in xla_flags.split() if not flag.startswith(DEVICE_COUNT_FLAG)]
    return {**common.distributed_env(f"127.0.0.1:{port}", num_processes, index),
            "XLA_FLAGS": " ".join([*kept, f"{DEVICE_COUNT_FLAG}={devices}"]),
            "JAX_PLATFORMS": "cpu"}


def exit_code(returncode: int) -> int:
    """A shell's exit code for a child's return code (-N: killed by signal N)."""
    return 128 - returncode if returncode < 0 else returncode


def _tee(source, log_file, console) -> None:
    for chunk in iter(lambda: source.read1(65536), b""):
        log_file.write(chunk)
        log_file.flush()
        console.write(chunk)
        console.flush()


class LocalJob:
    """The processes of one run; `wait()` returns the job's exit code."""

    def __init__(self, command: list[str], envs: list[dict[str, str]], log_dir: str,
                 grace_seconds: float):
        self.grace_seconds = grace_seconds
        self.forwarded = False
        self.processes, self.logs, self.threads = [], [], []
        for index, env in enumerate(envs):
            log = open(os.path.join(log_dir, f"process_{index}.log"), "wb")  # noqa: SIM115
            shown = index == 0
            process = subprocess.Popen(command, env={**os.environ, **env},
                                       stdout=subprocess.PIPE if shown else log,
                                       stderr=subprocess.STDOUT)
            if shown:
                thread = threading.Thread(target=_tee, daemon=True,
                                          args=(process.stdout, log, sys.stdout.buffer))
                thread.start()
                self.threads.append(thread)
            self.processes.append(process)
            self.logs.append(log)

    def forward(self, signum: int, _frame=None) -> None:
        """Sends `signum` to every process still running."""
        self.forwarded = True
        self._signal_all(signum)

    def wait(self) -> int:
        failure, kill_at = None, None
        while None in [process.poll() for process in self.processes]:
            if failure is None:
                failure = next((p.returncode for p in self.processes
                                if p.returncode not in (None, 0)), None)
                if failure is not None and not self.forwarded:
                    print(f"local: a process exited with {exit_code(failure)}; stopping "
                          f"the others", file=sys.stderr, flush=True)
                    self._signal_all(signal.SIGTERM)
                    kill_at = time.monotonic() + self.grace_seconds
            if kill_at is not None and time.monotonic() > kill_at:
                self._signal_all(signal.SIGKILL)
                kill_at = None
            time.sleep(0.05)
        self._close()
        if failure is None:
            failure = next((p.returncode for p in self.processes if p.returncode), 0)
        return exit_code(failure)

    def _signal_all(self, signum: int) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signum)

    def _close(self) -> None:
        for thread in self.threads:
            thread.join()
        for log in self.logs:
            log.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=1)
    parser.add_argument("--log_dir", default=None,
                        help="per-process logs (default: a new temporary folder)")
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
    parser.add_argument("--grace_seconds", type=float, default=10.0,
                        help="after a failure, wait this long before SIGKILL to the others")
    return parser


def main(argv: list[str]) -> int:
    args, command = common.parse(_parser(), argv)
    if args.num_processes < 1 or args.devices_per_process < 1:
        sys.exit("local: --num_processes and --devices_per_process must be at least 1")
    port = args.port or free_port()
    envs = [process_env(i, args.num_processes, args.devices_per_process, port,
                        os.environ.get("XLA_FLAGS", "")) for i in range(args.num_processes)]
    if args.dry_run:
        for env in envs:
            print(common.shell_line(command, env))
        return 0
    if shutil.which(command[0]) is None:
        sys.exit(f"local: {command[0]}: command not found")
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="t5x_lite_local_")
    os.makedirs(log_dir, exist_ok=True)
    print(f"local: {args.num_processes} processes x {args.devices_per_process} CPU devices, "
          f"coordinator 127.0.0.1:{port}, logs in {log_dir}", file=sys.stderr, flush=True)
    job = LocalJob(command, envs, log_dir, args.grace_seconds)
    signal.signal(signal.SIGTERM, job.forward)
    signal.signal(signal.SIGINT, job.forward)
    return job.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
