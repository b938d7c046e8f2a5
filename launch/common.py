"""What the launchers share: the command after `--`, the environment that tells
`t5x_lite train` how to join a multi-process run, and running (or, in a dry run,
printing) external commands one per line.

The launchers run from a laptop or a login node and import nothing from t5x_lite.
"""

import argparse
import shlex
import subprocess
import sys

# Read by `t5x_lite train` (t5x_lite/parallel/distributed.py).
ENV_MODE = "T5X_LITE_DISTRIBUTED"
ENV_COORDINATOR_ADDRESS = "T5X_LITE_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "T5X_LITE_NUM_PROCESSES"
ENV_PROCESS_ID = "T5X_LITE_PROCESS_ID"


def parse(parser: argparse.ArgumentParser, argv: list[str],
          require_command: bool = True) -> tuple[argparse.Namespace, list[str]]:
    """(launcher options, the command after `--`)."""
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="print what would run, one command per line, and run nothing")
    split = argv.index("--") if "--" in argv else len(argv)
    args, command = parser.parse_args(argv[:split]), argv[split + 1:]
    if require_command and not command:
        parser.error("give the command to run after `--`, e.g. -- t5x_lite train --gin_file=...")
    return args, command


def distributed_env(coordinator_address: str, num_processes: int,
                    process_id: int) -> dict[str, str]:
    """The variables that make `t5x_lite train` join the run as process `process_id`."""
    return {ENV_COORDINATOR_ADDRESS: coordinator_address,
            ENV_NUM_PROCESSES: str(num_processes), ENV_PROCESS_ID: str(process_id)}


def shell_line(argv: list[str], env: dict[str, str] | None = None) -> str:
    """`K=V ... argv` quoted for a POSIX shell."""
    assignments = [f"{key}={shlex.quote(value)}" for key, value in (env or {}).items()]
    return " ".join(assignments + [shlex.join(argv)])


class Commands:
    """Runs external commands; with `dry_run`, prints each one instead, one per line."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run

    def run(self, argv: list[str], stdin: str | None = None) -> None:
        """Runs `argv` to completion; a failure ends the launcher with its exit code."""
        if self.dry_run:
            print(shell_line(argv))
            return
        print(f"+ {shell_line(argv)}", file=sys.stderr, flush=True)
        result = subprocess.run(argv, input=stdin, text=True, check=False)
        if result.returncode != 0:
            sys.exit(result.returncode)

    def succeeds(self, argv: list[str]) -> bool:
        """Whether `argv` exits 0, its output discarded; a dry run prints it and says no."""
        if self.dry_run:
            print(shell_line(argv))
            return False
        return subprocess.run(argv, check=False, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode == 0
