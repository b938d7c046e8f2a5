"""Token-level cross-entropy with optional z-loss, summed (not averaged) so that
microbatch sums add up to the full-batch loss exactly."""

import jax
import jax.numpy as jnp


def cross_entropy_sums(logits_BTV, targets_BT, weights_BT, z_loss: float):
    """Returns (sum of weighted loss incl. z-loss, sum of weighted z-loss, sum of weights)."""
    log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    weights_BT = weights_BT.astype(jnp.float32)
    z_term_BT = z_loss * jnp.square(log_z_BT)
    loss_BT = (log_z_BT - target_logit_BT) + z_term_BT
    return jnp.sum(loss_BT * weights_BT), jnp.sum(z_term_BT * weights_BT), jnp.sum(weights_BT)


def target_log_likelihood(logits_BTV, targets_BT, weights_BT):
    """Log-likelihood [B] of each row's targets: the weighted sum of their log-probs."""
    log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    weights_BT = weights_BT.astype(jnp.float32)
    return jnp.sum((target_logit_BT - log_z_BT) * weights_BT, axis=-1)
