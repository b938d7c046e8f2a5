"""Building blocks of the T5 v1.1 encoder-decoder: relative position buckets,
attention masks, multi-head attention with an additive bias, the gated-GELU
feed-forward, and the encoder and decoder blocks.

Shape letters: B batch, S encoder (key) length, T decoder (query) length,
D embed, N heads, H head dim, F mlp, V vocab, R relative-position buckets.
In a self-attention the key length S equals the query length T.
Params are float32; the math runs in the config's compute dtype, attention
logits and softmax in float32. As in T5, attention logits are not scaled by
1/sqrt(H) and there are no biases.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_lite.models.decoder.layers import RMSNorm, param
from t5x_lite.models.encdec.config import EncDecConfig
from t5x_lite.parallel.partitioning import constrain

# Added (not -inf) to masked logits, so a query that sees no key (padding)
# gets a uniform softmax instead of NaN.
MASKED_LOGIT = -1e9


def relative_position_bucket(relative_position, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:
    """T5's bucket (in [0, num_buckets)) of each `key_index - query_index`.

    Small distances get a bucket each; larger ones share logarithmically wider
    bins up to `max_distance`. Without `bidirectional`, keys after the query
    (positive offsets) all fall into bucket 0.
    """
    relative_position = jnp.asarray(relative_position, jnp.int32)
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).astype(jnp.int32) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    # max(distance, 1) only keeps log() finite where the exact bucket is taken.
    scaled = (jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact)
              / math.log(max_distance / max_exact) * (num_buckets - max_exact))
    large = jnp.minimum(max_exact + scaled.astype(jnp.int32), num_buckets - 1)
    return buckets + jnp.where(distance < max_exact, distance, large)


def relative_bias(table_RN: jax.Array, query_length: int, key_length: int,
                  bidirectional: bool, max_distance: int, query_offset=0) -> jax.Array:
    """Float32 position bias [1, N, T, S] from a bucket table, by index within the row.

    Queries sit at indices `query_offset + t` (an int or a traced scalar: new tokens of a
    cached decode), keys at 0 .. S - 1.
    """
    query_T = query_offset + jnp.arange(query_length)
    relative_TS = jnp.arange(key_length)[None, :] - query_T[:, None]
    buckets_TS = relative_position_bucket(relative_TS, bidirectional, table_RN.shape[0],
                                          max_distance)
    bias_TSN = jnp.take(table_RN.astype(jnp.float32), buckets_TS, axis=0)
    return jnp.transpose(bias_TSN, (2, 0, 1))[None]


def segment_mask(query_segments_BT: jax.Array, key_segments_BS: jax.Array) -> jax.Array:
    """[B, 1, T, S]: queries see keys of their own segment; segment 0 (padding) is never seen."""
    same_BTS = query_segments_BT[:, :, None] == key_segments_BS[:, None, :]
    return (same_BTS & (key_segments_BS[:, None, :] != 0))[:, None]


def causal_segment_mask(segments_BT: jax.Array) -> jax.Array:
    """[B, 1, T, T]: the segment mask, restricted to keys at or before the query."""
    length = segments_BT.shape[1]
    causal_TT = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))
    return segment_mask(segments_BT, segments_BT) & causal_TT


class Attention(nnx.Module):
    """Multi-head attention of queries from x over keys and values from kv."""

    def __init__(self, cfg: EncDecConfig, rngs: nnx.Rngs):
        D, N, H = cfg.embed_dim, cfg.num_heads, cfg.head_dim
        self.q_DNH = param(rngs, (D, N, H), ("embed", "heads", "head_dim"), (D * H) ** -0.5)
        self.k_DNH = param(rngs, (D, N, H), ("embed", "heads", "head_dim"), D**-0.5)
        self.v_DNH = param(rngs, (D, N, H), ("embed", "heads", "head_dim"), D**-0.5)
        self.o_NHD = param(rngs, (N, H, D), ("heads", "head_dim", "embed"), (N * H) ** -0.5)
        self.dtype = cfg.compute_dtype

    def __call__(self, x_BTD, kv_BSD, mask_B1TS, bias_1NTS=None):
        k_BSNH, v_BSNH = self.keys_values(kv_BSD)
        return self.attend(self.query(x_BTD), k_BSNH, v_BSNH, mask_B1TS, bias_1NTS)

    def query(self, x_BTD):
        return self._project(x_BTD, self.q_DNH)

    def keys_values(self, kv_BSD):
        """Keys and values [B, S, N, H] of the tokens in kv."""
        return self._project(kv_BSD, self.k_DNH), self._project(kv_BSD, self.v_DNH)

    def decode(self, x_BTD, k_BSNH, v_BSNH, index, mask_B1TS, bias_1NTS=None):
        """Self-attention of T new tokens over a cache of S slots.

        Their keys and values are written into the cache at slots [index, index + T)
        first; `mask_B1TS` says which slots each query sees. Returns (output, updated key
        cache, updated value cache).
        """
        new_k_BTNH, new_v_BTNH = self.keys_values(x_BTD)
        k_BSNH = _write_cache(k_BSNH, new_k_BTNH, index)
        v_BSNH = _write_cache(v_BSNH, new_v_BTNH, index)
        out_BTD = self.attend(self.query(x_BTD), k_BSNH, v_BSNH, mask_B1TS, bias_1NTS)
        return out_BTD, k_BSNH, v_BSNH

    def attend(self, q_BTNH, k_BSNH, v_BSNH, mask_B1TS, bias_1NTS=None):
        """The output [B, T, D] of queries over given keys and values."""
        logits_BNTS = jnp.einsum("BTNH,BSNH->BNTS", q_BTNH, k_BSNH,
                                 preferred_element_type=jnp.float32)
        if bias_1NTS is not None:
            logits_BNTS = logits_BNTS + bias_1NTS
        logits_BNTS = jnp.where(mask_B1TS, logits_BNTS, MASKED_LOGIT)
        probs_BNTS = jax.nn.softmax(logits_BNTS, axis=-1).astype(self.dtype)
        out_BTNH = jnp.einsum("BNTS,BSNH->BTNH", probs_BNTS, v_BSNH)
        out_BTNH = constrain(out_BTNH, ("batch", "length", "heads", "head_dim"))
        return jnp.einsum("BTNH,NHD->BTD", out_BTNH, self.o_NHD[...].astype(self.dtype))

    def _project(self, x_BTD, w_DNH):
        out_BTNH = jnp.einsum("BTD,DNH->BTNH", x_BTD, w_DNH[...].astype(self.dtype))
        return constrain(out_BTNH, ("batch", "length", "heads", "head_dim"))


def _write_cache(cache_BSNH, new_BTNH, index):
    """The cache with slots [index, index + T) replaced by the new keys or values."""
    cache_BSNH = jax.lax.dynamic_update_slice_in_dim(
        cache_BSNH, new_BTNH.astype(cache_BSNH.dtype), index, axis=1)
    return constrain(cache_BSNH, ("batch", "length", "heads", "head_dim"))


class GatedMLP(nnx.Module):
    """Gated GELU: wo(gelu_tanh(wi_0(x)) * wi_1(x))."""

    def __init__(self, cfg: EncDecConfig, rngs: nnx.Rngs):
        D, F = cfg.embed_dim, cfg.mlp_dim
        self.wi_0_DF = param(rngs, (D, F), ("embed", "mlp"), D**-0.5)
        self.wi_1_DF = param(rngs, (D, F), ("embed", "mlp"), D**-0.5)
        self.wo_FD = param(rngs, (F, D), ("mlp", "embed"), F**-0.5)
        self.dtype = cfg.compute_dtype

    def __call__(self, x_BTD):
        dtype = self.dtype
        gate_BTF = jnp.einsum("BTD,DF->BTF", x_BTD, self.wi_0_DF[...].astype(dtype))
        linear_BTF = jnp.einsum("BTD,DF->BTF", x_BTD, self.wi_1_DF[...].astype(dtype))
        hidden_BTF = jax.nn.gelu(gate_BTF, approximate=True) * linear_BTF
        hidden_BTF = constrain(hidden_BTF, ("batch", "length", "mlp"))
        return jnp.einsum("BTF,FD->BTD", hidden_BTF, self.wo_FD[...].astype(dtype))


class EncoderBlock(nnx.Module):
    """Pre-norm block: x + self_attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: EncDecConfig, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.embed_dim, cfg.norm_eps)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg.embed_dim, cfg.norm_eps)
        self.mlp = GatedMLP(cfg, rngs)

    def __call__(self, x_BSD, mask_B1SS, bias_1NSS):
        normed_BSD = self.attn_norm(x_BSD)
        x_BSD = x_BSD + self.attn(normed_BSD, normed_BSD, mask_B1SS, bias_1NSS)
        x_BSD = x_BSD + self.mlp(self.mlp_norm(x_BSD))
        return constrain(x_BSD, ("batch", "length", "embed"))


class DecoderBlock(nnx.Module):
    """Pre-norm block: causal self-attention, cross-attention over the encoder, MLP."""

    def __init__(self, cfg: EncDecConfig, rngs: nnx.Rngs):
        self.self_attn_norm = RMSNorm(cfg.embed_dim, cfg.norm_eps)
        self.self_attn = Attention(cfg, rngs)
        self.cross_attn_norm = RMSNorm(cfg.embed_dim, cfg.norm_eps)
        self.cross_attn = Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg.embed_dim, cfg.norm_eps)
        self.mlp = GatedMLP(cfg, rngs)

    def __call__(self, x_BTD, encoded_BSD, self_mask_B1TT, bias_1NTT, cross_mask_B1TS):
        normed_BTD = self.self_attn_norm(x_BTD)
        x_BTD = x_BTD + self.self_attn(normed_BTD, normed_BTD, self_mask_B1TT, bias_1NTT)
        x_BTD = x_BTD + self.cross_attn(self.cross_attn_norm(x_BTD), encoded_BSD,
                                        cross_mask_B1TS)
        x_BTD = x_BTD + self.mlp(self.mlp_norm(x_BTD))
        return constrain(x_BTD, ("batch", "length", "embed"))

    def cross_keys_values(self, encoded_BSD):
        """The cross-attention's keys and values [B, S, N, H] of the encoder output."""
        return self.cross_attn.keys_values(encoded_BSD)

    def decode(self, x_BTD, self_k_BTNH, self_v_BTNH, index, self_mask_B1TT, bias_1NTT,
               cross_k_BSNH, cross_v_BSNH, cross_mask_B1TS):
        """The block on T new tokens at cache slots [index, index + T): self-attention over
        this layer's cache, cross-attention over the precomputed encoder keys and values.
        Returns (output, updated self-attention key cache, value cache)."""
        attn_BTD, self_k_BTNH, self_v_BTNH = self.self_attn.decode(
            self.self_attn_norm(x_BTD), self_k_BTNH, self_v_BTNH, index, self_mask_B1TT,
            bias_1NTT)
        x_BTD = x_BTD + attn_BTD
        q_BTNH = self.cross_attn.query(self.cross_attn_norm(x_BTD))
        x_BTD = x_BTD + self.cross_attn.attend(q_BTNH, cross_k_BSNH, cross_v_BSNH,
                                               cross_mask_B1TS)
        x_BTD = x_BTD + self.mlp(self.mlp_norm(x_BTD))
        return constrain(x_BTD, ("batch", "length", "embed")), self_k_BTNH, self_v_BTNH
