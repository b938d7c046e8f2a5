"""The jitted train and eval steps.

Losses are summed over tokens and divided once by the batch's total target
weight, so gradient accumulation over microbatches (in float32) gives the same
update as one big batch.
"""

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from t5x_lite.resilience import divergence
from t5x_lite.resilience.divergence import DivergenceConfig
from t5x_lite.errors import ConfigError
from t5x_lite.resilience.faults import FaultInjector
from t5x_lite.parallel.partitioning import constrain
from t5x_lite.models.family import LossOutput
from t5x_lite.models.spec import ModelSpec


def split_microbatches(batch: dict, num_microbatches: int) -> dict:
    """[B, T] -> [M, B/M, T] taking every M-th row, so each device keeps its rows."""
    def split(x_BT):
        rows = x_BT.shape[0]
        if rows % num_microbatches:
            raise ConfigError(f"batch of {rows} rows does not split into {num_microbatches} "
                             "microbatches; make BATCH_SIZE a multiple of num_microbatches.")
        x_RMT = x_BT.reshape(rows // num_microbatches, num_microbatches, *x_BT.shape[1:])
        return jnp.swapaxes(x_RMT, 0, 1)
    return jax.tree.map(split, batch)


def _accumulated_grads(spec: ModelSpec, params, batch, num_microbatches: int):
    """(grads, LossOutput) summed over the batch's microbatches, in float32."""
    def loss_and_sums(p, b):
        sums = spec.loss(p, b)
        return sums.loss, sums

    value_and_grad = jax.value_and_grad(loss_and_sums, has_aux=True)
    if num_microbatches == 1:
        (_, sums), grads = value_and_grad(params, batch)
        return grads, sums

    def body(carry, microbatch):
        microbatch = jax.tree.map(lambda x: constrain(x, ("batch", "length")), microbatch)
        (_, sums), grads = value_and_grad(params, microbatch)
        grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
        return jax.tree.map(jnp.add, carry, (grads, sums)), None

    microbatches = split_microbatches(batch, num_microbatches)
    first = jax.tree.map(lambda x: x[0], microbatches)
    sums_shape = jax.eval_shape(lambda: value_and_grad(params, first)[0][1])
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), (params, sums_shape))
    totals, _ = jax.lax.scan(body, zeros, microbatches)
    return totals


def make_train_step(spec: ModelSpec, optimizer, schedule, state_shardings,
                    batch_shardings, num_microbatches: int = 1,
                    faults: FaultInjector = FaultInjector(),
                    divergence_cfg: DivergenceConfig = DivergenceConfig()):
    """jit(train_step)(state, batch, position) -> (state, metrics); the state is donated.

    `batch_shardings` holds one sharding per batch feature, or one for all of them.
    `position` is the index of `batch` in the data stream. An anomalous step (see
    divergence.py) leaves params and optimizer state untouched; the step still counts.
    """
    def train_step(state, batch, position):
        grads, sums = _accumulated_grads(spec, state["params"], batch, num_microbatches)
        scale = faults.loss_scale(position) / jnp.maximum(sums.weight, 1.0)
        grads = jax.tree.map(lambda g: g * scale, grads)
        loss, grad_norm = sums.loss * scale, optax.tree.norm(grads)
        anomaly, health = divergence.assess(state["health"], loss, grad_norm, divergence_cfg)
        healthy = anomaly == divergence.HEALTHY
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        update_scale = health["lr_scale"] * faults.update_scale(position)
        updates = jax.tree.map(lambda u: u * update_scale, updates)
        new_params = spec.after_step(optax.apply_updates(state["params"], updates), sums.state)
        new_state = {"step": state["step"] + 1, "health": health,
                     "params": divergence.keep_if(healthy, new_params, state["params"]),
                     "opt_state": divergence.keep_if(healthy, opt_state, state["opt_state"])}
        metrics = {"loss": loss, "grad_norm": grad_norm,
                   "learning_rate": schedule(state["step"]) * health["lr_scale"],
                   "target_tokens": sums.weight, "anomaly": anomaly,
                   "aux": {name: value * scale for name, value in sums.aux.items()}}
        return new_state, metrics

    replicated = NamedSharding(_mesh_of(batch_shardings), PartitionSpec())
    return jax.jit(train_step, in_shardings=(state_shardings, batch_shardings, replicated),
                   out_shardings=(state_shardings, None), donate_argnums=0)


def make_eval_step(spec: ModelSpec, param_shardings, batch_shardings):
    """jit(eval_step)(params, batch) -> (loss_sum, weight_sum)."""
    def eval_step(params, batch):
        sums = spec.loss(params, batch)
        return sums.loss, sums.weight

    return jax.jit(eval_step, in_shardings=(param_shardings, batch_shardings))


def _mesh_of(batch_shardings) -> jax.sharding.Mesh:
    return jax.tree.leaves(batch_shardings)[0].mesh
