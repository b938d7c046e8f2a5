"""Deliberate faults, configured in gin, for recovery drills and tests."""

import dataclasses
import os
import signal
import threading

import gin
import jax
import jax.numpy as jnp

from t5x_lite import storage


@gin.configurable
@dataclasses.dataclass(frozen=True)
class FaultInjector:
    """`nan_loss_at_steps`: these (1-based) steps compute a NaN loss and NaN gradients.
    `lr_factor_at_steps`, `lr_factor`: these steps' updates are multiplied by the factor.
    `lr_ramp_steps=(first, last)`, `lr_ramp_factor`: a slowly growing learning rate; the
    updates of steps first..last are multiplied by a factor that grows geometrically from
    1 to `lr_ramp_factor`.
    These follow the data: after a rollback that skips batches they do not recur.
    The faults below fire once per model dir (and process): a restarted run goes on.
    `hang_at_step`: the host loop stops making progress after this step.
    `signal_at_step`, `signal_name`: the process signals itself after this step.
    `corrupt_checkpoint_at_step`: once this step's checkpoint is written, its files are
    truncated and overwritten with garbage, as a disk or network fault would leave them."""

    nan_loss_at_steps: tuple[int, ...] = ()
    lr_factor_at_steps: tuple[int, ...] = ()
    lr_factor: float = 1.0
    lr_ramp_steps: tuple[int, int] | None = None
    lr_ramp_factor: float = 1.0
    hang_at_step: int | None = None
    signal_at_step: int | None = None
    signal_name: str = "SIGKILL"
    corrupt_checkpoint_at_step: int | None = None

    def maybe_signal(self, step: int, model_dir: str) -> None:
        """Sends `signal_name` to this process after step `signal_at_step` (and after
        its checkpoint save has started, so a kill can land while the save is in flight)."""
        if step == self.signal_at_step and _first_time("signal", step, model_dir):
            os.kill(os.getpid(), getattr(signal, self.signal_name))

    def maybe_corrupt_checkpoint(self, step: int, model_dir: str, checkpointer) -> None:
        if step != self.corrupt_checkpoint_at_step:
            return
        checkpointer.wait()
        if (step in checkpointer.all_steps() and jax.process_index() == 0
                and _first_time("corrupt_checkpoint", step, model_dir)):
            corrupt_files(checkpointer.directory / str(step) / "state")

    def maybe_hang(self, step: int, model_dir: str) -> None:
        if step == self.hang_at_step and _first_time("hang", step, model_dir):
            threading.Event().wait()

    def loss_scale(self, position: jax.Array) -> jax.Array:
        """1.0, or NaN for the batch that step k of an uninterrupted run reads
        (data position k - 1), for k in `nan_loss_at_steps`."""
        return _at_steps(position, self.nan_loss_at_steps, jnp.nan)

    def update_scale(self, position: jax.Array) -> jax.Array:
        """1.0, or `lr_factor` for the batches of the steps in `lr_factor_at_steps`, times
        the ramp's factor for the batches of the steps in `lr_ramp_steps`."""
        return _at_steps(position, self.lr_factor_at_steps, self.lr_factor) * self._ramp(position)

    def _ramp(self, position: jax.Array) -> jax.Array:
        if self.lr_ramp_steps is None:
            return jnp.ones((), jnp.float32)
        first, last = self.lr_ramp_steps
        step = (position + 1).astype(jnp.float32)
        fraction = (step - first) / max(last - first, 1)
        inside = (step >= first) & (step <= last)
        return jnp.where(inside, jnp.float32(self.lr_ramp_factor) ** fraction, 1.0)


def _first_time(fault: str, step: int, model_dir: storage.PathLike) -> bool:
    """True the first time this process reaches this fault in this model dir."""
    marker = storage.join(model_dir, "faults_fired",
                          f"{fault}_at_step_{step}.process_{jax.process_index()}")
    if marker.exists():
        return False
    storage.write_atomic(marker, "")
    return True


def corrupt_files(directory: storage.PathLike) -> None:
    """Truncates every file under `directory` to a third and writes garbage at its start."""
    garbage = b"\xff\x00garbage"
    for file in storage.files_under(directory):
        content = file.read_bytes()
        file.write_bytes(garbage + content[len(garbage):max(len(content) // 3, 1)])


def _at_steps(position: jax.Array, steps: tuple[int, ...], value: float) -> jax.Array:
    if not steps:
        return jnp.ones((), jnp.float32)
    hit = jnp.isin(position + 1, jnp.asarray(steps, jnp.int32))
    return jnp.where(hit, value, 1.0).astype(jnp.float32)
