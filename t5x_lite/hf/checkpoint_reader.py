"""A run's checkpoint, read for export: its step, its record and its params, by layer.

The params are restored with orbax into an abstract target placed on a mesh over
all local devices, sharded as training shards them (`embed` over `fsdp`), so the
full model lives only in device memory, spread over the devices. The host then
copies out one tensor or one layer at a time (`to_host`; `layer_layout` finds a
layer in the scanned or unscanned layout). The checkpoint may have been written
from any mesh; orbax reshards on restore.
"""

import dataclasses

import jax
import numpy as np
import orbax.checkpoint as ocp

from t5x_lite import storage
from t5x_lite.checkpoints import manager as checkpointing
from t5x_lite.parallel import partitioning
from t5x_lite.errors import ConfigError
from t5x_lite.checkpoints.record import CheckpointRecord
from t5x_lite.models import family as family_lib
from t5x_lite.models.spec import ModelSpec


@dataclasses.dataclass(frozen=True)
class RunCheckpoint:
    """One step of a run: where it is, its record and its model config."""

    model_dir: str
    step: int
    step_dir: str
    record: CheckpointRecord
    cfg: object

    @property
    def family(self) -> family_lib.ModelFamily:
        return family_lib.by_name(self.record.family)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__


def locate(model_dir: str, step: int | None = None) -> RunCheckpoint:
    """The checkpoint `step` (default: the newest) of the run in `model_dir`."""
    directory = storage.join(model_dir, "checkpoints")
    steps = ocp.utils.checkpoint_steps(str(directory)) if directory.is_dir() else []
    if not steps:
        raise ConfigError(f"no checkpoint found in {directory}; point --model_dir at the "
                          "MODEL_DIR of a training run.")
    if step is None:
        step = max(steps)
    elif step not in steps:
        raise ConfigError(f"{directory} has no step {step}; it has steps {sorted(steps)}.")
    step_dir = str(directory / str(step))
    record = CheckpointRecord.from_json(read_meta(step_dir))
    return RunCheckpoint(str(storage.path(model_dir)), step, step_dir, record,
                         model_config(record, step_dir))


def read_meta(step_dir: str) -> dict:
    path = storage.join(step_dir, "meta")
    try:
        return ocp.JsonCheckpointHandler().restore(path)
    except Exception as error:  # noqa: BLE001  (any read failure means "unreadable")
        raise ConfigError(f"the checkpoint record {path} is unreadable ({_one_line(error)}); "
                          "choose another --step.") from None


def model_config(record: CheckpointRecord, step_dir: str):
    """The model config the checkpoint was written with (its layer layout included), in
    its family's config type."""
    if not record.model_config:
        raise ConfigError(f"{step_dir} records no model config; it was not written by "
                          "t5x_lite's trainer.")
    return record.model_config_of(family_lib.by_name(record.family).config_type)


def restore_sharded_params(checkpoint: RunCheckpoint, mesh=None,
                           param_rules=partitioning.DEFAULT_PARAM_RULES) -> dict:
    """The params as jax Arrays sharded over `mesh` (default: all local devices on the
    fsdp axis) by `param_rules`; nothing is gathered on the host."""
    spec = ModelSpec.create(checkpoint.cfg)
    abstract = jax.eval_shape(lambda: spec.init_params(0))
    mesh = mesh or partitioning.create_mesh((1, -1, 1))
    shardings = partitioning.tree_shardings(spec.logical_axes, abstract, mesh, param_rules)
    try:
        return checkpointing.restore_params(checkpoint.step_dir, abstract, shardings)
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001  (any read failure means "unreadable")
        raise ConfigError(f"checkpoint {checkpoint.step_dir} is unreadable "
                          f"({_one_line(error)}); choose another --step.") from None


def to_host(tree) -> dict:
    """A small subtree copied to host memory as numpy arrays."""
    return jax.tree.map(np.asarray, jax.device_get(tree))

