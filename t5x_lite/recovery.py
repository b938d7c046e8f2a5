"""Recovery from loss divergence on the host side: the escalation ladder, and the
record of every action in MODEL_DIR/recovery.jsonl plus a console line."""

import json
import os
import sys

import jax

from t5x_lite import divergence
from t5x_lite.divergence import DivergenceConfig


class RecoveryLog:
    """Appends one JSON object per action (process 0 only)."""

    def __init__(self, model_dir: str):
        self.path = os.path.join(model_dir, "recovery.jsonl")
        self.enabled = jax.process_index() == 0

    def record(self, step: int, signal: str, action: str, batches_skipped: int = 0) -> None:
        if not self.enabled:
            return
        entry = {"step": step, "signal": signal, "action": action,
                 "batches_skipped": batches_skipped}
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        print(f"recovery: step {step}: {signal} -> {action}", file=sys.stderr)


class Diverged(Exception):
    """The ladder is exhausted: the run stops with EXIT_DIVERGED."""


class DivergenceLadder:
    """Turns the per-step anomaly codes into skip, rollback or stop decisions."""

    def __init__(self, cfg: DivergenceConfig, log: RecoveryLog):
        self.cfg, self.log = cfg, log
        self.consecutive, self.rollbacks = 0, 0

    def observe(self, step: int, anomaly: int) -> str | None:
        """None, "rollback" or "rollback_lower_lr"; raises Diverged at the top of the ladder."""
        if anomaly == divergence.HEALTHY:
            self.consecutive = 0
            return None
        self.log.record(step, divergence.SIGNALS[anomaly], "skipped_update")
        self.consecutive += 1
        if self.consecutive < self.cfg.max_consecutive_skips:
            return None
        self.consecutive, self.rollbacks = 0, self.rollbacks + 1
        if self.rollbacks > self.cfg.max_rollbacks:
            self.log.record(step, divergence.SIGNALS[anomaly], "stopped_diverged")
            raise Diverged(f"diverged at step {step}: {self.cfg.max_rollbacks} rollbacks did "
                           "not help")
        return "rollback" if self.rollbacks == 1 else "rollback_lower_lr"
