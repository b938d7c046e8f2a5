"""Loss-divergence detection inside the jitted step.

The health state (a window of recent healthy losses and gradient norms, and the
learning-rate scale set by recovery) lives in the train state, so it is
checkpointed and a resumed run judges steps exactly as an uninterrupted one.
A step is anomalous when its loss or gradient norm is not finite, or when either
exceeds both mean + `z_threshold` x std and `min_ratio` x mean of the window.
"""

import dataclasses

import gin
import jax
import jax.numpy as jnp

HEALTHY, NON_FINITE, LOSS_SPIKE, GRAD_NORM_SPIKE = 0, 1, 2, 3
SIGNALS = {NON_FINITE: "non_finite_loss_or_gradients", LOSS_SPIKE: "loss_spike",
           GRAD_NORM_SPIKE: "grad_norm_spike"}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DivergenceConfig:
    """Detection (in the step) and the escalation ladder (on the host).

    Ladder: every anomalous step is skipped; after `max_consecutive_skips` in a row the
    run rolls back to the newest checkpoint more than `rollback_margin` steps before the
    first anomalous step of the streak (a divergence builds up before it is detected) and
    skips `skip_batches` batches; from the second rollback on, the learning rate is also
    multiplied by `lr_factor`; after `max_rollbacks` rollbacks the run stops as diverged.
    `rollbacks_reset_after` healthy steps close an incident: the next one starts again at
    the first rollback.
    """

    window: int = 100
    min_history: int = 20
    z_threshold: float = 6.0
    min_ratio: float = 1.5
    max_consecutive_skips: int = 5
    skip_batches: int = 200
    lr_factor: float = 0.5
    max_rollbacks: int = 3
    rollback_margin: int = 100
    rollbacks_reset_after: int = 1000


def init_health(window: int) -> dict:
    return {"loss": jnp.zeros((window,), jnp.float32),
            "grad_norm": jnp.zeros((window,), jnp.float32),
            "count": jnp.zeros((), jnp.int32), "lr_scale": jnp.ones((), jnp.float32)}


def _spike(value, history, count, cfg: DivergenceConfig):
    filled = jnp.minimum(count, history.shape[0])
    valid = jnp.arange(history.shape[0]) < filled
    mean = jnp.sum(jnp.where(valid, history, 0.0)) / jnp.maximum(filled, 1)
    variance = jnp.sum(jnp.where(valid, (history - mean) ** 2, 0.0)) / jnp.maximum(filled, 1)
    above = (value > mean + cfg.z_threshold * jnp.sqrt(variance)) & (value > cfg.min_ratio * mean)
    return (filled >= cfg.min_history) & above


def assess(health: dict, loss, grad_norm, cfg: DivergenceConfig):
    """(anomaly code, health with this step's values added if it was healthy)."""
    anomaly = jnp.where(
        ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm)), NON_FINITE,
        jnp.where(_spike(loss, health["loss"], health["count"], cfg), LOSS_SPIKE,
                  jnp.where(_spike(grad_norm, health["grad_norm"], health["count"], cfg),
                            GRAD_NORM_SPIKE, HEALTHY))).astype(jnp.int32)
    healthy = anomaly == HEALTHY
    slot = health["count"] % health["loss"].shape[0]

    def push(history, value):
        return history.at[slot].set(jnp.where(healthy, value, history[slot]))

    return anomaly, {**health, "loss": push(health["loss"], loss),
                     "grad_norm": push(health["grad_norm"], grad_norm),
                     "count": health["count"] + healthy.astype(jnp.int32)}


def keep_if(healthy, new_tree, old_tree):
    return jax.tree.map(lambda new, old: jnp.where(healthy, new, old), new_tree, old_tree)
