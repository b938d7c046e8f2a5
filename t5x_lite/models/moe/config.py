"""Configuration of the mixture-of-experts family, bound from gin model files."""

import dataclasses

import gin

from t5x_lite.errors import ConfigError
from t5x_lite.models.decoder.config import DecoderConfig

ROUTERS = ("softmax", "sigmoid")
DISPATCHES = ("dropless", "capacity")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MoEConfig(DecoderConfig):
    """The dense decoder's shape (attention, norms, embeddings; `mlp_dim` is unused) with
    routed experts in place of every layer's MLP.

    Routing: `router` 'softmax' (Mixtral, Qwen3-MoE; `normalize_top_k` renormalizes the
    k chosen weights) or 'sigmoid' (DeepSeek V3: weights normalized over the k chosen).
    Router logits are float32. Balancing: the Switch auxiliary loss
    (`load_balance_loss` x E x sum over experts of token fraction x mean probability),
    and, with `bias_update_rate` > 0, DeepSeek V3's loss-free balancing: a per-expert
    bias added to the scores for selection only, moved each step by the rate towards
    the mean load. `router_z_loss` weighs the mean squared log-sum-exp of the logits.
    `num_shared_experts` experts of `expert_mlp_dim` see every token. The first
    `first_dense_layers` layers keep a dense MLP of `mlp_dim` (as DeepSeek's).

    Dispatch, on each device's own tokens: 'dropless' (tokens sorted by expert, grouped
    matmuls) or 'capacity' (buffers of capacity_factor x tokens x k / E slots per expert;
    assignments beyond a buffer are dropped: first choices before second choices, each
    in token order). On a mesh with an `expert` axis, `expert_all_to_all` sends the
    capacity buffers to the devices holding their experts and back (GShard's all-to-all);
    off, each device gathers every expert's weights, as the dropless dispatch always does.
    """

    first_dense_layers: int = 0
    num_experts: int = 8
    experts_per_token: int = 2
    expert_mlp_dim: int = 128
    num_shared_experts: int = 0
    router: str = "softmax"
    normalize_top_k: bool = True
    load_balance_loss: float = 0.01
    router_z_loss: float = 0.001
    bias_update_rate: float = 0.0
    dispatch: str = "dropless"
    capacity_factor: float = 1.25
    expert_all_to_all: bool = True

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.experts_per_token <= self.num_experts:
            raise ConfigError(
                f"MoEConfig: experts_per_token={self.experts_per_token} must be between 1 and "
                f"num_experts={self.num_experts}.")
        if not 0 <= self.first_dense_layers < self.num_layers:
            raise ConfigError(
                f"MoEConfig: first_dense_layers={self.first_dense_layers} must be at least 0 "
                f"and below num_layers={self.num_layers}.")
        if self.router not in ROUTERS:
            raise ConfigError(f"MoEConfig.router={self.router!r}: use one of {ROUTERS}.")
        if self.dispatch not in DISPATCHES:
            raise ConfigError(f"MoEConfig.dispatch={self.dispatch!r}: use one of {DISPATCHES}.")
        if self.capacity_factor <= 0 or self.bias_update_rate < 0:
            raise ConfigError(
                f"MoEConfig: capacity_factor={self.capacity_factor} must be positive and "
                f"bias_update_rate={self.bias_update_rate} at least 0.")

    @property
    def uses_router_bias(self) -> bool:
        return self.bias_update_rate > 0
