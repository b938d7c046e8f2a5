"""The shipped gin model files describe the sizes they promise."""

import gin
import jax
import numpy as np
import pytest

from t5x_lite.config import gin_config
from t5x_lite.config.configurables import register_configurables
from t5x_lite.models.decoder.config import DecoderConfig
from t5x_lite.models.spec import ModelSpec

# (file, vocabulary used for counting, smallest and largest expected parameter count)
SIZES = [
    ("tiny", 384, 0.8e6, 1.2e6),
    ("small", 8192, 15e6, 30e6),
    ("base", 32000, 110e6, 140e6),
    ("1b", 32000, 1.0e9, 1.3e9),
    ("7b", 32000, 6.6e9, 6.9e9),
]


def _model_config(size: str) -> DecoderConfig:
    gin.clear_config()
    gin_config.parse([f"models/decoder/{size}.gin"], [])
    try:
        return DecoderConfig()
    finally:
        gin.clear_config()


@pytest.mark.parametrize("size,vocab,smallest,largest", SIZES)
def test_model_sizes(size, vocab, smallest, largest):
    cfg = _model_config(size).with_vocab(vocab)
    spec = ModelSpec.create(cfg)
    params = jax.eval_shape(lambda: spec.init_params(0))
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))
    assert smallest <= count <= largest, f"{size}: {count:,} params"


def test_7b_has_the_llama_2_shape():
    cfg = _model_config("7b")
    assert (cfg.num_layers, cfg.embed_dim, cfg.num_heads, cfg.head_dim, cfg.mlp_dim,
            cfg.vocab_size) == (32, 4096, 32, 128, 11008, 32000)
    assert not cfg.tie_embeddings


# The parameter counts of Google's T5 v1.1 checkpoints (google/t5-v1_1-*) as transformers
# counts them, with T5's 32,128-token vocabulary; xxl is published as "11B".
T5_V1_1_PARAMS = {"small": 76_961_152, "base": 247_577_856, "large": 783_150_080,
                  "xl": 2_849_757_184, "xxl": (11.0e9, 11.2e9)}


@pytest.mark.parametrize("size", list(T5_V1_1_PARAMS))
def test_encoder_decoder_sizes_have_the_t5_v1_1_parameter_counts(size):
    from flax import nnx

    from t5x_lite.models.encdec.config import EncDecConfig
    from t5x_lite.models.encdec.model import EncoderDecoder
    gin.clear_config()
    register_configurables()  # the file binds train.model_config
    gin_config.parse([f"models/encdec/{size}.gin"], [])
    try:
        assert isinstance(gin.get_bindings("train")["model_config"], EncDecConfig)
        cfg = EncDecConfig().with_vocab(32100)  # T5's 32,000 pieces and 100 extra ids
    finally:
        gin.clear_config()
    model = nnx.eval_shape(lambda: EncoderDecoder(cfg, nnx.Rngs(0)))
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    expected = T5_V1_1_PARAMS[size]
    if isinstance(expected, tuple):
        assert expected[0] <= count <= expected[1], f"{size}: {count:,}"
    else:
        assert count == expected, f"{size}: {count:,}"
