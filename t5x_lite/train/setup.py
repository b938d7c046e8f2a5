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
from t5x_lite.models.decoder.config import DecoderConfig
from t5x_lite.train.state import ModelSpec, state_shardings


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    """Everything the train step is built from, for one mesh."""

    cfg: DecoderConfig
    spec: ModelSpec
    mesh: Mesh
    schedule: object
    optimizer: object
    abstract: dict
    shardings: dict
    batch_sharding: NamedSharding
    activation_rules: tuple
    global_batch_size: int
    sequence_length: int
    num_microbatches: int
    faults: FaultInjector
    divergence: DivergenceConfig

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.sequence_length

    def train_step(self):
        """The jitted train step (steps.make_train_step); call under `activation_sharding`."""
        return steps.make_train_step(
            self.spec, self.optimizer, self.schedule, self.shardings, self.batch_sharding,
            self.num_microbatches, self.faults, self.divergence)


def resolve_vocab(model_config: DecoderConfig, mixture_or_task_name: str) -> DecoderConfig:
    """The model config with its vocabulary size; asks the task only when the config has none."""
    if model_config.vocab_size is not None:
        return model_config
    from t5x_lite.pipeline import input_pipeline
    vocab = input_pipeline.output_vocabulary(mixture_or_task_name)
    return model_config.with_vocab(vocab.vocab_size)


def build_setup(model_config: DecoderConfig, data, num_microbatches: int,
                mesh: Mesh) -> TrainSetup:
    """Spec, optimizer (gin), shardings and abstract state of `model_config` on `mesh`."""
    cfg = resolve_vocab(model_config, data.mixture_or_task_name)
    param_rules, activation_rules = partitioning.axis_rules()
    schedule = optim.create_schedule()
    optimizer = optim.create_optimizer(schedule)
    spec = ModelSpec.create(cfg)
    abstract, shardings = state_shardings(spec, optimizer, mesh, param_rules)
    batch_sharding = partitioning.named_sharding(
        ("batch", "length"), (data.global_batch_size, data.sequence_length), mesh,
        activation_rules)
    return TrainSetup(cfg, spec, mesh, schedule, optimizer, abstract, shardings,
                      batch_sharding, activation_rules, data.global_batch_size,
                      data.sequence_length, num_microbatches, FaultInjector(),
                      DivergenceConfig())


def check_batch_layout(setup: TrainSetup) -> None:
    """The batch's rows, and each microbatch's, must split evenly over the devices that the
    activation rules shard `batch` over (data x fsdp by default); where they do not, the
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
