"""What the train step is built from: model spec, optimizer, shardings and abstract state.

The trainer builds one to train, and `aot` one to compile the same step ahead of time
for a mesh the host does not have.
"""

import dataclasses
import math

from jax.sharding import Mesh, NamedSharding

from t5x_lite.parallel import partitioning
from t5x_lite.train import optim, steps
from t5x_lite.resilience.divergence import DivergenceConfig
from t5x_lite.errors import ConfigError
from t5x_lite.resilience.faults import FaultInjector
from t5x_lite.models.family import FeatureSpec
from t5x_lite.models.spec import ModelSpec
from t5x_lite.train.state import state_shardings


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    """Everything the train step is built from, for one mesh."""

    spec: ModelSpec
    mesh: Mesh
    schedule: object
    optimizer: object
    abstract: dict
    shardings: dict
    features: dict[str, FeatureSpec]
    batch_shardings: dict[str, NamedSharding]
    activation_rules: tuple
    global_batch_size: int
    task_feature_lengths: dict[str, int]
    num_microbatches: int
    faults: FaultInjector
    divergence: DivergenceConfig

    @property
    def cfg(self):
        return self.spec.cfg

    @property
    def sequence_length(self) -> int:
        """Tokens one batch row counts."""
        return self.spec.family.tokens_per_row(self.task_feature_lengths)

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.sequence_length

    @property
    def flops_per_token(self) -> float:
        return self.spec.family.flops_per_token(self.cfg, self.task_feature_lengths)

    def train_step(self):
        """The jitted train step (steps.make_train_step); call under `activation_sharding`."""
        return steps.make_train_step(
            self.spec, self.optimizer, self.schedule, self.shardings, self.batch_shardings,
            self.num_microbatches, self.faults, self.divergence)

    def eval_step(self):
        return steps.make_eval_step(self.spec, self.shardings["params"], self.batch_shardings)


def batch_shardings(features: dict[str, FeatureSpec], global_batch_size: int, mesh: Mesh,
                    activation_rules) -> dict[str, NamedSharding]:
    """One sharding per batch feature, from its logical axes."""
    return {key: partitioning.named_sharding(
        feature.logical_axes, (global_batch_size, feature.length), mesh, activation_rules)
        for key, feature in features.items()}


def build_setup(model_config, data, num_microbatches: int, mesh: Mesh) -> TrainSetup:
    """Spec, optimizer (gin), shardings and abstract state of `model_config` on `mesh`."""
    from t5x_lite.pipeline import input_pipeline
    cfg = input_pipeline.resolve_vocab(model_config, data.mixture_or_task_name)
    spec = ModelSpec.create(cfg)
    param_rules, activation_rules = partitioning.axis_rules()
    schedule = optim.create_schedule()
    optimizer = optim.create_optimizer(schedule, model_no_decay=spec.family.no_decay(cfg))
    abstract, shardings = state_shardings(spec, optimizer, mesh, param_rules)
    lengths = dict(data.task_feature_lengths)
    features = spec.family.features(cfg, lengths)
    return TrainSetup(spec, mesh, schedule, optimizer, abstract, shardings, features,
                      batch_shardings(features, data.global_batch_size, mesh, activation_rules),
                      activation_rules, data.global_batch_size, lengths, num_microbatches,
                      FaultInjector(), DivergenceConfig())


def check_batch_layout(setup: TrainSetup) -> None:
    """The batch's rows, and each microbatch's, must split evenly over the devices that the
    activation rules shard `batch` over (data x fsdp x expert by default); where they do not, the
    batch would silently be replicated on every device instead."""
    axes = partitioning.logical_axis_sizes("batch", setup.mesh, setup.activation_rules)
    devices, rows, micro = math.prod(axes.values()), setup.global_batch_size, setup.num_microbatches
    if micro < 1:
        raise ConfigError(f"train.num_microbatches={micro} must be at least 1.")
    if rows % (devices * micro) == 0:
        return
    mesh = " x ".join(f"{axis} {size}" for axis, size in axes.items())
    if micro == 1:
        raise ConfigError(
            f"BATCH_SIZE={rows} does not split evenly over the {devices} data-parallel devices "
            f"of the mesh ({mesh}): set BATCH_SIZE to a multiple of {devices}, or change the "
            "mesh (MESH_SHAPE, DCN_MESH_SHAPE).")
    raise ConfigError(
        f"BATCH_SIZE={rows} in train.num_microbatches={micro} microbatches does not split each "
        f"microbatch evenly over the {devices} data-parallel devices of the mesh ({mesh}): set "
        f"BATCH_SIZE to a multiple of {devices * micro} ({devices} devices x {micro} "
        "microbatches), or change train.num_microbatches or the mesh (MESH_SHAPE, "
        "DCN_MESH_SHAPE).")
