"""Routed experts: the router, the two dispatches, and what a step reports of them.

Shape letters: N tokens (batch x length, flattened), D embed, E experts, K experts per
token, F expert width, A = N x K assignments (token, choice), C capacity per expert.
Expert weights carry the `experts` logical axis, so an `expert` mesh axis shards them
at rest. Dispatch runs on each device's own tokens (its share of the batch, as GShard's
groups). The dropless dispatch gathers every expert's weights to each device, as FSDP
gathers a layer's weights, so its tokens never leave their device (XLA:CPU has no ragged
all-to-all to test the exchange with). The capacity dispatch sends its fixed-size
buffers by all-to-all across the `expert` mesh axis to the devices holding those experts'
weights, and back (or, with `expert_all_to_all` off, gathers weights as dropless does).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_lite.models.decoder.layers import param
from t5x_lite.models.moe.config import MoEConfig
from t5x_lite.parallel.partitioning import map_batch_shards


class Routing(NamedTuple):
    expert_NK: jax.Array  # int32: the experts each token goes to, best first
    weight_NK: jax.Array  # float32: their weights in the token's output
    probs_NE: jax.Array   # float32: the router's distribution (the auxiliary loss's P)
    logits_NE: jax.Array  # float32


class Router(nnx.Module):
    def __init__(self, cfg: MoEConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        D, E = cfg.embed_dim, cfg.num_experts
        self.router_DE = param(rngs, (D, E), ("embed", None), cfg.init_std)
        if cfg.uses_router_bias:
            # Set by the trainer from the observed load, never by gradients.
            self.router_bias_E = nnx.Param(jnp.zeros((E,), jnp.float32), logical_axes=(None,))

    def __call__(self, x_ND: jax.Array) -> Routing:
        cfg = self.cfg
        logits_NE = jnp.einsum("ND,DE->NE", x_ND.astype(jnp.float32), self.router_DE[...])
        if cfg.router == "softmax":
            scores_NE = jax.nn.softmax(logits_NE, axis=-1)
            probs_NE = scores_NE
        else:
            scores_NE = jax.nn.sigmoid(logits_NE)
            probs_NE = scores_NE / jnp.sum(scores_NE, axis=-1, keepdims=True)
        selection_NE = scores_NE
        if cfg.uses_router_bias:
            selection_NE = selection_NE + jax.lax.stop_gradient(self.router_bias_E[...])
        _, expert_NK = jax.lax.top_k(selection_NE, cfg.experts_per_token)
        weight_NK = jnp.take_along_axis(scores_NE, expert_NK, axis=-1)
        if cfg.router == "sigmoid" or cfg.normalize_top_k:
            weight_NK = weight_NK / jnp.sum(weight_NK, axis=-1, keepdims=True)
        return Routing(expert_NK.astype(jnp.int32), weight_NK, probs_NE, logits_NE)


class ExpertWeights(NamedTuple):
    gate_EDF: jax.Array
    up_EDF: jax.Array
    down_EFD: jax.Array


class RoutedExperts(nnx.Module):
    """E gated (SwiGLU) MLPs of width F and the router that picks K of them per token."""

    def __init__(self, cfg: MoEConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        E, D, F = cfg.num_experts, cfg.embed_dim, cfg.expert_mlp_dim
        out_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5
        self.router = Router(cfg, rngs)
        self.gate_EDF = param(rngs, (E, D, F), ("experts", "embed", "mlp"), cfg.init_std)
        self.up_EDF = param(rngs, (E, D, F), ("experts", "embed", "mlp"), cfg.init_std)
        self.down_EFD = param(rngs, (E, F, D), ("experts", "mlp", "embed"), out_std)

    def __call__(self, x_BTD: jax.Array, valid_BT: jax.Array, dispatch: str):
        """(output [B, T, D], this layer's statistics; see `statistics`). Tokens where
        `valid_BT` is False (padding) take no capacity and count in no statistic."""
        B, T, D = x_BTD.shape
        x_ND, valid_N = x_BTD.reshape(B * T, D), valid_BT.reshape(B * T)
        routing = self.router(x_ND)
        dtype = self.cfg.compute_dtype
        weights = ExpertWeights(*(w[...].astype(dtype) for w in
                                  (self.gate_EDF, self.up_EDF, self.down_EFD)))
        cfg = self.cfg

        def dispatch_local(x_ND, expert_NK, weight_NK, valid_N, *weights, mesh_axis):
            weights = ExpertWeights(*weights)
            if dispatch == "dropless":
                return (dropless(x_ND, expert_NK, weight_NK, weights),
                        jnp.ones_like(expert_NK, jnp.bool_))
            capacity = expert_capacity(x_ND.shape[0], cfg)
            return with_capacity(x_ND, expert_NK, weight_NK, weights, capacity, valid_N,
                                 mesh_axis)

        # Each device sorts and buffers its own tokens (its data shard, as GShard's groups);
        # capacity buffers may go by all-to-all to the devices that hold their experts.
        exchange = dispatch == "capacity" and cfg.expert_all_to_all
        out_ND, kept_NK = map_batch_shards(
            dispatch_local, (x_ND, routing.expert_NK, routing.weight_NK, valid_N), weights,
            shared_axis="experts" if exchange else None)
        stats = statistics(routing, kept_NK, valid_N, self.cfg.num_experts)
        return out_ND.reshape(B, T, D).astype(x_BTD.dtype), stats


def _expert_mlp_ragged(x_AD, group_sizes_E, weights: ExpertWeights):
    gate_AF = jax.lax.ragged_dot(x_AD, weights.gate_EDF, group_sizes_E)
    up_AF = jax.lax.ragged_dot(x_AD, weights.up_EDF, group_sizes_E)
    return jax.lax.ragged_dot(jax.nn.silu(gate_AF) * up_AF, weights.down_EFD, group_sizes_E)


def dropless(x_ND, expert_NK, weight_NK, weights: ExpertWeights) -> jax.Array:
    """Every assignment computed: assignments sorted by expert, one grouped matmul per
    weight, outputs weighted and summed back per token."""
    N, K = expert_NK.shape
    E = weights.gate_EDF.shape[0]
    expert_A = expert_NK.reshape(N * K)
    order_A = jnp.argsort(expert_A, stable=True)
    token_A = order_A // K
    group_sizes_E = jnp.bincount(expert_A, length=E).astype(jnp.int32)
    y_AD = _expert_mlp_ragged(x_ND[token_A], group_sizes_E, weights)
    y_AD = y_AD * weight_NK.reshape(N * K)[order_A][:, None].astype(y_AD.dtype)
    return jnp.zeros_like(x_ND).at[token_A].add(y_AD)


def expert_capacity(num_tokens: int, cfg: MoEConfig) -> int:
    """Slots per expert buffer for `num_tokens` tokens (one device's): capacity_factor x
    the assignments an expert gets from them on average."""
    mean_load = num_tokens * cfg.experts_per_token / cfg.num_experts
    return max(1, int(-(-cfg.capacity_factor * mean_load // 1)))


def with_capacity(x_ND, expert_NK, weight_NK, weights: ExpertWeights, capacity: int,
                  valid_N, mesh_axis: str | None = None) -> tuple[jax.Array, jax.Array]:
    """Fixed buffers of `capacity` slots per expert. Assignments take slots in order of
    choice (all first choices, then all second choices, ...), each in token order; those
    past a full buffer, and padding, are dropped. With `mesh_axis`, `weights` hold this
    device's share of the experts along that axis, and the buffers go to and come back
    from the devices holding theirs by all-to-all. Returns (output, kept [N, K])."""
    N, K = expert_NK.shape
    E = weights.gate_EDF.shape[0] * (1 if mesh_axis is None else jax.lax.axis_size(mesh_axis))
    D = x_ND.shape[1]
    valid_KN = jnp.broadcast_to(valid_N[None, :], (K, N))
    one_hot_KNE = jax.nn.one_hot(expert_NK.T, E, dtype=jnp.int32) * valid_KN[..., None]
    slot_KNE = jnp.cumsum(one_hot_KNE.reshape(K * N, E), axis=0).reshape(K, N, E) - 1
    slot_KN = jnp.sum(slot_KNE * one_hot_KNE, axis=-1)
    kept_KN = valid_KN & (slot_KN < capacity)
    overflow = E * capacity  # One extra row that collects what is dropped.
    index_KN = jnp.where(kept_KN, expert_NK.T * capacity + slot_KN, overflow)
    x_KND = jnp.broadcast_to(x_ND[None], (K, N, D))
    buffer_ED = jnp.zeros((overflow + 1, D), x_ND.dtype).at[index_KN.reshape(-1)].set(
        x_KND.reshape(K * N, D))
    buffer_ECD = buffer_ED[:overflow].reshape(E, capacity, D)
    if mesh_axis is None:
        out_ECD = _expert_mlp_dense(buffer_ECD, weights)
    else:  # [E, C] here -> [E / ep, ep x C] there: this device's experts, every sender's rows.
        there = jax.lax.all_to_all(buffer_ECD, mesh_axis, 0, 1, tiled=True)
        out_ECD = jax.lax.all_to_all(_expert_mlp_dense(there, weights), mesh_axis, 1, 0,
                                     tiled=True)
    rows_ED = jnp.concatenate([out_ECD.reshape(overflow, D), jnp.zeros((1, D), x_ND.dtype)])
    y_KND = rows_ED[index_KN] * weight_NK.T[..., None].astype(x_ND.dtype)
    return jnp.sum(y_KND, axis=0), kept_KN.T


def _expert_mlp_dense(x_ECD, weights: ExpertWeights):
    gate_ECF = jnp.einsum("ECD,EDF->ECF", x_ECD, weights.gate_EDF)
    up_ECF = jnp.einsum("ECD,EDF->ECF", x_ECD, weights.up_EDF)
    return jnp.einsum("ECF,EFD->ECD", jax.nn.silu(gate_ECF) * up_ECF, weights.down_EFD)


def statistics(routing: Routing, kept_NK, valid_N, num_experts: int) -> dict[str, jax.Array]:
    """One layer's float32 statistics over its valid tokens: `load_E` (assignments each
    expert received), `dropped` (assignments dropped), `tokens`, and the means of the
    Switch balancing loss, the router z-loss and the router entropy."""
    valid = valid_N.astype(jnp.float32)
    tokens = jnp.maximum(jnp.sum(valid), 1.0)
    chosen_NE = jnp.sum(jax.nn.one_hot(routing.expert_NK, num_experts), axis=1) * valid[:, None]
    load_E = jnp.sum(chosen_NE, axis=0)
    fraction_E = load_E / (tokens * routing.expert_NK.shape[1])
    mean_prob_E = jnp.sum(routing.probs_NE * valid[:, None], axis=0) / tokens
    log_z_N = jax.nn.logsumexp(routing.logits_NE, axis=-1)
    entropy_N = -jnp.sum(routing.probs_NE * jnp.log(routing.probs_NE + 1e-9), axis=-1)
    return {"load_E": load_E,
            "dropped": jnp.sum((~kept_NK) * valid[:, None]),
            "tokens": tokens,
            "load_balance": num_experts * jnp.sum(fraction_E * mean_prob_E),
            "router_z": jnp.sum(log_z_N**2 * valid) / tokens,
            "entropy": jnp.sum(entropy_N * valid) / tokens}
