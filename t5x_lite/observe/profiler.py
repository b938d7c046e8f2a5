"""A jax.profiler trace of a window of train steps, for TensorBoard's profile plugin
or Perfetto: MODEL_DIR/profile/plugins/profile/<run>/<host>.xplane.pb.

The profiler writes through TensorFlow's file system layer, not the run's storage
client, so a run on an object store traces to a local directory and copies the trace
into MODEL_DIR when it ends."""

import dataclasses
import shutil
import tempfile

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
        self.destination = storage.join(model_dir, "profile")
        self.last_step = cfg.first_step + cfg.num_steps - 1
        self.log_dir = str(self.destination)

    def before_step(self, step: int) -> None:
        """Called before `step` is dispatched."""
        if self.cfg.num_steps > 0 and step == self.cfg.first_step:
            if storage.is_uri(self.destination):
                self.log_dir = tempfile.mkdtemp(prefix="t5x_lite-profile-")
            jax.profiler.start_trace(self.log_dir)
            self.active = True

    def after_step(self, step: int, outputs) -> None:
        """Called once `step` is dispatched; ends the trace when the step has finished."""
        if self.active and step == self.last_step:
            jax.block_until_ready(outputs)
            self.close()

    def close(self) -> None:
        if not self.active:
            return
        jax.profiler.stop_trace()
        self.active = False
        if self.log_dir != str(self.destination):
            storage.copy_tree(self.log_dir, self.destination)
            shutil.rmtree(self.log_dir, ignore_errors=True)
