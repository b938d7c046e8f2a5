"""The T5 v1.1 encoder-decoder (Flax NNX), numerically as Hugging Face's
`T5ForConditionalGeneration` with `feed_forward_proj="gated-gelu"`.

Shape letters: B batch, S encoder length, T decoder length, D embed, N heads,
V vocab, R relative-position buckets, L layers.

One token embedding [V, D] feeds both stacks. Each stack has one relative
position bias table [R, N], computed into a bias once and shared by all its
layers (bidirectional buckets in the encoder, causal in the decoder);
cross-attention has none. Segment ids keep packed examples apart in all three
attentions; segment 0 is padding and is never attended to.

With `scan_layers` the blocks of each stack are stored stacked (leading
`layers` axis) as `encoder_blocks` / `decoder_blocks` and run under
`jax.lax.scan`; otherwise they are separate modules `encoder_layer_{i}` /
`decoder_layer_{i}` run in a Python loop.

Cached prediction: `init_cache` encodes the input once and precomputes every decoder
layer's cross-attention keys and values of it; `decode` then runs new decoder tokens
against a `DecodeCache` (self-attention keys and values in preallocated slots, one per
decoder position; all per-layer arrays stacked along a leading layers axis in both
layouts) and returns the next-token logits and the updated cache.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_lite.models import layer_stack
from t5x_lite.models.decoder.layers import RMSNorm, param
from t5x_lite.models.encdec.config import EncDecConfig
from t5x_lite.models.encdec.layers import (DecoderBlock, EncoderBlock, causal_segment_mask,
                                           relative_bias, segment_mask)
from t5x_lite.parallel.partitioning import constrain


CACHE_AXES = ("layers", "batch", "length", "heads", "head_dim")


class DecodeCache(NamedTuple):
    """What a cached decode keeps between steps. The decoder's self-attention keys and
    values have one slot per decoder position (slot t holds position t); the
    cross-attention keys and values are those of the encoder output, computed once."""

    self_k_LBTNH: jax.Array
    self_v_LBTNH: jax.Array
    cross_k_LBSNH: jax.Array
    cross_v_LBSNH: jax.Array
    encoder_segment_ids_BS: jax.Array


class EncoderDecoder(nnx.Module):
    def __init__(self, cfg: EncDecConfig, rngs: nnx.Rngs):
        if cfg.vocab_size is None:
            raise ValueError(
                "EncoderDecoder needs a resolved vocab_size (EncDecConfig.with_vocab).")
        self.cfg = cfg
        V, D, N, R = cfg.vocab_size, cfg.embed_dim, cfg.num_heads, cfg.relative_buckets
        self.embed_VD = param(rngs, (V, D), ("vocab", "embed"), 1.0)
        self.encoder_relpos_RN = param(rngs, (R, N), ("relpos_buckets", "heads"), D**-0.5)
        self._build_stack("encoder", EncoderBlock, cfg.num_encoder_layers, rngs)
        self.encoder_norm = RMSNorm(D, cfg.norm_eps)
        self.decoder_relpos_RN = param(rngs, (R, N), ("relpos_buckets", "heads"), D**-0.5)
        self._build_stack("decoder", DecoderBlock, cfg.num_decoder_layers, rngs)
        self.decoder_norm = RMSNorm(D, cfg.norm_eps)
        if not cfg.tie_embeddings:
            self.lm_head_DV = param(rngs, (D, V), ("embed", "vocab"), D**-0.5)

    def __call__(self, encoder_tokens_BS, encoder_segment_ids_BS, decoder_input_tokens_BT,
                 decoder_segment_ids_BT) -> jax.Array:
        """Float32 logits [B, T, V] for the next target token at every decoder position."""
        encoded_BSD = self.encode(encoder_tokens_BS, encoder_segment_ids_BS)
        return self.decode_logits(encoded_BSD, encoder_segment_ids_BS, decoder_input_tokens_BT,
                                  decoder_segment_ids_BT)

    def encode(self, encoder_tokens_BS, encoder_segment_ids_BS) -> jax.Array:
        """The encoder's final-normed output [B, S, D], in the compute dtype."""
        length = encoder_tokens_BS.shape[1]
        x_BSD = self._embed(encoder_tokens_BS)
        mask_B1SS = segment_mask(encoder_segment_ids_BS, encoder_segment_ids_BS)
        bias_1NSS = relative_bias(self.encoder_relpos_RN[...], length, length,
                                  bidirectional=True, max_distance=self.cfg.relative_max_distance)
        x_BSD = self._run_stack("encoder", self.cfg.num_encoder_layers, x_BSD, mask_B1SS,
                                bias_1NSS)
        return constrain(self.encoder_norm(x_BSD), ("batch", "length", "embed"))

    def decode_logits(self, encoded_BSD, encoder_segment_ids_BS, decoder_input_tokens_BT,
                      decoder_segment_ids_BT) -> jax.Array:
        """Float32 logits [B, T, V] of the decoder over an encoded input."""
        length = decoder_input_tokens_BT.shape[1]
        y_BTD = self._embed(decoder_input_tokens_BT)
        self_mask_B1TT = causal_segment_mask(decoder_segment_ids_BT)
        cross_mask_B1TS = segment_mask(decoder_segment_ids_BT, encoder_segment_ids_BS)
        bias_1NTT = relative_bias(self.decoder_relpos_RN[...], length, length,
                                  bidirectional=False, max_distance=self.cfg.relative_max_distance)
        y_BTD = self._run_stack("decoder", self.cfg.num_decoder_layers, y_BTD, encoded_BSD,
                                self_mask_B1TT, bias_1NTT, cross_mask_B1TS)
        return self._logits(self.decoder_norm(y_BTD))

    def init_cache(self, encoder_tokens_BS, encoder_segment_ids_BS,
                   decode_length: int) -> DecodeCache:
        """Encodes the input and returns a fresh cache of `decode_length` decoder slots."""
        cfg = self.cfg
        encoded_BSD = self.encode(encoder_tokens_BS, encoder_segment_ids_BS)
        if cfg.scan_layers:
            graphdef, stacked_state = nnx.split(self.decoder_blocks)

            def body(_, layer_state):
                return None, nnx.merge(graphdef, layer_state).cross_keys_values(encoded_BSD)

            _, (cross_k_LBSNH, cross_v_LBSNH) = jax.lax.scan(body, None, stacked_state)
        else:
            per_layer = [getattr(self, f"decoder_layer_{i}").cross_keys_values(encoded_BSD)
                         for i in range(cfg.num_decoder_layers)]
            cross_k_LBSNH = jnp.stack([k for k, _ in per_layer])
            cross_v_LBSNH = jnp.stack([v for _, v in per_layer])
        shape = (cfg.num_decoder_layers, encoder_tokens_BS.shape[0], decode_length,
                 cfg.num_heads, cfg.head_dim)
        zeros_LBTNH = jnp.zeros(shape, cfg.compute_dtype)
        arrays = (zeros_LBTNH, zeros_LBTNH, cross_k_LBSNH, cross_v_LBSNH)
        return DecodeCache(*(constrain(x, CACHE_AXES) for x in arrays),
                           jnp.asarray(encoder_segment_ids_BS, jnp.int32))

    def decode(self, tokens_BT, cache: DecodeCache, index):
        """Runs T new decoder tokens at decoder positions (and cache slots)
        [index, index + T), each seeing the slots up to its own and the encoder's
        non-padding tokens. Returns (float32 logits [B, V] for the token after the last
        new one, updated cache)."""
        cfg = self.cfg
        length, num_slots = tokens_BT.shape[1], cache.self_k_LBTNH.shape[2]
        query_T = index + jnp.arange(length)
        self_mask_11TS = (jnp.arange(num_slots)[None, :] <= query_T[:, None])[None, None]
        cross_mask_B11S = (cache.encoder_segment_ids_BS != 0)[:, None, None, :]
        bias_1NTS = relative_bias(self.decoder_relpos_RN[...], length, num_slots,
                                  bidirectional=False, max_distance=cfg.relative_max_distance,
                                  query_offset=index)
        y_BTD = self._embed(tokens_BT)
        layer_arrays = (cache.self_k_LBTNH, cache.self_v_LBTNH, cache.cross_k_LBSNH,
                        cache.cross_v_LBSNH)

        def run_block(block, y_BTD, self_k, self_v, cross_k, cross_v):
            return block.decode(y_BTD, self_k, self_v, index, self_mask_11TS, bias_1NTS,
                                cross_k, cross_v, cross_mask_B11S)

        if cfg.scan_layers:
            graphdef, stacked_state = nnx.split(self.decoder_blocks)

            def body(carry_BTD, layer):
                layer_state, *arrays = layer
                carry_BTD, self_k, self_v = run_block(nnx.merge(graphdef, layer_state),
                                                      carry_BTD, *arrays)
                return carry_BTD, (self_k, self_v)

            y_BTD, (self_k_LBTNH, self_v_LBTNH) = jax.lax.scan(
                body, y_BTD, (stacked_state, *layer_arrays))
        else:
            self_k_LBTNH, self_v_LBTNH = cache.self_k_LBTNH, cache.self_v_LBTNH
            for i in range(cfg.num_decoder_layers):
                y_BTD, self_k, self_v = run_block(
                    getattr(self, f"decoder_layer_{i}"), y_BTD, self_k_LBTNH[i],
                    self_v_LBTNH[i], cache.cross_k_LBSNH[i], cache.cross_v_LBSNH[i])
                self_k_LBTNH = self_k_LBTNH.at[i].set(self_k)
                self_v_LBTNH = self_v_LBTNH.at[i].set(self_v)
        cache = cache._replace(self_k_LBTNH=constrain(self_k_LBTNH, CACHE_AXES),
                               self_v_LBTNH=constrain(self_v_LBTNH, CACHE_AXES))
        return self._logits(self.decoder_norm(y_BTD[:, -1:]))[:, 0], cache

    def _build_stack(self, prefix: str, block_cls, num_layers: int, rngs: nnx.Rngs):
        cfg = self.cfg
        if cfg.scan_layers:
            blocks = layer_stack.stacked_blocks(lambda block_rngs: block_cls(cfg, block_rngs),
                                                num_layers, rngs)
            setattr(self, f"{prefix}_blocks", blocks)
        else:
            for i in range(num_layers):
                setattr(self, f"{prefix}_layer_{i}", block_cls(cfg, rngs))

    def _embed(self, tokens_BT):
        x_BTD = jnp.take(self.embed_VD[...], tokens_BT, axis=0).astype(self.cfg.compute_dtype)
        return constrain(x_BTD, ("batch", "length", "embed"))

    def _logits(self, x_BTD):
        cfg = self.cfg
        if cfg.tie_embeddings:
            # T5 rescales before a head tied to the (unit-variance) embedding.
            x_BTD = x_BTD * jnp.asarray(cfg.embed_dim**-0.5, x_BTD.dtype)
            head_DV = self.embed_VD[...].T
        else:
            head_DV = self.lm_head_DV[...]
        logits_BTV = jnp.einsum("BTD,DV->BTV", x_BTD, head_DV.astype(cfg.compute_dtype))
        return constrain(logits_BTV.astype(jnp.float32), ("batch", "length", "vocab"))

    def _run_stack(self, prefix: str, num_layers: int, x_BTD, *block_args):
        """x through the blocks of one stack; `block_args` go to every block."""
        policy = self.cfg.remat_policy
        if self.cfg.scan_layers:
            return layer_stack.run_scanned(getattr(self, f"{prefix}_blocks"), x_BTD, policy,
                                           *block_args)
        for i in range(num_layers):
            block = layer_stack.remat(getattr(self, f"{prefix}_layer_{i}"), policy)
            x_BTD = block(x_BTD, *block_args)
        return x_BTD
