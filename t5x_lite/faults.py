"""Deliberate faults, configured in gin, for recovery drills and tests."""

import dataclasses
import os
import signal
import threading

import gin
import jax
import jax.numpy as jnp


@gin.configurable
@dataclasses.dataclass(frozen=True)
class FaultInjector:
    """`nan_loss_at_steps`: these (1-based) steps compute a NaN loss and NaN gradients.
    `hang_at_step`: the host loop stops making progress after this step.
    `signal_at_step`, `signal_name`: the process signals itself after this step."""

    nan_loss_at_steps: tuple[int, ...] = ()
    hang_at_step: int | None = None
    signal_at_step: int | None = None
    signal_name: str = "SIGKILL"

    def maybe_signal(self, step: int) -> None:
        """Sends `signal_name` to this process after step `signal_at_step` (and after
        its checkpoint save has started, so a kill can land while the save is in flight)."""
        if step == self.signal_at_step:
            os.kill(os.getpid(), getattr(signal, self.signal_name))

    def maybe_hang(self, step: int) -> None:
        if step == self.hang_at_step:
            threading.Event().wait()

    def loss_scale(self, step: jax.Array) -> jax.Array:
        """1.0, or NaN at an injected step (`step` is the 1-based step being computed)."""
        if not self.nan_loss_at_steps:
            return jnp.ones((), jnp.float32)
        hit = jnp.isin(step, jnp.asarray(self.nan_loss_at_steps, jnp.int32))
        return jnp.where(hit, jnp.nan, 1.0).astype(jnp.float32)
