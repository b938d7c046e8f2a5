"""The encoder-decoder family: training on every mesh, packed isolation through the loss,
cached greedy decoding against full forward passes, scoring, lookup and counts."""

import dataclasses
import functools

import jax
import numpy as np
import pytest
from flax import nnx

from t5x_lite.errors import ConfigError
from t5x_lite.inference import decoding
from t5x_lite.models import family as family_lib
from t5x_lite.models.encdec import ENCDEC
from t5x_lite.models.encdec.config import EncDecConfig
from t5x_lite.models.spec import ModelSpec
from tests.helpers import TINY_ENCDEC, packed_encdec_batch, tiny_training

INPUTS, TARGETS = 40, 24
LENGTHS = {"inputs": INPUTS, "targets": TARGETS}
V = TINY_ENCDEC.vocab_size


# --- training ------------------------------------------------------------------------------

@functools.cache
def _initial_params() -> dict:
    return jax.tree.map(np.asarray, ModelSpec.create(TINY_ENCDEC).init_params(0))


def run_losses(mesh_shape, num_steps=10):
    # Every mesh starts from the same host params (a jitted init would compile per mesh).
    with tiny_training(mesh_shape, 3, num_steps, TINY_ENCDEC, params=_initial_params()) as (
            state, step, batch_sharding):
        losses = []
        for i in range(num_steps):
            batch = packed_encdec_batch(8, INPUTS, TARGETS, V, seed=i % 2)
            state, metrics = step(state, jax.device_put(batch, batch_sharding), i)
            losses.append(float(metrics["loss"]))
    return np.array(losses)


def test_losses_match_across_meshes():
    reference = run_losses((1, 1, 1))
    assert np.all(np.isfinite(reference)) and reference[-1] < reference[0]
    for mesh_shape in [(8, 1, 1), (2, 2, 2), (1, 4, 2)]:
        np.testing.assert_allclose(run_losses(mesh_shape), reference, rtol=1e-5,
                                   err_msg=str(mesh_shape))


# --- packed rows ---------------------------------------------------------------------------

@functools.cache
def _model(scan_layers: bool = True):
    spec = ModelSpec.create(dataclasses.replace(TINY_ENCDEC, scan_layers=scan_layers))
    return spec, spec.init_params(0), jax.jit(spec.logits)


@functools.cache
def _forward(scan_layers: bool):
    """jit(encode, then decode_logits) of the model with the `_model` params."""
    spec, params, _ = _model(scan_layers)

    @jax.jit
    def forward(params, encoder_BS, encoder_segments_BS, decoder_BT, decoder_segments_BT):
        model = spec.bind(params)
        encoded_BSD = model.encode(encoder_BS, encoder_segments_BS)
        return model.decode_logits(encoded_BSD, encoder_segments_BS, decoder_BT,
                                   decoder_segments_BT)
    return functools.partial(forward, params)


def _token_losses(batch) -> np.ndarray:
    _, params, logits_fn = _model()
    logits_BTV = np.asarray(logits_fn(params, batch))
    log_probs_BTV = np.asarray(jax.nn.log_softmax(logits_BTV, axis=-1))
    targets_BT = batch["decoder_target_tokens"]
    return -np.take_along_axis(log_probs_BTV, targets_BT[..., None], axis=-1)[..., 0]


def test_packed_examples_are_isolated_in_the_loss():
    spec, params, _ = _model()
    base = packed_encdec_batch(2, INPUTS, TARGETS, V, seed=3)
    changed = {key: value.copy() for key, value in base.items()}
    enc_second = base["encoder_segment_ids"] == 2
    dec_second = base["decoder_segment_ids"] == 2
    changed["encoder_input_tokens"][enc_second] = (
        base["encoder_input_tokens"][enc_second] + 7) % (V - 3) + 3
    changed["decoder_target_tokens"][dec_second] = (
        base["decoder_target_tokens"][dec_second] + 5) % (V - 3) + 3
    shifted = np.roll(changed["decoder_target_tokens"], 1, axis=1)
    changed["decoder_input_tokens"] = np.where(
        (base["decoder_positions"] == 0) | (base["decoder_segment_ids"] == 0), 0, shifted)
    before, after = _token_losses(base), _token_losses(changed)
    first = base["decoder_segment_ids"] == 1
    np.testing.assert_array_equal(after[first], before[first])
    assert np.abs(after[dec_second] - before[dec_second]).max() > 1e-3

    # The family's summed loss over the first examples' tokens alone is unchanged too.
    loss = jax.jit(spec.loss)
    only_first = {"decoder_loss_weights": first.astype(np.int32)}
    kept = [loss(params, {**batch, **only_first}) for batch in (base, changed)]
    np.testing.assert_array_equal(np.asarray(kept[0].loss), np.asarray(kept[1].loss))
    assert float(kept[0].weight) == first.sum()
    np.testing.assert_allclose(float(kept[0].loss), before[first].sum(), rtol=1e-5)


# --- prediction ----------------------------------------------------------------------------

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]
STEPS = 12


def _full_forward_logits(scan_layers, prompt, decoder_inputs, width=STEPS + 1):
    """Logits [len(decoder_inputs), V] of one example by a full forward pass: the prompt
    encoded alone (right-padded), the decoder run over all of its inputs."""
    encoder_BS = np.zeros((1, 16), np.int32)
    encoder_BS[0, :len(prompt)] = prompt
    decoder_BT = np.zeros((1, width), np.int32)
    decoder_BT[0, :len(decoder_inputs)] = decoder_inputs
    decoder_segments_BT = (np.arange(width) < len(decoder_inputs))[None].astype(np.int32)
    logits_BTV = _forward(scan_layers)(encoder_BS, (encoder_BS != 0).astype(np.int32),
                                       decoder_BT, decoder_segments_BT)
    return np.asarray(logits_BTV)[0, :len(decoder_inputs)]


def _argmax_decode(scan_layers, prompt, steps):
    """Greedy continuation, recomputing the whole decoder sequence every step."""
    decoder_inputs = [decoding.START_ID]
    for _ in range(steps):
        logits_TV = _full_forward_logits(scan_layers, prompt, decoder_inputs)
        decoder_inputs.append(int(np.argmax(logits_TV[-1])))
    return decoder_inputs[1:]


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scanned", "unscanned"])
def test_cached_greedy_decoding_equals_full_forward_argmax(scan_layers):
    spec, params, _ = _model(scan_layers)
    result = decoding.decode(spec, params, PROMPTS, STEPS, eos_id=None)
    expected = [_argmax_decode(scan_layers, prompt, STEPS) for prompt in PROMPTS]
    np.testing.assert_array_equal(result.tokens, expected)
    assert len({tuple(row) for row in expected}) == len(PROMPTS)
    # Each step's log-prob is that of the full forward pass's distribution.
    for prompt, tokens, log_probs in zip(PROMPTS, result.tokens, result.log_probs):
        logits_TV = _full_forward_logits(scan_layers, prompt, [decoding.START_ID, *tokens[:-1]])
        full = np.asarray(jax.nn.log_softmax(logits_TV, axis=-1))[np.arange(STEPS), tokens]
        np.testing.assert_allclose(log_probs, full, rtol=1e-5, atol=1e-5)
    # A prompt padded further (more pad slots before it) decodes the same.
    padded = decoding.decode(spec, params, PROMPTS[1:], STEPS, eos_id=None, prompt_length=10)
    np.testing.assert_array_equal(padded.tokens[0], result.tokens[1])


def test_score_is_the_sum_of_target_log_probs():
    spec, params, _ = _model()
    targets = [[3, 4, 5], [6]]
    expected = []
    for prompt, target in zip(PROMPTS, targets):
        logits_TV = _full_forward_logits(True, prompt, [decoding.START_ID, *target[:-1]])
        log_probs_TV = np.asarray(jax.nn.log_softmax(logits_TV, axis=-1))
        expected.append(log_probs_TV[np.arange(len(target)), target].sum())
    for length in (None, 10):
        np.testing.assert_allclose(decoding.score(spec, params, PROMPTS, targets, length=length),
                                   expected, rtol=1e-5)
    batch = ENCDEC.example_batch(PROMPTS, targets, None)
    assert batch["encoder_input_tokens"].shape == (2, 7)
    assert batch["decoder_input_tokens"].tolist() == [[0, 3, 4], [0, 0, 0]]
    logits_BTV = np.asarray(spec.logits(params, batch))
    log_probs_BTV = np.asarray(jax.nn.log_softmax(logits_BTV, axis=-1))
    from_logits = [log_probs_BTV[b, np.arange(len(y)), y].sum() for b, y in enumerate(targets)]
    np.testing.assert_allclose(np.asarray(spec.score(params, batch)), from_logits, rtol=1e-6)
    with pytest.raises(ValueError, match="longest inputs"):
        ENCDEC.example_batch(PROMPTS, targets, 5)


# --- lookup, counts, data ------------------------------------------------------------------

def test_the_family_is_found_by_name_and_by_config():
    assert family_lib.by_name("encdec") is ENCDEC
    assert family_lib.for_config(EncDecConfig()) is ENCDEC
    assert family_lib.for_config(TINY_ENCDEC).name == "encdec"


def test_counts_and_flops():
    leaves = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(
        ModelSpec.create(TINY_ENCDEC).template))
    shapes = {".".join(str(key.key) for key in path): leaf.shape for path, leaf in leaves}
    path_names = {name for dotted in shapes for name in dotted.split(".")}
    count = sum(int(np.prod(shape)) for shape in shapes.values())
    assert ENCDEC.param_count(TINY_ENCDEC) == count
    assert ENCDEC.param_count(TINY_ENCDEC, active=True) == count
    assert set(ENCDEC.no_decay(TINY_ENCDEC)) <= path_names
    assert ENCDEC.tokens_per_row(LENGTHS) == INPUTS + TARGETS

    def params_under(prefix):
        return sum(int(np.prod(s)) for name, s in shapes.items() if name.startswith(prefix))
    # Each row token runs through one stack: 6 x the weights it passes is a lower bound.
    encoder_weights = params_under("encoder_")
    decoder_weights = params_under("decoder_") + params_under("lm_head")
    assert encoder_weights + decoder_weights + params_under("embed_VD") == count
    per_token = (INPUTS * encoder_weights + TARGETS * decoder_weights) / (INPUTS + TARGETS)
    flops = ENCDEC.flops_per_token(TINY_ENCDEC, LENGTHS)
    assert 6 * per_token < flops < 2 * 6 * per_token
    # Longer rows add attention, so more FLOPs per token.
    assert ENCDEC.flops_per_token(TINY_ENCDEC, {"inputs": 80, "targets": 48}) > flops


def test_features_follow_the_task_lengths():
    features = ENCDEC.features(TINY_ENCDEC, LENGTHS)
    assert {key: spec.length for key, spec in features.items()} == {
        "encoder_input_tokens": INPUTS, "encoder_segment_ids": INPUTS,
        "encoder_positions": INPUTS, "decoder_input_tokens": TARGETS,
        "decoder_target_tokens": TARGETS, "decoder_loss_weights": TARGETS,
        "decoder_segment_ids": TARGETS, "decoder_positions": TARGETS}
    assert set(packed_encdec_batch(2, INPUTS, TARGETS, V)) == set(features)


def test_targets_only_data_is_a_config_error():
    with pytest.raises(ConfigError) as error:
        ENCDEC.feature_converter(has_inputs=False, pack=True)
    assert "inputs" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ConfigError):
        ENCDEC.features(TINY_ENCDEC, {"targets": 32})


@pytest.mark.parametrize("pack", [True, False])
def test_the_converter_gives_the_features(pack):
    seqio = pytest.importorskip("seqio")
    tf = pytest.importorskip("tensorflow")
    converter = ENCDEC.feature_converter(has_inputs=True, pack=pack)
    assert isinstance(converter, seqio.EncDecFeatureConverter)
    examples = [{"inputs": [7, 8, 5, 1], "targets": [3, 9, 1]},
                {"inputs": [8, 4, 9, 3, 1], "targets": [4, 1]}]
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(examples), output_signature={
            key: tf.TensorSpec([None], tf.int32) for key in ("inputs", "targets")})
    rows = list(converter(dataset, {"inputs": 10, "targets": 7}).as_numpy_iterator())
    features = ENCDEC.features(TINY_ENCDEC, {"inputs": 10, "targets": 7})
    assert len(rows) == (1 if pack else 2)
    for row in rows:
        assert {key: value.shape[0] for key, value in row.items()} == {
            key: spec.length for key, spec in features.items()}
    first = rows[0]
    if pack:
        assert first["decoder_input_tokens"].tolist() == [0, 3, 9, 0, 4, 0, 0]
        assert first["encoder_segment_ids"].tolist() == [1, 1, 1, 1, 2, 2, 2, 2, 2, 0]
    else:
        # seqio shifts the padded row: the pad slot after EOS reads it (weight 0, segment 0).
        assert first["decoder_input_tokens"].tolist() == [0, 3, 9, 1, 0, 0, 0]
        assert first["decoder_segment_ids"].tolist() == [1, 1, 1, 0, 0, 0, 0]
        assert first["encoder_segment_ids"].tolist() == [1] * 4 + [0] * 6
        assert first["encoder_positions"].tolist() == list(range(10))


def test_the_decoder_reads_a_denoising_objective_from_the_seqio_stream_only():
    """Token stores give a denoising objective's rows as encoder-decoder rows."""
    from t5x_lite.pipeline import input_pipeline
    cfg = input_pipeline.DataConfig("embedded_span_corruption", {"inputs": 64, "targets": 16}, 4)
    assert input_pipeline.uses_store(cfg)
    assert input_pipeline.for_family(cfg, ENCDEC) is cfg
    assert input_pipeline.for_family(cfg, family_lib.default()).stream == "skip"
    with pytest.raises(ConfigError, match="decoder family does not read these Tasks"):
        input_pipeline.for_family(dataclasses.replace(cfg, stream="store"),
                                  family_lib.default())
