"""The mixture-of-experts family: the decoder family's data, decoding and export shape,
with routed experts and their losses.

The loss adds to the cross-entropy, per target token, `load_balance_loss` x the Switch
balancing loss and `router_z_loss` x the router z-loss, each the mean over layers. The
step's metrics report them unweighted (`load_balance`: 1.0 when the load is even;
`router_z`), with the router entropy, the fraction of assignments dropped (capacity
dispatch) and the load imbalance (max / mean assignments per expert), overall (the
mean over layers) and per layer.
"""

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_lite.models import family as family_lib
from t5x_lite.models.decoder.family import DecoderFamily
from t5x_lite.models.losses import cross_entropy_sums
from t5x_lite.models.moe.config import MoEConfig
from t5x_lite.models.moe.model import MoEDecoder


class MoEFamily(DecoderFamily):
    name = "moe"
    config_type = MoEConfig

    def build(self, cfg: MoEConfig, rngs: nnx.Rngs) -> MoEDecoder:
        return MoEDecoder(cfg, rngs)

    def loss(self, cfg: MoEConfig, model: MoEDecoder, batch) -> family_lib.LossOutput:
        logits_BTV, stats = model.forward(batch["decoder_input_tokens"],
                                          batch["decoder_positions"],
                                          batch["decoder_segment_ids"])
        loss_sum, z_sum, weight_sum = cross_entropy_sums(
            logits_BTV, batch["decoder_target_tokens"], batch["decoder_loss_weights"],
            cfg.z_loss)
        balance, router_z = jnp.mean(stats["load_balance"]), jnp.mean(stats["router_z"])
        routing_loss = cfg.load_balance_loss * balance + cfg.router_z_loss * router_z
        per_token = {"load_balance": balance, "router_z": router_z, **_load_metrics(cfg, stats)}
        aux = {"z_loss": z_sum, **{name: value * weight_sum for name, value in per_token.items()}}
        return family_lib.LossOutput(loss_sum + routing_loss * weight_sum, weight_sum, aux,
                                     {"load_LE": stats["load_E"]})

    def after_step(self, cfg: MoEConfig, params: dict, state) -> dict:
        """Loss-free balancing (DeepSeek V3): each layer's router bias moves by
        `bias_update_rate` towards the experts that received fewer assignments than the
        layer's mean this step, away from those that received more."""
        if not cfg.uses_router_bias:
            return params
        step_LE = cfg.bias_update_rate * jnp.sign(
            jnp.mean(state["load_LE"], axis=-1, keepdims=True) - state["load_LE"])
        params = jax.tree.map(lambda x: x, params)  # a copy to update
        if cfg.scan_layers:
            router = params["blocks"]["experts"]["router"]
            router["router_bias_E"] = router["router_bias_E"] + step_LE
        else:
            for index, step_E in enumerate(step_LE):
                layer = cfg.first_dense_layers + index
                router = params[f"layer_{layer}"]["experts"]["router"]
                router["router_bias_E"] = router["router_bias_E"] + step_E
        return params

    def param_count(self, cfg: MoEConfig, *, active: bool = False) -> int:
        abstract = nnx.eval_shape(lambda: MoEDecoder(cfg, nnx.Rngs(0)))
        total = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(abstract)))
        if not active:
            return total
        idle_experts = cfg.num_experts - cfg.experts_per_token
        return total - _routed_layers(cfg) * idle_experts * 3 * cfg.embed_dim * cfg.expert_mlp_dim

    def flops_per_token(self, cfg: MoEConfig, task_lengths: Mapping[str, int]) -> float:
        """As the decoder's, with each routed layer's MLP replaced by what a token runs: its
        k experts, the shared experts and the router."""
        D, N, K, H = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        experts_run = cfg.experts_per_token + cfg.num_shared_experts
        attention = D * N * H * 2 + D * K * H * 2
        routed = experts_run * 3 * D * cfg.expert_mlp_dim + D * cfg.num_experts
        matmul_params = (cfg.num_layers * attention + cfg.first_dense_layers * 3 * D * cfg.mlp_dim
                         + _routed_layers(cfg) * routed + D * cfg.vocab_size)
        scores = 12 * cfg.num_layers * sum(task_lengths.values()) * N * H
        return 6 * matmul_params + scores

    def no_decay(self, cfg) -> tuple[str, ...]:
        return ("embed_VD", "router_bias_E")


def _routed_layers(cfg: MoEConfig) -> int:
    return cfg.num_layers - cfg.first_dense_layers


def _load_metrics(cfg: MoEConfig, stats) -> dict[str, jax.Array]:
    """Router entropy, dropped fraction and load imbalance (overall and per layer)."""
    load_LE = stats["load_E"]
    imbalance_L = jnp.max(load_LE, axis=-1) / jnp.maximum(jnp.mean(load_LE, axis=-1), 1e-9)
    assignments = jnp.sum(stats["tokens"]) * cfg.experts_per_token
    metrics = {"router_entropy": jnp.mean(stats["entropy"]),
               "dropped_fraction": jnp.sum(stats["dropped"]) / assignments,
               "load_imbalance": jnp.mean(imbalance_L)}
    for index in range(_routed_layers(cfg)):
        metrics[f"load_imbalance/layer_{cfg.first_dense_layers + index}"] = imbalance_L[index]
    return metrics


MOE = family_lib.register(MoEFamily())
