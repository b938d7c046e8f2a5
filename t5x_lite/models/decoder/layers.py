"""Building blocks of the Llama-style decoder: RMSNorm, rotary embeddings,
grouped-query attention and the SwiGLU MLP.

Shape letters: B batch, T query length, S key length, D embed, N query heads,
K key/value heads, G query heads per key/value head, H head dim, F mlp, V vocab.
Params are float32; the math runs in the config's compute dtype.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_lite.models.decoder.config import DecoderConfig
from t5x_lite.parallel.partitioning import constrain


def param(rngs: nnx.Rngs, shape, logical_axes, std: float) -> nnx.Param:
    """A float32 parameter drawn from N(0, std^2), tagged with its logical axes."""
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
    return nnx.Param(value, logical_axes=tuple(logical_axes))


class RMSNorm(nnx.Module):
    """RMS normalization over the last axis, whose logical name is `axis`."""

    def __init__(self, dim: int, eps: float, axis: str = "embed"):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), logical_axes=(axis,))
        self.eps = eps

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        x32_BTD = x_BTD.astype(jnp.float32)
        rms_BT1 = jax.lax.rsqrt(jnp.mean(x32_BTD**2, axis=-1, keepdims=True) + self.eps)
        return (x32_BTD * rms_BT1 * self.scale[...]).astype(x_BTD.dtype)


def apply_rotary(x_BTNH: jax.Array, positions_BT: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding in the half-rotation convention (as Hugging Face Llama)."""
    head_dim = x_BTNH.shape[-1]
    inv_freq_R = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angle_BTR = positions_BT[..., None].astype(jnp.float32) * inv_freq_R
    sin_BT1R = jnp.sin(angle_BTR)[:, :, None, :]
    cos_BT1R = jnp.cos(angle_BTR)[:, :, None, :]
    x1_BTNR, x2_BTNR = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
    rotated_BTNH = jnp.concatenate(
        [x1_BTNR * cos_BT1R - x2_BTNR * sin_BT1R, x2_BTNR * cos_BT1R + x1_BTNR * sin_BT1R],
        axis=-1,
    )
    return rotated_BTNH.astype(x_BTNH.dtype)


def attention_mask(segment_ids_BT: jax.Array) -> jax.Array:
    """Causal mask that also keeps packed segments apart: [B, 1, T, S] booleans."""
    same_segment_BTS = segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :]
    length = segment_ids_BT.shape[1]
    causal_TS = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))
    return (same_segment_BTS & causal_TS)[:, None, :, :]


class Attention(nnx.Module):
    def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs):
        D, N, K, H = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        out_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5
        self.q_DNH = param(rngs, (D, N, H), ("embed", "heads", "head_dim"), cfg.init_std)
        self.k_DKH = param(rngs, (D, K, H), ("embed", "kv_heads", "head_dim"), cfg.init_std)
        self.v_DKH = param(rngs, (D, K, H), ("embed", "kv_heads", "head_dim"), cfg.init_std)
        self.o_NHD = param(rngs, (N, H, D), ("heads", "head_dim", "embed"), out_std)
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm:
            self.q_norm = RMSNorm(H, cfg.norm_eps, axis="head_dim")
            self.k_norm = RMSNorm(H, cfg.norm_eps, axis="head_dim")
        self.rope_theta = cfg.rope_theta
        self.dtype = cfg.compute_dtype
        self.implementation = cfg.attention

    def __call__(self, x_BTD, positions_BT, mask_B1TS):
        q_BTNH, k_BSKH, v_BSKH = self._project(x_BTD, positions_BT)
        # The mask is causal already; the flag lets cuDNN skip the blocks above the diagonal.
        out_BTNH = jax.nn.dot_product_attention(
            q_BTNH, k_BSKH, v_BSKH, mask=mask_B1TS, is_causal=self.implementation == "cudnn",
            implementation=self.implementation)
        return self._output(out_BTNH)

    def decode(self, x_BTD, positions_BT, mask_B1TS, k_BSKH, v_BSKH, index):
        """Attention of T new tokens over a cache of S slots.

        The new keys and values are written into the cache at slots
        [index, index + T) first; `mask_B1TS` says which slots each query sees.
        Returns (output, updated key cache, updated value cache).
        """
        q_BTNH, k_BTKH, v_BTKH = self._project(x_BTD, positions_BT)
        k_BSKH = _write_cache(k_BSKH, k_BTKH, index)
        v_BSKH = _write_cache(v_BSKH, v_BTKH, index)
        out_BTNH = jax.nn.dot_product_attention(q_BTNH, k_BSKH, v_BSKH, mask=mask_B1TS)
        return self._output(out_BTNH), k_BSKH, v_BSKH

    def _project(self, x_BTD, positions_BT):
        """Queries and keys (normalized if qk_norm, then rotated) and values of the tokens
        in x."""
        dtype = self.dtype
        q_BTNH = jnp.einsum("BTD,DNH->BTNH", x_BTD, self.q_DNH[...].astype(dtype))
        k_BSKH = jnp.einsum("BSD,DKH->BSKH", x_BTD, self.k_DKH[...].astype(dtype))
        v_BSKH = jnp.einsum("BSD,DKH->BSKH", x_BTD, self.v_DKH[...].astype(dtype))
        if self.qk_norm:
            q_BTNH, k_BSKH = self.q_norm(q_BTNH), self.k_norm(k_BSKH)
        q_BTNH = constrain(apply_rotary(q_BTNH, positions_BT, self.rope_theta),
                           ("batch", "length", "heads", "head_dim"))
        k_BSKH = constrain(apply_rotary(k_BSKH, positions_BT, self.rope_theta),
                           ("batch", "length", "kv_heads", "head_dim"))
        v_BSKH = constrain(v_BSKH, ("batch", "length", "kv_heads", "head_dim"))
        return q_BTNH, k_BSKH, v_BSKH

    def _output(self, out_BTNH):
        return jnp.einsum("BTNH,NHD->BTD", out_BTNH, self.o_NHD[...].astype(self.dtype))


def _write_cache(cache_BSKH, new_BTKH, index):
    """The cache with slots [index, index + T) replaced by the new keys or values."""
    cache_BSKH = jax.lax.dynamic_update_slice_in_dim(
        cache_BSKH, new_BTKH.astype(cache_BSKH.dtype), index, axis=1)
    return constrain(cache_BSKH, ("batch", "length", "kv_heads", "head_dim"))


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs):
        D, F = cfg.embed_dim, cfg.mlp_dim
        out_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5
        self.gate_DF = param(rngs, (D, F), ("embed", "mlp"), cfg.init_std)
        self.up_DF = param(rngs, (D, F), ("embed", "mlp"), cfg.init_std)
        self.down_FD = param(rngs, (F, D), ("mlp", "embed"), out_std)
        self.dtype = cfg.compute_dtype

    def __call__(self, x_BTD):
        dtype = self.dtype
        gate_BTF = jnp.einsum("BTD,DF->BTF", x_BTD, self.gate_DF[...].astype(dtype))
        up_BTF = jnp.einsum("BTD,DF->BTF", x_BTD, self.up_DF[...].astype(dtype))
        hidden_BTF = constrain(jax.nn.silu(gate_BTF) * up_BTF, ("batch", "length", "mlp"))
        return jnp.einsum("BTF,FD->BTD", hidden_BTF, self.down_FD[...].astype(dtype))


class DecoderBlock(nnx.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.embed_dim, cfg.norm_eps)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg.embed_dim, cfg.norm_eps)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x_BTD, positions_BT, mask_B1TS):
        x_BTD = x_BTD + self.attn(self.attn_norm(x_BTD), positions_BT, mask_B1TS)
        return self._mlp_residual(x_BTD)

    def decode(self, x_BTD, positions_BT, mask_B1TS, k_BSKH, v_BSKH, index):
        """The block on T new tokens with this layer's KV cache (see Attention.decode)."""
        attn_BTD, k_BSKH, v_BSKH = self.attn.decode(
            self.attn_norm(x_BTD), positions_BT, mask_B1TS, k_BSKH, v_BSKH, index)
        return self._mlp_residual(x_BTD + attn_BTD), k_BSKH, v_BSKH

    def _mlp_residual(self, x_BTD):
        x_BTD = x_BTD + self.mlp(self.mlp_norm(x_BTD))
        return constrain(x_BTD, ("batch", "length", "embed"))
