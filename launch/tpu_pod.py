"""Run a command on every worker of a Cloud TPU VM (a pod slice), with gcloud.

    python launch/tpu_pod.py --name=my-tpu --zone=us-central2-b --accelerator_type=v4-32 \
        --package=dist/t5x_lite-0.1.0-py3-none-any.whl [--project=P] [--version=V] [--spot] \
        [--dry-run] -- t5x_lite train --gin_file=... --gin.MODEL_DIR="'gs://bucket/run'"

Steps: describe the TPU VM, create it when that fails; copy `--package` to every
worker when it is a local file; pip install it (with the `tpu` and `gcs` extras) on every
worker; start the command on every worker in the background, with
T5X_LITE_DISTRIBUTED=cluster so that `jax.distributed.initialize()` finds the pod
itself; then stream worker 0's log until its run ends. Stopping this script stops
the streaming only; the run goes on (`--stop` kills it on every worker).

`--dry-run` prints the commands, one per line, for a TPU VM that does not exist yet.
"""

import argparse
import os
import re
import shlex
import sys

import common

LOG = "~/t5x_lite_run.log"
PID_FILE = "~/t5x_lite_run.pid"


def gcloud_tpu(verb: str, args: argparse.Namespace, *rest: str) -> list[str]:
    """`gcloud compute tpus tpu-vm VERB REST... --zone=Z [--project=P]`."""
    project = [f"--project={args.project}"] if args.project else []
    return ["gcloud", "compute", "tpus", "tpu-vm", verb, *rest, f"--zone={args.zone}",
            *project]


def create_command(args: argparse.Namespace) -> list[str]:
    spot = ["--spot"] if args.spot else []
    return gcloud_tpu("create", args, args.name, f"--accelerator-type={args.accelerator_type}",
                      f"--version={args.version}", *spot)


def on_workers(args: argparse.Namespace, worker: str, remote: str) -> list[str]:
    return gcloud_tpu("ssh", args, args.name, f"--worker={worker}", f"--command={remote}")


def with_extras(requirement: str, extras: str) -> str:
    """`name[extras]...` for a pip requirement; `t5x_lite[extras] @ URL` for a URL."""
    if "://" in requirement:
        return f"t5x_lite[{extras}] @ {requirement}"
    name, rest = re.match(r"([A-Za-z0-9_.-]+)(.*)", requirement).groups()
    return f"{name}[{extras}]{rest}"


def install_commands(args: argparse.Namespace) -> list[list[str]]:
    """Copies a local package file to every worker (if it is one), then pip installs it."""
    commands = []
    if os.path.isfile(args.package):
        commands.append(gcloud_tpu("scp", args, args.package, f"{args.name}:~/",
                                   "--worker=all"))
        spec = f'"$HOME/{os.path.basename(args.package)}[{args.extras}]"'
    else:
        spec = shlex.quote(with_extras(args.package, args.extras))
    return [*commands, on_workers(args, "all", f"python3 -m pip install --upgrade {spec}")]


def start_remote(command: list[str]) -> str:
    """A shell line that starts `command` detached, logging to LOG, its pid in PID_FILE."""
    run = shlex.join(command)
    return (f'setsid nohup env PATH="$HOME/.local/bin:$PATH" {common.ENV_MODE}=cluster {run} '
            f"> {LOG} 2>&1 < /dev/null & echo $! > {PID_FILE}")


def follow_remote() -> str:
    """Worker 0's log from the start, until the run's process ends."""
    return f"tail --pid=$(cat {PID_FILE}) -n +1 -f {LOG}"


def stop_remote() -> str:
    return f"pkill -TERM -s $(cat {PID_FILE}) || true"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True, help="TPU VM name")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", default=None)
    parser.add_argument("--accelerator_type", default="v4-8", help="e.g. v4-32, v5litepod-256")
    parser.add_argument("--version", default="tpu-ubuntu2204-base", help="TPU VM runtime")
    parser.add_argument("--spot", action="store_true", help="create a Spot TPU VM")
    parser.add_argument("--package", default="t5x_lite",
                        help="a local wheel or sdist to copy, or any pip requirement "
                             "(a git+https:// URL, a name)")
    parser.add_argument("--extras", default="tpu,gcs", help="pip extras to install with it")
    parser.add_argument("--stop", action="store_true",
                        help="send SIGTERM to the run on every worker (a preemption: it "
                             "saves and exits 75) instead of starting one")
    return parser


def main(argv: list[str]) -> int:
    parser = _parser()
    args, command = common.parse(parser, argv, require_command=False)
    if not args.stop and not command:
        parser.error("give the command to run after `--`, e.g. -- t5x_lite train ...")
    commands = common.Commands(args.dry_run)
    if args.stop:
        commands.run(on_workers(args, "all", stop_remote()))
        return 0
    if not commands.succeeds(gcloud_tpu("describe", args, args.name, "--format=value(state)")):
        commands.run(create_command(args))
    for install in install_commands(args):
        commands.run(install)
    commands.run(on_workers(args, "all", start_remote(command)))
    commands.run(on_workers(args, "0", follow_remote()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
