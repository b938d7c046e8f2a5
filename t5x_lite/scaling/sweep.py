"""A scaling sweep: the IsoFLOP runs of a base config, each trained by `t5x_lite train` in
a child process, in its own run directory under the sweep's directory.

Resumable: a run whose record (`scaling_run.json`) exists is not run again, and a run
that was killed resumes from its own checkpoints. Each run's learning-rate schedule
decays over its own steps (`create_schedule.decay_steps` follows TRAIN_STEPS) and the
run evaluates its loss on the validation split at its last step.
"""

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Sequence

import tqdm

from t5x_lite import storage
from t5x_lite.errors import ConfigError
from t5x_lite.scaling import sizes

RECORD = "scaling_run.json"
WARMUP_FRACTION = 0.1  # of a run's steps, where the base schedule's warmup is longer
MIN_STEPS = 10


def run_name(run: sizes.PlannedRun) -> str:
    return f"C{run.budget:.0e}-N{run.size.params}"


def model_bindings(base, cfg) -> list[str]:
    """gin bindings that turn `base` into `cfg` (the fields that differ)."""
    name = type(cfg).__name__
    return [f"{name}.{field.name} = {getattr(cfg, field.name)!r}"
            for field in dataclasses.fields(cfg)
            if getattr(cfg, field.name) != getattr(base, field.name)]


def train_argv(gin_files: Sequence[str], bindings: Sequence[str], base,
               run: sizes.PlannedRun, model_dir: str, base_warmup: int) -> list[str]:
    """The `t5x_lite train` command of one run."""
    warmup = max(1, min(base_warmup, int(WARMUP_FRACTION * run.steps)))
    run_bindings = [*bindings, *model_bindings(base, run.size.cfg),
                    f"MODEL_DIR = {model_dir!r}", f"TRAIN_STEPS = {run.steps}",
                    f"create_schedule.warmup_steps = {warmup}",
                    f"train.eval_every = {run.steps}"]
    return [sys.executable, "-m", "t5x_lite", "train",
            *(f"--gin_file={path}" for path in gin_files),
            *(f"--gin_bindings={binding}" for binding in run_bindings)]


def final_eval_loss(model_dir: str, step: int) -> float:
    """The validation loss that the run logged at `step`."""
    losses = [record["eval_loss"] for record in storage.read_jsonl(
        os.path.join(model_dir, "metrics.jsonl"))
              if record.get("step") == step and record.get("eval_loss") is not None]
    if not losses:
        raise ConfigError(f"{model_dir}: no eval_loss at step {step} in metrics.jsonl; the run "
                          "did not finish its evaluation (see its train.log).")
    return losses[-1]


def record(run: sizes.PlannedRun, loss: float) -> dict:
    """What a finished run leaves for `scaling fit`."""
    return {"budget": run.budget, "params": run.size.params,
            "non_embedding_params": run.size.non_embedding_params,
            "tokens": run.tokens, "flops": run.flops, "steps": run.steps,
            "flops_per_token": run.size.flops_per_token, "eval_loss": loss,
            "model_config": dataclasses.asdict(run.size.cfg)}


def read_records(out_dir: str) -> list[dict]:
    """The records of the finished runs under a sweep directory."""
    records = []
    for name in sorted(os.listdir(out_dir)):
        path = os.path.join(out_dir, name, RECORD)
        if os.path.isfile(path):
            with open(path) as f:
                records.append(json.load(f))
    return records


def check_steps(runs: Sequence[sizes.PlannedRun]) -> None:
    short = [run for run in runs if run.steps < MIN_STEPS]
    if short:
        raise ConfigError(f"budget {short[0].budget:.3g} buys {short[0].steps} steps of the "
                          f"{short[0].size.params:,}-parameter model, fewer than {MIN_STEPS}; "
                          "raise the budget or lower BATCH_SIZE.")


def run_sweep(runs: Sequence[sizes.PlannedRun], out_dir: str, argv_of) -> list[dict]:
    """Trains each run not yet recorded (`argv_of(run, model_dir)` gives its command,
    whose output goes to the run's train.log); returns every run's record."""
    records = []
    for run in tqdm.tqdm(runs, desc="sweep", unit="run", dynamic_ncols=True):
        model_dir = os.path.join(out_dir, run_name(run))
        if not os.path.isfile(os.path.join(model_dir, RECORD)):
            os.makedirs(model_dir, exist_ok=True)
            with open(os.path.join(model_dir, "train.log"), "a") as log:
                code = subprocess.call(argv_of(run, model_dir), stdout=log, stderr=log)
            if code != 0:
                raise ConfigError(f"run {run_name(run)} ended with exit code {code}; see "
                                  f"{os.path.join(model_dir, 'train.log')} (run the sweep "
                                  "again to continue it).")
            storage.write_atomic(os.path.join(model_dir, RECORD), json.dumps(
                record(run, final_eval_loss(model_dir, run.steps)), indent=1))
        with open(os.path.join(model_dir, RECORD)) as f:
            records.append(json.load(f))
    return records
