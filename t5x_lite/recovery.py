"""The record of recovery actions: MODEL_DIR/recovery.jsonl plus a console line."""

import json
import os
import sys

import jax


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
