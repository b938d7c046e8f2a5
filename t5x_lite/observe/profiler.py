"""A jax.profiler trace of a window of train steps, for TensorBoard's profile plugin
or Perfetto: MODEL_DIR/profile/plugins/profile/<run>/<host>.xplane.pb."""

import dataclasses

import gin
import jax

from t5x_lite import storage


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ProfileConfig:
    """Trace steps `first_step` ... `first_step + num_steps - 1`; `num_steps=0` is off.

    Start after the first steps: step 1 holds the compilation.
    """

    first_step: int = 10
    num_steps: int = 0


class StepProfiler:
    def __init__(self, cfg: ProfileConfig, model_dir: storage.PathLike):
        self.cfg, self.active = cfg, False
        self.log_dir = str(storage.join(model_dir, "profile"))
        self.last_step = cfg.first_step + cfg.num_steps - 1

    def before_step(self, step: int) -> None:
        """Called before `step` is dispatched."""
        if self.cfg.num_steps > 0 and step == self.cfg.first_step:
            jax.profiler.start_trace(self.log_dir)
            self.active = True

    def after_step(self, step: int, outputs) -> None:
        """Called once `step` is dispatched; ends the trace when the step has finished."""
        if self.active and step == self.last_step:
            jax.block_until_ready(outputs)
            self.close()

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
