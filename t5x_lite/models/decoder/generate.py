"""The decoder's cached prediction steps.

Batched prompts are left-padded: every row's prompt ends at cache slot P - 1, so each
step writes one slot shared by all rows, while positions count from each row's own
start (RoPE sees the positions the prompt has alone). Pad slots are never attended to.
"""

import jax
import jax.numpy as jnp

from t5x_lite.models.decoder.model import Decoder, KVCache, init_cache
from t5x_lite.parallel.partitioning import constrain


def cache_mask(starts_B: jax.Array, index, num_new: int, num_slots: int) -> jax.Array:
    """[B, 1, T, S]: new token t (at slot index + t) sees the row's slots from its
    start up to its own."""
    slot_S = jnp.arange(num_slots)
    query_slot_T = index + jnp.arange(num_new)
    causal_TS = slot_S[None, :] <= query_slot_T[:, None]
    in_row_BS = slot_S[None, :] >= starts_B[:, None]
    return (in_row_BS[:, None, :] & causal_TS[None])[:, None]


def prefill(model: Decoder, tokens_BP: jax.Array, starts_B: jax.Array, num_slots: int):
    """Runs left-padded prompts (row b starts at slot starts_B[b]) into a fresh
    cache of `num_slots` slots; returns (next-token logits [B, V], cache)."""
    batch, prompt_len = tokens_BP.shape
    positions_BP = jnp.maximum(jnp.arange(prompt_len)[None, :] - starts_B[:, None], 0)
    cache = init_cache(model.cfg, batch, num_slots)
    cache = KVCache(*(constrain(x, ("layers", "batch", "length", "kv_heads", "head_dim"))
                      for x in cache))
    mask_B1PS = cache_mask(starts_B, 0, prompt_len, num_slots)
    return model.decode(tokens_BP, positions_BP, mask_B1PS, cache, 0)


def extend(model: Decoder, token_B: jax.Array, starts_B: jax.Array, slot, cache: KVCache):
    """Runs one new token per row at `slot`; returns (next-token logits [B, V], cache)."""
    num_slots = cache.k_LBSKH.shape[2]
    positions_B1 = (slot - starts_B)[:, None]
    mask_B11S = cache_mask(starts_B, slot, 1, num_slots)
    return model.decode(token_B[:, None], positions_B1, mask_B11S, cache, slot)
