"""Recovery from loss divergence on the host side: the escalation ladder, and the
record of every action in MODEL_DIR/recovery.jsonl plus a console line."""

import dataclasses
import sys

from t5x_lite import storage
from t5x_lite.resilience import divergence
from t5x_lite.resilience.divergence import DivergenceConfig


class RecoveryLog:
    """Appends one JSON object per action (process 0 only)."""

    def __init__(self, model_dir: storage.PathLike):
        self.jsonl = storage.JsonlAppender(storage.join(model_dir, "recovery.jsonl"))

    def record(self, step: int, signal: str, action: str, batches_skipped: int = 0) -> None:
        if not self.jsonl.enabled:
            return
        self.jsonl.append({"step": step, "signal": signal, "action": action,
                           "batches_skipped": batches_skipped})
        print(f"recovery: step {step}: {signal} -> {action}", file=sys.stderr)


class Diverged(Exception):
    """The ladder is exhausted: the run stops with EXIT_DIVERGED."""


@dataclasses.dataclass(frozen=True)
class Rollback:
    """Return to the newest checkpoint before step `before`, optionally lowering the LR."""

    before: int
    lower_lr: bool


class DivergenceLadder:
    """Turns the per-step anomaly codes into skip, rollback or stop decisions."""

    def __init__(self, cfg: DivergenceConfig, log: RecoveryLog):
        self.cfg, self.log = cfg, log
        self.consecutive, self.streak_start = 0, 0
        self.rollbacks, self.healthy_since_rollback = 0, 0

    @property
    def streak_open(self) -> bool:
        """True while the latest observed step was anomalous: no checkpoint is healthy now."""
        return self.consecutive > 0

    def observe(self, step: int, anomaly: int) -> Rollback | None:
        """A Rollback when the streak is long enough; raises Diverged at the top of the ladder."""
        if anomaly == divergence.HEALTHY:
            self.consecutive = 0
            self.healthy_since_rollback += 1
            if self.healthy_since_rollback >= self.cfg.rollbacks_reset_after:
                self.rollbacks = 0
            return None
        self.log.record(step, divergence.SIGNALS[anomaly], "skipped_update")
        if self.consecutive == 0:
            self.streak_start = step
        self.consecutive += 1
        if self.consecutive < self.cfg.max_consecutive_skips:
            return None
        self.consecutive, self.rollbacks, self.healthy_since_rollback = 0, self.rollbacks + 1, 0
        if self.rollbacks > self.cfg.max_rollbacks:
            self.log.record(step, divergence.SIGNALS[anomaly], "stopped_diverged")
            raise Diverged(f"diverged at step {step}: {self.cfg.max_rollbacks} rollbacks did "
                           "not help")
        return Rollback(before=self.streak_start - self.cfg.rollback_margin,
                        lower_lr=self.rollbacks > 1)
