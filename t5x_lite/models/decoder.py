"""The Llama-compatible decoder-only language model (Flax NNX).

With `scan_layers` the blocks are stored stacked (leading `layers` axis) and run
under `jax.lax.scan`, so compile time stays flat in depth; otherwise they are
separate modules `layer_0 ... layer_{L-1}` run in a Python loop.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_lite.models.config import REMAT_POLICIES, DecoderConfig
from t5x_lite.models.layers import DecoderBlock, RMSNorm, attention_mask, param
from t5x_lite.partitioning import constrain


def _stacked_blocks(cfg: DecoderConfig, rngs: nnx.Rngs) -> DecoderBlock:
    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=cfg.num_layers)
    def make(block_rngs):
        return DecoderBlock(cfg, block_rngs)

    blocks = make(rngs)
    for _, variable in nnx.iter_graph(blocks):
        if isinstance(variable, nnx.Param):
            axes = variable.get_metadata()["logical_axes"]
            variable.set_metadata(logical_axes=("layers", *axes))
    return blocks


class Decoder(nnx.Module):
    def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs):
        if cfg.vocab_size is None:
            raise ValueError("Decoder needs a resolved vocab_size (DecoderConfig.with_vocab).")
        self.cfg = cfg
        V, D = cfg.vocab_size, cfg.embed_dim
        self.embed_VD = param(rngs, (V, D), ("vocab", "embed"), cfg.init_std)
        if cfg.scan_layers:
            self.blocks = _stacked_blocks(cfg, rngs)
        else:
            for i in range(cfg.num_layers):
                setattr(self, f"layer_{i}", DecoderBlock(cfg, rngs))
        self.final_norm = RMSNorm(D, cfg.norm_eps)
        if not cfg.tie_embeddings:
            self.lm_head_DV = param(rngs, (D, V), ("embed", "vocab"), cfg.init_std)

    def __call__(self, input_tokens_BT, positions_BT, segment_ids_BT) -> jax.Array:
        """Float32 logits [B, T, V] for the next token at every position."""
        cfg = self.cfg
        x_BTD = jnp.take(self.embed_VD[...], input_tokens_BT, axis=0).astype(cfg.compute_dtype)
        x_BTD = constrain(x_BTD, ("batch", "length", "embed"))
        mask_B1TS = attention_mask(segment_ids_BT)
        if cfg.scan_layers:
            x_BTD = self._run_scanned(x_BTD, positions_BT, mask_B1TS)
        else:
            for i in range(cfg.num_layers):
                x_BTD = self._remat(getattr(self, f"layer_{i}"))(x_BTD, positions_BT, mask_B1TS)
        x_BTD = self.final_norm(x_BTD)
        head_DV = self.embed_VD[...].T if cfg.tie_embeddings else self.lm_head_DV[...]
        logits_BTV = jnp.einsum("BTD,DV->BTV", x_BTD, head_DV.astype(cfg.compute_dtype))
        return constrain(logits_BTV.astype(jnp.float32), ("batch", "length", "vocab"))

    def _remat(self, fn):
        """`fn` (a block or the scan body) under the configured rematerialization policy."""
        if self.cfg.remat_policy == "none":
            return fn
        policy = REMAT_POLICIES[self.cfg.remat_policy]
        return nnx.remat(fn, policy=policy) if isinstance(fn, nnx.Module) else jax.checkpoint(
            fn, policy=policy)

    def _run_scanned(self, x_BTD, positions_BT, mask_B1TS):
        graphdef, stacked_state = nnx.split(self.blocks)

        def body(carry_BTD, layer_state):
            block = nnx.merge(graphdef, layer_state)
            return block(carry_BTD, positions_BT, mask_B1TS), None

        x_BTD, _ = jax.lax.scan(self._remat(body), x_BTD, stacked_state)
        return x_BTD
