"""The mixture-of-experts decoder: the dense decoder's blocks with routed experts (and
optional shared experts) in place of the MLP, after `first_dense_layers` dense blocks.

`MoEDecoder.forward` gives the logits and each layer's routing statistics, stacked
along a leading layers axis ([L] scalars, [L, E] loads); decoding reuses the dense
decoder's cache path, with dropless dispatch (nothing is dropped at inference).
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_lite.models import layer_stack
from t5x_lite.models.decoder.layers import (MLP, Attention, DecoderBlock, RMSNorm,
                                            attention_mask)
from t5x_lite.models.decoder.model import Decoder
from t5x_lite.models.moe.config import MoEConfig
from t5x_lite.models.moe.experts import RoutedExperts
from t5x_lite.parallel.partitioning import constrain


class MoEBlock(nnx.Module):
    """Pre-norm block: x + attn(norm(x)), then x + experts(norm(x)) + shared(norm(x))."""

    def __init__(self, cfg: MoEConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.attn_norm = RMSNorm(cfg.embed_dim, cfg.norm_eps)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg.embed_dim, cfg.norm_eps)
        self.experts = RoutedExperts(cfg, rngs)
        if cfg.num_shared_experts:
            shared_width = cfg.num_shared_experts * cfg.expert_mlp_dim
            self.shared = MLP(dataclasses.replace(cfg, mlp_dim=shared_width), rngs)

    def __call__(self, x_BTD, positions_BT, mask_B1TS, valid_BT):
        x_BTD = x_BTD + self.attn(self.attn_norm(x_BTD), positions_BT, mask_B1TS)
        return self._ffn_residual(x_BTD, valid_BT, self.cfg.dispatch)

    def decode(self, x_BTD, positions_BT, mask_B1TS, k_BSKH, v_BSKH, index):
        """The block on T new tokens with this layer's KV cache (see Attention.decode)."""
        attn_BTD, k_BSKH, v_BSKH = self.attn.decode(
            self.attn_norm(x_BTD), positions_BT, mask_B1TS, k_BSKH, v_BSKH, index)
        valid_BT = jnp.ones(x_BTD.shape[:2], jnp.bool_)
        x_BTD, _ = self._ffn_residual(x_BTD + attn_BTD, valid_BT, "dropless")
        return x_BTD, k_BSKH, v_BSKH

    def _ffn_residual(self, x_BTD, valid_BT, dispatch: str):
        normed_BTD = self.mlp_norm(x_BTD)
        routed_BTD, stats = self.experts(normed_BTD, valid_BT, dispatch)
        x_BTD = x_BTD + routed_BTD
        if self.cfg.num_shared_experts:
            x_BTD = x_BTD + self.shared(normed_BTD)
        return constrain(x_BTD, ("batch", "length", "embed")), stats


class MoEDecoder(Decoder):
    def stacks(self) -> list[tuple[str, type, int]]:
        dense = self.cfg.first_dense_layers
        stacks = [("dense_blocks", DecoderBlock, dense),
                  ("blocks", MoEBlock, self.cfg.num_layers - dense)]
        return [stack for stack in stacks if stack[2]]

    def __call__(self, input_tokens_BT, positions_BT, segment_ids_BT) -> jax.Array:
        return self.forward(input_tokens_BT, positions_BT, segment_ids_BT)[0]

    def forward(self, input_tokens_BT, positions_BT, segment_ids_BT):
        """(float32 logits [B, T, V], routing statistics per layer)."""
        cfg = self.cfg
        x_BTD = self._embed(input_tokens_BT)
        mask_B1TS = attention_mask(segment_ids_BT)
        valid_BT = segment_ids_BT != 0

        def dense(block, carry_BTD):
            return block(carry_BTD, positions_BT, mask_B1TS), None

        def routed(block, carry_BTD):
            return block(carry_BTD, positions_BT, mask_B1TS, valid_BT)

        if cfg.scan_layers:
            for name, block_type, _ in self.stacks():
                apply = routed if block_type is MoEBlock else dense
                x_BTD, stats = layer_stack.run_scanned_with_outputs(
                    apply, getattr(self, name), x_BTD, cfg.remat_policy)
        else:
            per_layer = []
            for i in range(cfg.num_layers):
                apply = routed if i >= cfg.first_dense_layers else dense
                block = layer_stack.remat(getattr(self, f"layer_{i}"), cfg.remat_policy)
                x_BTD, layer_stats = apply(block, x_BTD)
                per_layer.append(layer_stats)
            stats = jax.tree.map(lambda *layers: jnp.stack(layers),
                                 *per_layer[cfg.first_dense_layers:])
        return self._logits(x_BTD), stats
