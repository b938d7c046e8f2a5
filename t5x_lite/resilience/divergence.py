"""Loss-divergence detection inside the jitted step.

Loss and gradient norm are tracked in log space, so changes are judged as ratios: per
signal, a moving mean over about `horizon` accepted steps (a baseline that follows a
falling loss, a warmup or a new task) and the step-to-step noise, the moving mean of
squared differences between consecutive values over about `noise_horizon` steps (a trend
does not inflate it, as it would a variance around a lagging mean). A step's z-score is
its distance above the mean in units of the noise. A step is anomalous when:

- its loss or gradient norm is not finite;
- its loss spikes: z above `loss_z` and loss above `loss_ratio` x the mean;
- its gradient norm spikes (z above `grad_norm_z`, ratio above `grad_norm_ratio`) while
  its loss is raised too (z above `raised_loss_z`, ratio above `raised_loss_ratio`); a
  gradient-norm spike alone is healthy: in warmups and fine-tunes the norm jumps 10x from
  one step to the next while the loss goes on falling;
- its loss drifts: the moving mean, this step included, stands above its lowest value
  since `min_history` by `drift_z` x its own noise and by `drift_ratio`, which catches a
  divergence too slow for any single step to spike.

The statistics live in the train state, so a resumed run judges steps exactly as an
uninterrupted one would; anomalous steps do not enter them.
"""

import dataclasses
import math

import gin
import jax
import jax.numpy as jnp

HEALTHY, NON_FINITE, LOSS_SPIKE, GRAD_NORM_SPIKE, LOSS_DRIFT = 0, 1, 2, 3, 4
SIGNALS = {NON_FINITE: "non_finite_loss_or_gradients", LOSS_SPIKE: "loss_spike",
           GRAD_NORM_SPIKE: "grad_norm_spike", LOSS_DRIFT: "loss_drift"}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DivergenceConfig:
    """Detection (in the step) and the escalation ladder (on the host).

    Ladder: every anomalous step is skipped; after `max_consecutive_skips` in a row the
    run rolls back to the newest checkpoint more than `rollback_margin` steps before the
    first anomalous step of the streak (a divergence builds up before it is detected), or
    to the initial state while there is no checkpoint, and skips `skip_batches` batches;
    from the second rollback on, the learning rate is also multiplied by `lr_factor`;
    after `max_rollbacks` rollbacks the run stops as diverged. `rollbacks_reset_after`
    healthy steps close an incident: the next one starts again at the first rollback.
    """

    horizon: int = 10
    noise_horizon: int = 50
    min_history: int = 20
    loss_z: float = 6.0
    loss_ratio: float = 1.2
    grad_norm_z: float = 6.0
    grad_norm_ratio: float = 3.0
    raised_loss_z: float = 3.0
    raised_loss_ratio: float = 1.05
    drift_z: float = 8.0
    drift_ratio: float = 1.1
    max_consecutive_skips: int = 5
    skip_batches: int = 200
    lr_factor: float = 0.5
    max_rollbacks: int = 3
    rollback_margin: int = 100
    rollbacks_reset_after: int = 1000


def init_health() -> dict:
    def signal():
        return {"mean": jnp.zeros((), jnp.float32), "noise": jnp.zeros((), jnp.float32),
                "last": jnp.zeros((), jnp.float32)}
    return {"loss": signal(), "grad_norm": signal(),
            "lowest_loss_mean": jnp.zeros((), jnp.float32), "count": jnp.zeros((), jnp.int32),
            "lr_scale": jnp.ones((), jnp.float32)}


def _mean_rate(count, horizon: int):
    """A plain running average over the first `horizon` values, exponential after."""
    return jnp.maximum(1.0 / horizon, 1.0 / (count + 1).astype(jnp.float32))


def _with(signal: dict, log_value, count, cfg: "DivergenceConfig") -> dict:
    """The signal's statistics with one more accepted value."""
    mean = signal["mean"] + _mean_rate(count, cfg.horizon) * (log_value - signal["mean"])
    noise_rate = jnp.maximum(1.0 / cfg.noise_horizon, 1.0 / jnp.maximum(count, 1))
    squared_step = (log_value - signal["last"]) ** 2 / 2
    noise = (1.0 - noise_rate) * signal["noise"] + noise_rate * squared_step
    return {"mean": mean, "noise": jnp.where(count == 0, 0.0, noise), "last": log_value}


def _exceeds(distance, noise_std, z: float, ratio: float):
    return (distance > z * noise_std) & (distance > math.log(ratio))


def assess(health: dict, loss, grad_norm, cfg: DivergenceConfig):
    """(anomaly code, health with this step's values added if it was healthy)."""
    log_loss = jnp.log(loss.astype(jnp.float32))
    log_grad_norm = jnp.log(grad_norm.astype(jnp.float32))
    count, ready = health["count"], health["count"] >= cfg.min_history
    loss_stats, grad_stats = health["loss"], health["grad_norm"]
    loss_std = jnp.sqrt(loss_stats["noise"])
    loss_distance = log_loss - loss_stats["mean"]
    grad_norm_spike = _exceeds(
        log_grad_norm - grad_stats["mean"], jnp.sqrt(grad_stats["noise"]), cfg.grad_norm_z,
        cfg.grad_norm_ratio) & _exceeds(loss_distance, loss_std, cfg.raised_loss_z,
                                        cfg.raised_loss_ratio)
    new_loss = _with(loss_stats, log_loss, count, cfg)
    rate = _mean_rate(count, cfg.horizon)
    mean_std = jnp.sqrt(new_loss["noise"] * rate / (2.0 - rate))
    drift = _exceeds(new_loss["mean"] - health["lowest_loss_mean"], mean_std, cfg.drift_z,
                     cfg.drift_ratio)
    anomaly = jnp.select(
        [~(jnp.isfinite(loss) & jnp.isfinite(grad_norm)),
         ready & _exceeds(loss_distance, loss_std, cfg.loss_z, cfg.loss_ratio),
         ready & grad_norm_spike, ready & drift],
        [NON_FINITE, LOSS_SPIKE, GRAD_NORM_SPIKE, LOSS_DRIFT], HEALTHY).astype(jnp.int32)
    lowest = jnp.where(count + 1 == cfg.min_history, new_loss["mean"],
                       jnp.minimum(health["lowest_loss_mean"], new_loss["mean"]))
    updated = {"loss": new_loss, "grad_norm": _with(grad_stats, log_grad_norm, count, cfg),
               "lowest_loss_mean": jnp.where(count + 1 >= cfg.min_history, lowest, 0.0),
               "count": count + 1, "lr_scale": health["lr_scale"]}
    return anomaly, keep_if(anomaly == HEALTHY, updated, health)


def keep_if(healthy, new_tree, old_tree):
    return jax.tree.map(lambda new, old: jnp.where(healthy, new, old), new_tree, old_tree)
