"""cuDNN fused attention against the XLA reference, on an NVIDIA GPU only.

Skipped where jax has no GPU backend (CI runs on CPU); bench/step_time.py and
BENCHMARKS.md record where it ran.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite.models.decoder.config import DecoderConfig
from t5x_lite.models.losses import cross_entropy_sums
from t5x_lite.models.spec import ModelSpec
from tests.helpers import packed_batch

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs an NVIDIA GPU")

XLA_CFG = DecoderConfig(num_layers=2, embed_dim=256, num_heads=8, num_kv_heads=2, head_dim=64,
                        mlp_dim=512, vocab_size=512, dtype="bfloat16", scan_layers=True)
CUDNN_CFG = dataclasses.replace(XLA_CFG, attention="cudnn")


def _loss_and_grads(cfg, params, batch):
    spec = ModelSpec.create(cfg)

    def loss(p):
        logits_BTV = spec.logits(p, batch)
        loss_sum, _, weight_sum = cross_entropy_sums(
            logits_BTV, batch["decoder_target_tokens"], batch["decoder_loss_weights"], 0.0)
        return loss_sum / weight_sum, logits_BTV

    (value, logits_BTV), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return value, logits_BTV, grads


def test_cudnn_matches_xla_on_packed_rows():
    batch = jax.tree.map(jnp.asarray, packed_batch(rows=4, length=256, vocab=512))
    params = ModelSpec.create(XLA_CFG).init_params(seed=0)
    xla_loss, xla_logits, xla_grads = _loss_and_grads(XLA_CFG, params, batch)
    cudnn_loss, cudnn_logits, cudnn_grads = _loss_and_grads(CUDNN_CFG, params, batch)
    np.testing.assert_allclose(cudnn_loss, xla_loss, rtol=2e-3)
    np.testing.assert_allclose(cudnn_logits, xla_logits, atol=5e-2)
    for xla_g, cudnn_g in zip(jax.tree.leaves(xla_grads), jax.tree.leaves(cudnn_grads)):
        scale = float(jnp.abs(xla_g).max()) + 1e-6
        assert float(jnp.abs(cudnn_g - xla_g).max()) / scale < 5e-2


def test_cudnn_keeps_packed_segments_apart():
    batch = packed_batch(rows=2, length=256, vocab=512)
    changed = {k: v.copy() for k, v in batch.items()}
    first = batch["decoder_segment_ids"] == 1
    changed["decoder_input_tokens"][first] = (changed["decoder_input_tokens"][first] + 7) % 512
    params = ModelSpec.create(CUDNN_CFG).init_params(seed=0)
    _, before, _ = _loss_and_grads(CUDNN_CFG, params, jax.tree.map(jnp.asarray, batch))
    _, after, _ = _loss_and_grads(CUDNN_CFG, params, jax.tree.map(jnp.asarray, changed))
    second = batch["decoder_segment_ids"] == 2
    np.testing.assert_array_equal(np.asarray(before)[second], np.asarray(after)[second])
