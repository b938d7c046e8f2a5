"""Goodput: where a run's wall-clock time goes.

Time between consecutive steps (outside `spend` blocks) is booked to the step: `compile`
for the first one, `redone` for steps an earlier attempt had already reached before it
died (its progress since the last checkpoint was lost), `productive` otherwise. A
divergence rollback moves the time of the undone steps from `productive` to
`rolled_back`. `spend` books `init`, `restore`, `checkpointing` and `evaluation`;
`other` is the remainder. Each run appends one JSON line to MODEL_DIR/goodput.jsonl
and prints a summary.
"""

import collections
import contextlib
import sys
import time

from t5x_lite import storage

STEP_CATEGORIES = ("compile", "productive", "redone")
CATEGORIES = ("init", "restore", *STEP_CATEGORIES, "rolled_back", "checkpointing",
              "evaluation", "other")


class Goodput:
    def __init__(self):
        self.started = self._mark = time.perf_counter()
        self.seconds: collections.Counter = collections.Counter()
        self.steps: collections.Counter = collections.Counter()
        self._in_blocks = 0.0  # seconds inside `spend` since the last mark
        self._productive_at: dict[int, float] = {}  # checkpointed step -> productive seconds
        self.first_step = self.last_step = None
        self._all_blocks = 0.0

    @contextlib.contextmanager
    def spend(self, category: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[category] += elapsed
            self._in_blocks += elapsed
            self._all_blocks += elapsed

    def start_steps(self, step: int) -> None:
        """Everything so far that no `spend` block claimed was initialization."""
        self.seconds["init"] += self._since_mark()
        self._productive_at[step] = self.seconds["productive"]
        self.first_step = self.last_step = step

    def step(self, step: int, redo_until: int) -> None:
        """Books the time since the previous step to step `step`."""
        category = ("compile" if self.steps.total() == 0 else
                    "redone" if step <= redo_until else "productive")
        self.seconds[category] += self._since_mark()
        self.steps[category] += 1
        self.last_step = step

    def checkpointed(self, step: int) -> None:
        self._productive_at[step] = self.seconds["productive"]

    def roll_back(self, from_step: int, to_step: int) -> None:
        """The steps after `to_step` up to `from_step` are undone."""
        undone = self.seconds["productive"] - self._productive_at.get(to_step, 0.0)
        self.seconds["productive"] -= undone
        self.seconds["rolled_back"] += undone
        self.steps["rolled_back"] += from_step - to_step
        self.last_step = to_step

    def outside_blocks(self) -> float:
        """Seconds since the start not spent in `spend` blocks: the clock of tokens/s."""
        return time.perf_counter() - self.started - self._all_blocks

    def summary(self) -> dict:
        wall = time.perf_counter() - self.started
        seconds = {c: self.seconds[c] for c in CATEGORIES if c != "other"}
        seconds["other"] = max(wall - sum(seconds.values()), 0.0)
        return {"first_step": self.first_step, "last_step": self.last_step,
                "wall_seconds": round(wall, 3), "goodput": seconds["productive"] / wall,
                "seconds": {c: round(v, 3) for c, v in seconds.items()},
                "steps": {c: self.steps[c] for c in (*STEP_CATEGORIES, "rolled_back")}}

    def write(self, model_dir: storage.PathLike) -> None:
        """Appends the summary to MODEL_DIR/goodput.jsonl (process 0) and prints it."""
        summary = self.summary()
        storage.JsonlAppender(storage.join(model_dir, "goodput.jsonl")).append(summary)
        parts = ", ".join(f"{c} {v:.1f} s" for c, v in summary["seconds"].items() if v >= 0.05)
        print(f"goodput: {100 * summary['goodput']:.1f}% of {summary['wall_seconds']:.1f} s "
              f"productive ({parts})", file=sys.stderr)

    def _since_mark(self) -> float:
        now = time.perf_counter()
        elapsed = now - self._mark - self._in_blocks
        self._mark, self._in_blocks = now, 0.0
        return max(elapsed, 0.0)
