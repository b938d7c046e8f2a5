"""The Llama-compatible decoder-only language model (Flax NNX).

With `scan_layers` the blocks are stored stacked (leading `layers` axis) and run
under `jax.lax.scan`, so compile time stays flat in depth; otherwise they are
separate modules `layer_0 ... layer_{L-1}` run in a Python loop.

`Decoder.decode` is the cached inference path: it runs T new tokens against a
`KVCache` (keys and values of every layer, stacked along a leading layers axis
in both layouts) and returns the logits and the updated cache.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_lite.models import layer_stack
from t5x_lite.models.decoder.config import DecoderConfig
from t5x_lite.models.decoder.layers import DecoderBlock, RMSNorm, attention_mask, param
from t5x_lite.parallel.partitioning import constrain


class KVCache(NamedTuple):
    """Rotated keys and values of every layer, in S preallocated slots per row."""

    k_LBSKH: jax.Array
    v_LBSKH: jax.Array


def init_cache(cfg: DecoderConfig, batch: int, length: int) -> KVCache:
    """An all-zero cache of `length` slots for `batch` rows, in the compute dtype."""
    shape = (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)
    zeros_LBSKH = jnp.zeros(shape, cfg.compute_dtype)
    return KVCache(zeros_LBSKH, zeros_LBSKH)


class Decoder(nnx.Module):
    def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs):
        if cfg.vocab_size is None:
            raise ValueError("Decoder needs a resolved vocab_size (DecoderConfig.with_vocab).")
        self.cfg = cfg
        V, D = cfg.vocab_size, cfg.embed_dim
        self.embed_VD = param(rngs, (V, D), ("vocab", "embed"), cfg.init_std)
        for name, block_type, count in self.stacks():
            if cfg.scan_layers:
                setattr(self, name, layer_stack.stacked_blocks(
                    lambda block_rngs, make=block_type: make(cfg, block_rngs), count, rngs))
        if not cfg.scan_layers:
            for i in range(cfg.num_layers):
                setattr(self, f"layer_{i}", self.block_type_of(i)(cfg, rngs))
        self.final_norm = RMSNorm(D, cfg.norm_eps)
        if not cfg.tie_embeddings:
            self.lm_head_DV = param(rngs, (D, V), ("embed", "vocab"), cfg.init_std)

    def stacks(self) -> list[tuple[str, type, int]]:
        """(attribute, block type, layers) of each stack of blocks, in depth order; every
        block type has `decode` with DecoderBlock's signature. Scanned, each stack is one
        stacked module; unscanned, the blocks are `layer_0 ... layer_{L-1}` throughout."""
        return [("blocks", DecoderBlock, self.cfg.num_layers)]

    def block_type_of(self, layer: int) -> type:
        for _, block_type, count in self.stacks():
            if layer < count:
                return block_type
            layer -= count
        raise IndexError(layer)

    def __call__(self, input_tokens_BT, positions_BT, segment_ids_BT) -> jax.Array:
        """Float32 logits [B, T, V] for the next token at every position."""
        cfg = self.cfg
        x_BTD = self._embed(input_tokens_BT)
        mask_B1TS = attention_mask(segment_ids_BT)
        if cfg.scan_layers:
            x_BTD = layer_stack.run_scanned(self.blocks, x_BTD, cfg.remat_policy, positions_BT,
                                            mask_B1TS)
        else:
            for i in range(cfg.num_layers):
                block = layer_stack.remat(getattr(self, f"layer_{i}"), cfg.remat_policy)
                x_BTD = block(x_BTD, positions_BT, mask_B1TS)
        return self._logits(x_BTD)

    def decode(self, tokens_BT, positions_BT, mask_B1TS, cache: KVCache, index):
        """Runs T new tokens, written at cache slots [index, index + T).

        `mask_B1TS` says which of the S cache slots each new token attends to.
        Returns (float32 logits [B, V] for the token after the last new one,
        updated cache).
        """
        x_BTD = self._embed(tokens_BT)
        if self.cfg.scan_layers:
            x_BTD, cache = self._decode_scanned(x_BTD, positions_BT, mask_B1TS, cache, index)
        else:
            k_LBSKH, v_LBSKH = cache
            for i in range(self.cfg.num_layers):
                x_BTD, k_BSKH, v_BSKH = getattr(self, f"layer_{i}").decode(
                    x_BTD, positions_BT, mask_B1TS, k_LBSKH[i], v_LBSKH[i], index)
                k_LBSKH, v_LBSKH = k_LBSKH.at[i].set(k_BSKH), v_LBSKH.at[i].set(v_BSKH)
            cache = KVCache(k_LBSKH, v_LBSKH)
        return self._logits(x_BTD[:, -1:])[:, 0], cache

    def _embed(self, tokens_BT):
        x_BTD = jnp.take(self.embed_VD[...], tokens_BT, axis=0).astype(self.cfg.compute_dtype)
        return constrain(x_BTD, ("batch", "length", "embed"))

    def _logits(self, x_BTD):
        cfg = self.cfg
        x_BTD = self.final_norm(x_BTD)
        head_DV = self.embed_VD[...].T if cfg.tie_embeddings else self.lm_head_DV[...]
        logits_BTV = jnp.einsum("BTD,DV->BTV", x_BTD, head_DV.astype(cfg.compute_dtype))
        return constrain(logits_BTV.astype(jnp.float32), ("batch", "length", "vocab"))

    def _decode_scanned(self, x_BTD, positions_BT, mask_B1TS, cache: KVCache, index):
        """Each stack in turn, over its own layers' slice of the cache."""
        k_caches, v_caches, start = [], [], 0
        for name, _, count in self.stacks():
            graphdef, stacked_state = nnx.split(getattr(self, name))

            def body(carry_BTD, layer, graphdef=graphdef):
                layer_state, k_BSKH, v_BSKH = layer
                block = nnx.merge(graphdef, layer_state)
                carry_BTD, k_BSKH, v_BSKH = block.decode(
                    carry_BTD, positions_BT, mask_B1TS, k_BSKH, v_BSKH, index)
                return carry_BTD, (k_BSKH, v_BSKH)

            layers = (stacked_state, cache.k_LBSKH[start:start + count],
                      cache.v_LBSKH[start:start + count])
            x_BTD, (k_LBSKH, v_LBSKH) = jax.lax.scan(body, x_BTD, layers)
            k_caches.append(k_LBSKH)
            v_caches.append(v_LBSKH)
            start += count
        if len(k_caches) == 1:
            return x_BTD, KVCache(k_caches[0], v_caches[0])
        return x_BTD, KVCache(jnp.concatenate(k_caches), jnp.concatenate(v_caches))
