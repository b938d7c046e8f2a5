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
from t5x_lite.models.losses import cross_entropy_sums
from t5x_lite.parallel.partitioning import constrain
from t5x_lite.train.state import ModelSpec


def _loss_sums(spec: ModelSpec, params, batch):
    logits_BTV = spec.logits(params, batch)
    loss_sum, z_sum, weight_sum = cross_entropy_sums(
        logits_BTV, batch["decoder_target_tokens"], batch["decoder_loss_weights"], spec.cfg.z_loss)
    return loss_sum, (z_sum, weight_sum)


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


def _accumulated_grads(spec, params, batch, num_microbatches: int):
    value_and_grad = jax.value_and_grad(lambda p, b: _loss_sums(spec, p, b), has_aux=True)
    if num_microbatches == 1:
        (loss_sum, (z_sum, weight_sum)), grads = value_and_grad(params, batch)
        return grads, loss_sum, z_sum, weight_sum

    def body(carry, microbatch):
        microbatch = jax.tree.map(lambda x: constrain(x, ("batch", "length")), microbatch)
        (loss_sum, (z_sum, weight_sum)), grads = value_and_grad(params, microbatch)
        grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
        return jax.tree.map(jnp.add, carry, (grads, loss_sum, z_sum, weight_sum)), None

    zeros = (jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
             jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    totals, _ = jax.lax.scan(body, zeros, split_microbatches(batch, num_microbatches))
    return totals


def make_train_step(spec: ModelSpec, optimizer, schedule, state_shardings,
                    batch_sharding: NamedSharding, num_microbatches: int = 1,
                    faults: FaultInjector = FaultInjector(),
                    divergence_cfg: DivergenceConfig = DivergenceConfig()):
    """jit(train_step)(state, batch, position) -> (state, metrics); the state is donated.

    `position` is the index of `batch` in the data stream. An anomalous step (see
    divergence.py) leaves params and optimizer state untouched; the step still counts.
    """
    def train_step(state, batch, position):
        grads, loss_sum, z_sum, weight_sum = _accumulated_grads(
            spec, state["params"], batch, num_microbatches)
        scale = faults.loss_scale(position) / jnp.maximum(weight_sum, 1.0)
        grads = jax.tree.map(lambda g: g * scale, grads)
        loss, grad_norm = loss_sum * scale, optax.tree.norm(grads)
        anomaly, health = divergence.assess(state["health"], loss, grad_norm, divergence_cfg)
        healthy = anomaly == divergence.HEALTHY
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        update_scale = health["lr_scale"] * faults.update_scale(position)
        updates = jax.tree.map(lambda u: u * update_scale, updates)
        new_state = {"step": state["step"] + 1, "health": health,
                     "params": divergence.keep_if(
                         healthy, optax.apply_updates(state["params"], updates), state["params"]),
                     "opt_state": divergence.keep_if(healthy, opt_state, state["opt_state"])}
        metrics = {"loss": loss, "z_loss": z_sum * scale, "grad_norm": grad_norm,
                   "learning_rate": schedule(state["step"]) * health["lr_scale"],
                   "target_tokens": weight_sum, "anomaly": anomaly}
        return new_state, metrics

    batch_shardings = {key: batch_sharding for key in BATCH_KEYS}
    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    return jax.jit(train_step, in_shardings=(state_shardings, batch_shardings, replicated),
                   out_shardings=(state_shardings, None), donate_argnums=0)


def make_eval_step(spec: ModelSpec, param_shardings, batch_sharding: NamedSharding):
    """jit(eval_step)(params, batch) -> (loss_sum, weight_sum)."""
    def eval_step(params, batch):
        loss_sum, (_, weight_sum) = _loss_sums(spec, params, batch)
        return loss_sum, weight_sum

    batch_shardings = {key: batch_sharding for key in BATCH_KEYS}
    return jax.jit(eval_step, in_shardings=(param_shardings, batch_shardings))


BATCH_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
              "decoder_segment_ids", "decoder_positions")
