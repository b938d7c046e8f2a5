"""A watchdog that ends a hung run: if no step completes in time, dump every
thread's stack and exit with EXIT_HUNG, so a supervisor can restart the job."""

import dataclasses
import faulthandler
import os
import statistics
import sys
import threading
import time

import gin

from t5x_lite.errors import EXIT_HUNG


@gin.configurable
@dataclasses.dataclass(frozen=True)
class WatchdogConfig:
    """Allowed gap between steps: max(`floor_seconds`, `factor` x median step time)."""

    enabled: bool = True
    factor: float = 20.0
    floor_seconds: float = 600.0
    poll_seconds: float = 1.0


class Watchdog:
    """Armed by the first `beat()`; a daemon thread checks the gap since the last one."""

    def __init__(self, cfg: WatchdogConfig):
        self.cfg = cfg
        self._beats: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)

    def __enter__(self) -> "Watchdog":
        if self.cfg.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def beat(self) -> None:
        self._beats = (self._beats + [time.monotonic()])[-101:]

    def allowed_gap(self) -> float:
        gaps = [b - a for a, b in zip(self._beats, self._beats[1:])]
        median = statistics.median(gaps) if gaps else 0.0
        return max(self.cfg.floor_seconds, self.cfg.factor * median)

    def _watch(self) -> None:
        while not self._stop.wait(self.cfg.poll_seconds):
            if not self._beats:
                continue
            waited = time.monotonic() - self._beats[-1]
            if waited > self.allowed_gap():
                print(f"watchdog: no step completed in {waited:.0f} s (allowed "
                      f"{self.allowed_gap():.0f} s); stacks of all threads follow",
                      file=sys.stderr, flush=True)
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                sys.stderr.flush()
                os._exit(EXIT_HUNG)
