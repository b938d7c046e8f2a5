"""Runs the installed CLI in a subprocess, as a user would."""

import json
import os
import subprocess
import sys

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
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def losses_by_step(model_dir) -> dict[int, list[float]]:
    losses: dict[int, list[float]] = {}
    for record in read_metrics(model_dir):
        if "loss" in record:
            losses.setdefault(record["step"], []).append(record["loss"])
    return losses
