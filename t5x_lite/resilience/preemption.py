"""SIGTERM as a preemption notice: every process agrees on the step to stop at.

TPU VMs, Slurm and Kubernetes send SIGTERM before taking a machine away. The
handler only sets a flag; the loop asks `should_stop()` after each step, and with
several processes the flags are combined so that all stop at the same step.
"""

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class Preempted(Exception):
    """Raised after the checkpoint of the stopping step is committed."""

    def __init__(self, step: int):
        super().__init__(f"preempted: saved step {step}")
        self.step = step


class PreemptionWatch:
    """Installs a SIGTERM handler for the lifetime of a `with` block."""

    def __init__(self):
        self._requested = threading.Event()
        self._previous = None

    def __enter__(self) -> "PreemptionWatch":
        self._previous = signal.signal(signal.SIGTERM, lambda *_: self._requested.set())
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self._previous)

    def should_stop(self) -> bool:
        """True on every process once any process has received SIGTERM."""
        requested = self._requested.is_set()
        if jax.process_count() == 1:
            return requested
        flags = multihost_utils.process_allgather(np.int32(requested))
        return bool(np.any(flags))
