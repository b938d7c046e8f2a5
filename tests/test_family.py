"""The model-family interface: the decoder trains as before, and the trainer trains any
family, with its auxiliary losses in the run's metrics."""

import dataclasses
import json
import sys

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
from flax import nnx

from t5x_lite.config.configurables import register_configurables
from t5x_lite.config import gin_config
from t5x_lite.models import family as family_lib
from t5x_lite.models.losses import cross_entropy_sums
from t5x_lite.parallel.partitioning import constrain
from t5x_lite.train import trainer
from tests.cli import read_metrics, run_cli

# The quickstart's first 20 losses on the seqio stream (t5x_lite train
# --gin_file=quickstart.gin on 8 devices, log_every=1), recorded before the trainer took its
# model from a family. XLA's CPU code differs by a few ulps between processor generations,
# so they are compared to 1e-5, as runs on different meshes are.
QUICKSTART_LOSSES = [
    5.979689598083496, 5.980154991149902, 5.926738739013672, 5.825295448303223,
    5.680031776428223, 5.570508003234863, 5.443658828735352, 5.35116720199585,
    5.268517017364502, 5.299105644226074, 5.201259613037109, 5.130546569824219,
    5.07799768447876, 4.929368495941162, 4.921651363372803, 4.885777473449707,
    4.7002153396606445, 4.729848861694336, 4.611102104187012, 4.4456257820129395]


def test_quickstart_losses_are_unchanged(tmp_path):
    result = run_cli([sys.executable, "-m", "t5x_lite", "train", "--gin_file=quickstart.gin",
                      f"--gin.MODEL_DIR='{tmp_path}'", "--gin.TRAIN_STEPS=20",
                      "--gin.train.log_every=1", "--gin.train.eval_every=None",
                      "--gin.DataConfig.stream='skip'"], num_devices=8)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [record["loss"] for record in read_metrics(tmp_path) if "loss" in record]
    np.testing.assert_allclose(losses, QUICKSTART_LOSSES, rtol=1e-5)


# --- a family the trainer has never heard of -------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TwoLayerConfig:
    vocab_size: int | None = None
    embed_dim: int = 16
    hidden_dim: int = 32
    activation_penalty: float = 1e-2


class TwoLayerModel(nnx.Module):
    """Embedding, two dense layers, output projection: a bigram model."""

    def __init__(self, cfg: TwoLayerConfig, rngs: nnx.Rngs):
        def param(shape, axes):
            value = 0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)
            return nnx.Param(value, logical_axes=axes)
        V, D, F = cfg.vocab_size, cfg.embed_dim, cfg.hidden_dim
        self.embed_VD = param((V, D), ("vocab", "embed"))
        self.up_DF = param((D, F), ("embed", "mlp"))
        self.down_FD = param((F, D), ("mlp", "embed"))
        self.head_DV = param((D, V), ("embed", "vocab"))

    def __call__(self, tokens_BT):
        x_BTD = constrain(jnp.take(self.embed_VD[...], tokens_BT, axis=0),
                          ("batch", "length", "embed"))
        hidden_BTF = jax.nn.relu(x_BTD @ self.up_DF[...])
        x_BTD = x_BTD + hidden_BTF @ self.down_FD[...]
        return x_BTD @ self.head_DV[...], hidden_BTF


class TwoLayerFamily(family_lib.ModelFamily):
    """Loss: cross-entropy plus a penalty on the hidden activations, reported apart."""

    name = "two_layer_test"
    config_type = TwoLayerConfig
    keys = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")

    def resolve(self, cfg, task_vocab_size):
        return dataclasses.replace(cfg, vocab_size=cfg.vocab_size or task_vocab_size)

    def build(self, cfg, rngs):
        return TwoLayerModel(cfg, rngs)

    def features(self, cfg, task_lengths):
        return {key: family_lib.FeatureSpec(task_lengths["targets"]) for key in self.keys}

    def feature_converter(self, has_inputs, pack):
        return seqio.DecoderFeatureConverter(pack=False)

    def logits(self, cfg, model, batch):
        return model(batch["decoder_input_tokens"])[0]

    def loss(self, cfg, model, batch):
        logits_BTV, hidden_BTF = model(batch["decoder_input_tokens"])
        weights_BT = batch["decoder_loss_weights"].astype(jnp.float32)
        loss_sum, _, weight_sum = cross_entropy_sums(
            logits_BTV, batch["decoder_target_tokens"], weights_BT, 0.0)
        penalty_sum = cfg.activation_penalty * jnp.sum(
            jnp.mean(jnp.square(hidden_BTF), axis=-1) * weights_BT)
        return family_lib.LossOutput(loss_sum + penalty_sum, weight_sum,
                                     {"activation_penalty": penalty_sum})

    def example_batch(self, inputs, targets, length=None):
        raise NotImplementedError

    def score(self, cfg, model, batch):
        raise NotImplementedError

    def prefill(self, cfg, model, prompts_BP, starts_B, num_slots):
        raise NotImplementedError

    def extend(self, cfg, model, token_B, starts_B, slot, state):
        raise NotImplementedError

    def param_count(self, cfg, *, active=False):
        return 2 * cfg.vocab_size * cfg.embed_dim + 2 * cfg.embed_dim * cfg.hidden_dim

    def flops_per_token(self, cfg, task_lengths):
        return 6.0 * self.param_count(cfg)


@pytest.fixture
def two_layer_family():
    family = family_lib.register(TwoLayerFamily())
    yield family
    family_lib._FAMILIES.pop(family.name)


def test_a_new_family_trains_through_the_trainer_and_reports_its_aux_loss(
        tmp_path, two_layer_family):
    gin.clear_config()
    register_configurables()
    gin_config.parse(["quickstart.gin"], [
        f"MODEL_DIR='{tmp_path}'", "TRAIN_STEPS=6", "BATCH_SIZE=8",
        "TASK_FEATURE_LENGTHS={'targets': 32}", "DataConfig.pack=False", "train.log_every=1",
        "train.eval_every=3", "train.eval_steps=1", "CheckpointConfig.save_every=3"])
    try:
        trainer.train(model_config=TwoLayerConfig())
    finally:
        gin.clear_config()
    assert jax.device_count() == 8
    records = [r for r in read_metrics(tmp_path) if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, 7))
    penalties = np.array([r["activation_penalty"] for r in records])
    assert np.all(penalties > 0) and np.all(penalties < np.array([r["loss"] for r in records]))
    assert "z_loss" not in records[0]
    assert any("eval_loss" in r for r in read_metrics(tmp_path))
    meta = json.loads((tmp_path / "checkpoints" / "6" / "meta" / "metadata").read_text())
    assert meta["family"] == "two_layer_test"
    assert set(meta["model_config"]) == {f.name for f in dataclasses.fields(TwoLayerConfig)}
