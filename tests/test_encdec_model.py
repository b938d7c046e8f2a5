"""The T5 v1.1 encoder-decoder: parity with Hugging Face, packed isolation, config, axes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from t5x_lite.errors import ConfigError
from t5x_lite.models.encdec.config import EncDecConfig
from t5x_lite.models.encdec.layers import relative_position_bucket
from t5x_lite.models.encdec.model import EncoderDecoder

V, D, N, H, F, L = 64, 32, 4, 8, 64, 2
TINY = EncDecConfig(num_encoder_layers=L, num_decoder_layers=L, embed_dim=D, num_heads=N,
                    head_dim=H, mlp_dim=F, vocab_size=V)


def _cfg(**changes) -> EncDecConfig:
    return dataclasses.replace(TINY, **changes)


def _segments(lengths, total):
    """Segment ids 1, 2, ... for consecutive examples of `lengths`, then 0 padding."""
    ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)])
    return np.pad(ids, (0, total - len(ids))).astype(np.int32)


def _tokens(rng, segments):
    return np.where(segments != 0, rng.integers(1, V, segments.shape), 0).astype(np.int32)


# --- Hugging Face parity ------------------------------------------------------------------

def _hf_model(tie: bool):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.T5Config(
        vocab_size=V, d_model=D, d_kv=H, d_ff=F, num_layers=L, num_decoder_layers=L,
        num_heads=N, relative_attention_num_buckets=32, relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu", tie_word_embeddings=tie, dropout_rate=0.0,
        attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(config).float().eval()
    if not tie:
        # transformers 5 always shares lm_head with the embedding (tie_word_embeddings=False
        # only drops the output scaling); give it its own weights to test an untied head.
        model.lm_head.weight = torch.nn.Parameter(torch.randn(V, D) * D**-0.5)
    assert (model.lm_head.weight is model.shared.weight) == tie
    return model


def _attention(sd, prefix):
    w = {n: sd[f"{prefix}.{n}.weight"] for n in "qkvo"}
    return {"q_DNH": w["q"].T.reshape(D, N, H), "k_DNH": w["k"].T.reshape(D, N, H),
            "v_DNH": w["v"].T.reshape(D, N, H), "o_NHD": w["o"].T.reshape(N, H, D)}


def _mlp(sd, prefix):
    return {n: sd[f"{prefix}.DenseReluDense.{hf}.weight"].T
            for n, hf in (("wi_0_DF", "wi_0"), ("wi_1_DF", "wi_1"), ("wo_FD", "wo"))}


def _flat(prefix, tree):
    return {f"{prefix}.{k}": v for k, v in tree.items()}


def _encoder_block(sd, i):
    p = f"encoder.block.{i}.layer"
    return {"attn_norm.scale": sd[f"{p}.0.layer_norm.weight"],
            **_flat("attn", _attention(sd, f"{p}.0.SelfAttention")),
            "mlp_norm.scale": sd[f"{p}.1.layer_norm.weight"],
            **_flat("mlp", _mlp(sd, f"{p}.1"))}


def _decoder_block(sd, i):
    p = f"decoder.block.{i}.layer"
    return {"self_attn_norm.scale": sd[f"{p}.0.layer_norm.weight"],
            **_flat("self_attn", _attention(sd, f"{p}.0.SelfAttention")),
            "cross_attn_norm.scale": sd[f"{p}.1.layer_norm.weight"],
            **_flat("cross_attn", _attention(sd, f"{p}.1.EncDecAttention")),
            "mlp_norm.scale": sd[f"{p}.2.layer_norm.weight"],
            **_flat("mlp", _mlp(sd, f"{p}.2"))}


def _hf_params(hf_model, cfg: EncDecConfig):
    """{dotted attribute path: array} of the t5x_lite model, from the HF state dict."""
    sd = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    table = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    params = {
        "embed_VD": sd["shared.weight"],
        "encoder_relpos_RN": sd[f"encoder.{table}"],
        "decoder_relpos_RN": sd[f"decoder.{table}"],
        "encoder_norm.scale": sd["encoder.final_layer_norm.weight"],
        "decoder_norm.scale": sd["decoder.final_layer_norm.weight"],
    }
    if not cfg.tie_embeddings:
        params["lm_head_DV"] = sd["lm_head.weight"].T
    for stack, block in (("encoder", _encoder_block), ("decoder", _decoder_block)):
        layers = [block(sd, i) for i in range(L)]
        for key in layers[0]:
            if cfg.scan_layers:
                params[f"{stack}_blocks.{key}"] = np.stack([layer[key] for layer in layers])
            else:
                params.update({f"{stack}_layer_{i}.{key}": layers[i][key] for i in range(L)})
    return params


def _load(model, params):
    for path, value in params.items():
        *parents, name = path.split(".")
        owner = model
        for parent in parents:
            owner = getattr(owner, parent)
        variable = getattr(owner, name)
        assert variable.shape == value.shape, path
        variable.set_value(jnp.asarray(value, jnp.float32))


def _padded_batch():
    rng = np.random.default_rng(1)
    enc_seg = np.stack([_segments([40], 40), _segments([27], 40)])
    dec_seg = np.stack([_segments([36], 36), _segments([21], 36)])
    return _tokens(rng, enc_seg), enc_seg, _tokens(rng, dec_seg), dec_seg


@pytest.mark.parametrize("scan_layers, tie", [(True, False), (False, False), (True, True)])
def test_logits_match_hugging_face_t5(scan_layers, tie):
    torch = pytest.importorskip("torch")
    hf_model = _hf_model(tie)
    cfg = _cfg(scan_layers=scan_layers, tie_embeddings=tie)
    model = EncoderDecoder(cfg, nnx.Rngs(0))
    _load(model, _hf_params(hf_model, cfg))
    enc_tokens, enc_seg, dec_tokens, dec_seg = _padded_batch()

    ours = np.asarray(model(enc_tokens, enc_seg, dec_tokens, dec_seg))
    with torch.no_grad():
        theirs = hf_model(
            input_ids=torch.from_numpy(enc_tokens.astype(np.int64)),
            attention_mask=torch.from_numpy((enc_seg != 0).astype(np.int64)),
            decoder_input_ids=torch.from_numpy(dec_tokens.astype(np.int64)),
        ).logits.numpy()
    assert ours.dtype == np.float32 and np.isfinite(ours).all()
    real = dec_seg != 0
    assert np.abs(ours[real] - theirs[real]).max() <= 1e-4


def test_relative_position_buckets_match_hugging_face_under_jit():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = np.arange(-600, 601)
    for bidirectional in (True, False):
        for buckets, max_distance in ((32, 128), (16, 64)):
            ours = jax.jit(lambda: relative_position_bucket(  # noqa: B023
                jnp.arange(-600, 601), bidirectional, buckets, max_distance))()
            theirs = T5Attention._relative_position_bucket(
                torch.from_numpy(relative), bidirectional=bidirectional,
                num_buckets=buckets, max_distance=max_distance)
            np.testing.assert_array_equal(np.asarray(ours), theirs.numpy())


# --- packing, padding ---------------------------------------------------------------------

def test_packed_examples_are_isolated():
    model = EncoderDecoder(TINY, nnx.Rngs(0))
    forward = nnx.jit(lambda m, *batch: m(*batch))
    rng = np.random.default_rng(2)
    enc_seg, dec_seg = _segments([20, 16], 40)[None], _segments([18, 14], 36)[None]
    base = (_tokens(rng, enc_seg), enc_seg, _tokens(rng, dec_seg), dec_seg)
    before = np.asarray(forward(model, *base))
    assert np.isfinite(before).all()
    for changed, kept in ((2, 1), (1, 2)):
        enc_tokens, dec_tokens = base[0].copy(), base[2].copy()
        enc_tokens[enc_seg == changed] = (enc_tokens[enc_seg == changed] + 5) % (V - 1) + 1
        dec_tokens[dec_seg == changed] = (dec_tokens[dec_seg == changed] + 3) % (V - 1) + 1
        after = np.asarray(forward(model, enc_tokens, enc_seg, dec_tokens, dec_seg))
        np.testing.assert_array_equal(after[dec_seg == kept], before[dec_seg == kept])
        assert np.abs(after[dec_seg == changed] - before[dec_seg == changed]).max() > 1e-3


def test_scanned_unrolled_and_remat_agree():
    batch = _padded_batch()
    scanned = EncoderDecoder(TINY, nnx.Rngs(0))
    expected = np.asarray(scanned(*batch))
    unrolled = EncoderDecoder(_cfg(scan_layers=False, remat_policy="full"), nnx.Rngs(1))
    for stack in ("encoder", "decoder"):
        stacked = nnx.state(getattr(scanned, f"{stack}_blocks"))
        for i in range(L):
            nnx.update(getattr(unrolled, f"{stack}_layer_{i}"),
                       jax.tree.map(lambda x, i=i: x[i], stacked))
    for name in ("embed_VD", "encoder_relpos_RN", "decoder_relpos_RN", "lm_head_DV"):
        getattr(unrolled, name).set_value(getattr(scanned, name)[...])
    np.testing.assert_allclose(np.asarray(unrolled(*batch)), expected, rtol=1e-5, atol=1e-5)


# --- config, parameter metadata -----------------------------------------------------------

@pytest.mark.parametrize("change", [{"dtype": "float16"}, {"remat_policy": "sometimes"},
                                    {"num_decoder_layers": 0}, {"relative_max_distance": 8}])
def test_bad_config_is_a_config_error(change):
    with pytest.raises(ConfigError) as error:
        _cfg(**change)
    # gin appends the configurable's name on a second line; the message itself is one line.
    assert str(error.value).splitlines()[0].startswith("EncDecConfig")


def test_with_vocab_rounds_up_and_rejects_a_small_table():
    assert EncDecConfig().with_vocab(300).vocab_size == 384
    with pytest.raises(ConfigError):
        _cfg(vocab_size=64).with_vocab(100)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_every_param_carries_its_logical_axes(scan_layers):
    model = EncoderDecoder(_cfg(scan_layers=scan_layers), nnx.Rngs(0))
    params = [(path, v) for path, v in nnx.iter_graph(model) if isinstance(v, nnx.Param)]
    # embedding, two bias tables, two final norms, head; 9 per encoder and 14 per decoder block
    assert len(params) == 6 + (9 + 14) * (1 if scan_layers else L)
    for path, variable in params:
        axes = variable.get_metadata()["logical_axes"]
        assert len(axes) == variable.ndim, path
        stacked = any(str(p).endswith("_blocks") for p in path)
        assert (axes[0] == "layers") == stacked, path
