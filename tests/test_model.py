"""The decoder's behaviour: packed-segment isolation, layouts, remat, dtypes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from t5x_lite.models.decoder.model import Decoder
from t5x_lite.models.decoder.layers import apply_rotary
from t5x_lite.models.spec import ModelSpec
from tests.helpers import TINY, packed_batch


def _logits(cfg, batch, seed=0):
    spec = ModelSpec.create(cfg)
    return np.asarray(spec.logits(spec.init_params(seed), jax.tree.map(jnp.asarray, batch)))


def test_packed_segments_are_isolated():
    batch = packed_batch(rows=2, length=24, vocab=TINY.vocab_size)
    changed = {k: v.copy() for k, v in batch.items()}
    first_segment = batch["decoder_segment_ids"] == 1
    changed["decoder_input_tokens"][first_segment] = (
        changed["decoder_input_tokens"][first_segment] + 7) % TINY.vocab_size
    before, after = _logits(TINY, batch), _logits(TINY, changed)
    second = batch["decoder_segment_ids"] == 2
    np.testing.assert_array_equal(before[second], after[second])
    assert np.abs(before[first_segment] - after[first_segment]).max() > 1e-3


def test_causal_future_tokens_do_not_leak():
    batch = packed_batch(rows=1, length=16, vocab=TINY.vocab_size)
    batch["decoder_segment_ids"][:] = 1
    batch["decoder_positions"][:] = np.arange(16)
    changed = {k: v.copy() for k, v in batch.items()}
    changed["decoder_input_tokens"][0, 10:] = 5
    before, after = _logits(TINY, batch), _logits(TINY, changed)
    np.testing.assert_array_equal(before[0, :10], after[0, :10])
    assert np.abs(before[0, 10:] - after[0, 10:]).max() > 1e-3


def test_scanned_and_unrolled_layers_compute_the_same_function():
    batch = packed_batch(rows=2, length=16, vocab=TINY.vocab_size)
    scanned_spec = ModelSpec.create(TINY)
    params = scanned_spec.init_params(0)
    unrolled = dataclasses.replace(TINY, scan_layers=False)
    unrolled_params = {k: v for k, v in params.items() if k != "blocks"}
    for i in range(TINY.num_layers):
        unrolled_params[f"layer_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["blocks"])
    batch = jax.tree.map(jnp.asarray, batch)
    np.testing.assert_allclose(ModelSpec.create(unrolled).logits(unrolled_params, batch),
                               scanned_spec.logits(params, batch), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy", ["full", "dots_no_batch"])
def test_remat_keeps_gradients(policy):
    batch = jax.tree.map(jnp.asarray, packed_batch(rows=2, length=16, vocab=TINY.vocab_size))
    def grads(cfg):
        spec = ModelSpec.create(cfg)
        return jax.grad(lambda p: spec.logits(p, batch).sum())(spec.init_params(0))
    reference, remat = grads(TINY), grads(dataclasses.replace(TINY, remat_policy=policy))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 reference, remat)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    cfg = dataclasses.replace(TINY, dtype="bfloat16")
    spec = ModelSpec.create(cfg)
    params = spec.init_params(0)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    batch = packed_batch(rows=2, length=16, vocab=TINY.vocab_size)
    bf16, f32 = _logits(cfg, batch), _logits(TINY, batch)
    assert bf16.dtype == np.float32
    assert np.abs(bf16 - f32).max() < 0.05


def test_tied_embeddings_have_no_output_head():
    spec = ModelSpec.create(dataclasses.replace(TINY, tie_embeddings=True))
    assert "lm_head_DV" not in spec.init_params(0)
    assert "lm_head_DV" in ModelSpec.create(TINY).init_params(0)


def test_rotary_is_a_relative_position_encoding():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(1, 1, 1, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, 1, 1, 8)), jnp.float32)
    def score(q_pos, k_pos):
        rq = apply_rotary(q, jnp.array([[q_pos]]), 10000.0)
        rk = apply_rotary(k, jnp.array([[k_pos]]), 10000.0)
        return float(jnp.sum(rq * rk))
    assert score(5, 2) == pytest.approx(score(13, 10), rel=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 4), rel=1e-3)


def test_grouped_query_attention_shapes():
    model = Decoder(TINY, nnx.Rngs(0))
    assert model.blocks.attn.k_DKH.shape == (2, 32, 2, 8)
    assert model.blocks.attn.q_DNH.shape == (2, 32, 4, 8)
