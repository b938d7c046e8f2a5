"""Optimizers and learning-rate schedules, all from optax, chosen in gin."""

from collections.abc import Sequence

import gin
import jax
import optax

from t5x_lite.errors import ConfigError

SCHEDULES = ("cosine", "linear", "rsqrt", "constant")


@gin.configurable
def create_schedule(kind: str = "cosine", peak_value: float = 1e-3, warmup_steps: int = 100,
                    decay_steps: int = gin.REQUIRED, end_value: float = 1e-4) -> optax.Schedule:
    """Linear warmup from 0 to `peak_value`, then `kind` decay until `decay_steps`.

    rsqrt is T5's: peak * sqrt(warmup / step) after warmup.
    """
    warmup = optax.linear_schedule(0.0, peak_value, max(warmup_steps, 1))
    after = max(decay_steps - warmup_steps, 1)
    if kind == "cosine":
        decay = optax.cosine_decay_schedule(peak_value, after, alpha=end_value / peak_value)
    elif kind == "linear":
        decay = optax.linear_schedule(peak_value, end_value, after)
    elif kind == "rsqrt":
        def decay(count):
            return peak_value * jax.lax.rsqrt((count + max(warmup_steps, 1)) / max(warmup_steps, 1))
    elif kind == "constant":
        decay = optax.constant_schedule(peak_value)
    else:
        raise ConfigError(f"create_schedule.kind={kind!r}: use one of {SCHEDULES}.")
    return optax.join_schedules([warmup, decay], [warmup_steps])


def decay_mask(params, exclude: Sequence[str]):
    """True for matrices whose path names none of `exclude`; vectors never decay."""
    def decays(path, leaf):
        names = [str(getattr(key, "key", key)) for key in path]
        return leaf.ndim >= 2 and not any(part in names for part in exclude)
    return jax.tree_util.tree_map_with_path(decays, params)


@gin.configurable(denylist=["model_no_decay"])
def create_optimizer(schedule: optax.Schedule, name: str = "adamw", b1: float = 0.9,
                     b2: float = 0.95, eps: float = 1e-8, weight_decay: float = 0.1,
                     decay_exclude: Sequence[str] | None = None,
                     clip_norm: float | None = 1.0,
                     model_no_decay: Sequence[str] = ()) -> optax.GradientTransformation:
    """AdamW or Adafactor behind global-norm clipping, with a weight-decay mask.

    `decay_exclude` names parameters that never decay; None takes the model family's
    `model_no_decay` (the decoder's embedding table).
    """
    exclude = model_no_decay if decay_exclude is None else decay_exclude
    mask = lambda params: decay_mask(params, exclude)  # noqa: E731
    if name == "adamw":
        core = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)
    elif name == "adafactor":
        core = optax.adafactor(schedule, weight_decay_rate=weight_decay or None,
                               weight_decay_mask=mask)
    else:
        raise ConfigError(f"create_optimizer.name={name!r}: use 'adamw' or 'adafactor'.")
    if clip_norm is None:
        return core
    return optax.chain(optax.clip_by_global_norm(clip_norm), core)
