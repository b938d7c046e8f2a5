"""Ahead-of-time compilation of the real train step from the gin config, without params.

The state is abstract (`jax.ShapeDtypeStruct`s carrying their shardings), so a model
of any size lowers and compiles on a host that could never hold it; the step is
`steps.make_train_step` itself, so what is analysed is what trains.
"""

import dataclasses
import inspect
import math
import time

import gin
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from t5x_lite.models import family as family_lib
from t5x_lite.parallel import partitioning
from t5x_lite.train import setup as train_setup
from t5x_lite.train.setup import TrainSetup

# Macros the trainer requires that do not change the compiled step: the caller binds
# them where its config leaves them unset (`gin_config.bind_unset_macros`).
PLACEHOLDER_MACROS = {"TRAIN_STEPS": 10000}


def train_bindings() -> dict:
    """The arguments `trainer.train` would get from the parsed gin config."""
    from t5x_lite.train import trainer
    defaults = {name: parameter.default for name, parameter in
                inspect.signature(trainer.train).parameters.items()}
    bindings = {**defaults, **gin.get_bindings("train")}
    if bindings["model_config"] is None:
        bindings["model_config"] = family_lib.default_config()
    return bindings


def build_setup(bindings: dict, mesh: Mesh) -> TrainSetup:
    """The trainer's setup for the `train` bindings (see `train_bindings`) on `mesh`."""
    return train_setup.build_setup(bindings["model_config"], bindings["data"],
                                   bindings["num_microbatches"], mesh)


def setup_from_gin(mesh: Mesh) -> TrainSetup:
    """The trainer's setup for the gin config the caller parsed, on `mesh`."""
    return build_setup(train_bindings(), mesh)


def abstract_arguments(setup: TrainSetup) -> tuple:
    """(state, batch, position) as ShapeDtypeStructs with the train step's shardings."""
    state = jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(
        leaf.shape, leaf.dtype, sharding=sharding), setup.abstract, setup.shardings)
    batch = {key: jax.ShapeDtypeStruct((setup.global_batch_size, feature.length),
                                       jnp.dtype(feature.dtype),
                                       sharding=setup.batch_shardings[key])
             for key, feature in setup.features.items()}
    position = jax.ShapeDtypeStruct((), jnp.int32, sharding=partitioning.replicated(setup.mesh))
    return state, batch, position


@dataclasses.dataclass(frozen=True)
class CompiledStep:
    compiled: jax.stages.Compiled
    lower_seconds: float
    compile_seconds: float


def compile_train_step(setup: TrainSetup) -> CompiledStep:
    """Lowers and compiles the trainer's train step for the abstract arguments."""
    with partitioning.activation_sharding(setup.mesh, setup.activation_rules):
        train_step = setup.train_step()
        start = time.perf_counter()
        lowered = train_step.lower(*abstract_arguments(setup))
        lowered_at = time.perf_counter()
        compiled = lowered.compile()
    return CompiledStep(compiled, lowered_at - start, time.perf_counter() - lowered_at)


def per_device_bytes(abstract_tree, sharding_tree) -> int:
    """Bytes one device holds of a sharded tree (its largest shard per leaf)."""
    leaves = jax.tree.leaves(abstract_tree)
    shardings = jax.tree.leaves(sharding_tree,
                                is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    return sum(math.prod(sharding.shard_shape(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
               for leaf, sharding in zip(leaves, shardings, strict=True))


def state_bytes(setup: TrainSetup) -> dict:
    """Per-device bytes of params and optimizer state, from the shardings' shard shapes."""
    return {"params": per_device_bytes(setup.abstract["params"], setup.shardings["params"]),
            "optimizer": per_device_bytes(setup.abstract["opt_state"],
                                          setup.shardings["opt_state"])}
