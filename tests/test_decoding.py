"""KV-cache decoding and scoring against full recomputation with `spec.logits`."""

import dataclasses
import functools

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite.inference import decoding
from t5x_lite.parallel import partitioning
from t5x_lite.inference.decoding import SamplingConfig
from t5x_lite.models.decoder import generate
from t5x_lite.models.spec import ModelSpec
from tests.helpers import TINY

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12], [13, 14, 15], []]
STEPS = 8
LAYOUTS = {"scanned": TINY, "unscanned": dataclasses.replace(TINY, scan_layers=False)}


@functools.cache
def _model(layout: str):
    spec = ModelSpec.create(LAYOUTS[layout])
    return spec, spec.init_params(0), jax.jit(spec.logits)


def full_logits(layout: str, rows, width: int = 24):
    """Logits [len(row), V] of each row, recomputed over the whole sequence
    (rows right-padded to `width`, each its own segment with positions from 0)."""
    _, params, logits_fn = _model(layout)
    batch = {key: np.zeros((len(rows), width), np.int32) for key in (
        "decoder_input_tokens", "decoder_segment_ids", "decoder_positions")}
    for b, row in enumerate(rows):
        batch["decoder_input_tokens"][b, :len(row)] = row
        batch["decoder_segment_ids"][b, :len(row)] = 1
        batch["decoder_positions"][b, :len(row)] = np.arange(len(row))
    logits_BTV = np.asarray(logits_fn(params, batch))
    return [logits_BTV[b, :len(row)] for b, row in enumerate(rows)]


def naive_greedy(layout: str, prompts, steps: int) -> np.ndarray:
    """Greedy continuations, recomputing every sequence from scratch each step."""
    rows = [[decoding.START_ID, *prompt] for prompt in prompts]
    for _ in range(steps):
        for row, logits_TV in zip(rows, full_logits(layout, rows)):
            row.append(int(np.argmax(logits_TV[-1])))
    return np.array([row[-steps:] for row in rows])


def continuation_logits(layout: str, prompts, tokens_BL) -> np.ndarray:
    """[B, L, V]: full-recompute logits that predict each continuation token."""
    rows = [[decoding.START_ID, *prompt, *tokens] for prompt, tokens in zip(prompts, tokens_BL)]
    steps = tokens_BL.shape[1]
    return np.stack([logits_TV[len(prompt):len(prompt) + steps]
                     for prompt, logits_TV in zip(prompts, full_logits(layout, rows))])


def _decode(layout: str, prompts=PROMPTS, **kwargs):
    spec, params, _ = _model(layout)
    kwargs.setdefault("eos_id", None)
    return decoding.decode(spec, params, prompts, STEPS, **kwargs)


def _log_softmax_at(logits_BLV, tokens_BL):
    log_probs_BLV = np.asarray(jax.nn.log_softmax(logits_BLV, axis=-1))
    return np.take_along_axis(log_probs_BLV, tokens_BL[..., None], axis=-1)[..., 0]


def test_prompts_are_left_padded_after_a_start_token():
    tokens_BP, starts_B = decoding.pad_prompts([[7, 8], [], [9]], prompt_length=3)
    np.testing.assert_array_equal(tokens_BP, [[0, 0, 7, 8], [0, 0, 0, 0], [0, 0, 0, 9]])
    np.testing.assert_array_equal(starts_B, [1, 3, 2])


@pytest.mark.parametrize("layout", ["scanned", "unscanned"])
def test_cached_greedy_equals_full_recompute(layout):
    result = _decode(layout)
    np.testing.assert_array_equal(result.tokens, naive_greedy(layout, PROMPTS, STEPS))
    logits_BLV = continuation_logits(layout, PROMPTS, result.tokens)
    np.testing.assert_allclose(result.log_probs, _log_softmax_at(logits_BLV, result.tokens),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.scores, result.log_probs.sum(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(result.lengths, [STEPS] * len(PROMPTS))


@pytest.mark.parametrize("layout", ["scanned", "unscanned"])
def test_cached_logits_match_full_recompute_at_every_step(layout):
    spec, params, _ = _model(layout)
    tokens_BL = naive_greedy(layout, PROMPTS, STEPS)
    tokens_BP, starts_B = decoding.pad_prompts(PROMPTS)
    prompt_len = tokens_BP.shape[1]

    @jax.jit
    def cached_logits(params):
        model = spec.bind(params)
        logits_BV, cache = generate.prefill(model, tokens_BP, starts_B, prompt_len + STEPS)
        steps = [logits_BV]
        for i in range(STEPS - 1):
            logits_BV, cache = generate.extend(model, tokens_BL[:, i], starts_B,
                                               prompt_len + i, cache)
            steps.append(logits_BV)
        return jnp.stack(steps, axis=1)

    np.testing.assert_allclose(cached_logits(params),
                               continuation_logits(layout, PROMPTS, tokens_BL),
                               rtol=1e-5, atol=1e-5)


def test_batch_matches_each_prompt_alone():
    batched = _decode("scanned")
    for b, prompt in enumerate(PROMPTS[:3]):
        alone = _decode("scanned", [prompt])
        np.testing.assert_array_equal(alone.tokens[0], batched.tokens[b])
        np.testing.assert_allclose(alone.log_probs[0], batched.log_probs[b], atol=1e-5)
    padded = _decode("scanned", [PROMPTS[1]], prompt_length=5)
    np.testing.assert_array_equal(padded.tokens[0], batched.tokens[1])


def test_rows_stop_at_eos_and_then_emit_pad():
    free = _decode("scanned")
    eos_id = int(free.tokens[0, 2])
    stopped = _decode("scanned", eos_id=eos_id)
    assert stopped.lengths[0] <= 3
    for b in range(len(PROMPTS)):
        hits = np.flatnonzero(free.tokens[b] == eos_id)
        length = hits[0] + 1 if len(hits) else STEPS
        assert stopped.lengths[b] == length
        np.testing.assert_array_equal(stopped.tokens[b, :length], free.tokens[b, :length])
        np.testing.assert_array_equal(stopped.tokens[b, length:], decoding.PAD_ID)
        np.testing.assert_array_equal(stopped.log_probs[b, length:], 0.0)
        np.testing.assert_allclose(stopped.scores[b], free.log_probs[b, :length].sum(),
                                   rtol=1e-5)


def test_a_likely_eos_ends_every_row_at_once():
    spec, params, _ = _model("scanned")
    eos_id = 1
    # Every embedding gets a large constant feature that the head maps to EOS.
    biased = dict(params, embed_VD=params["embed_VD"].at[:, 0].set(100.0),
                  lm_head_DV=params["lm_head_DV"].at[0, eos_id].set(10.0))
    result = decoding.decode(spec, biased, PROMPTS, STEPS, eos_id=eos_id)
    np.testing.assert_array_equal(result.tokens[:, 0], eos_id)
    np.testing.assert_array_equal(result.tokens[:, 1:], decoding.PAD_ID)
    np.testing.assert_array_equal(result.lengths, 1)


@pytest.mark.parametrize("sampling", [SamplingConfig(temperature=1.0, top_k=1),
                                      SamplingConfig(temperature=1.0, top_p=1e-6)],
                         ids=["top_k=1", "tiny_top_p"])
def test_sampling_reduced_to_one_token_is_greedy(sampling):
    greedy = _decode("scanned")
    sampled = _decode("scanned", sampling=sampling, rng=jax.random.key(7))
    np.testing.assert_array_equal(sampled.tokens, greedy.tokens)
    np.testing.assert_allclose(sampled.scores, greedy.scores, rtol=1e-6)


def _outside_top_k(tokens_BL, logits_BLV, k: int) -> int:
    kth_BL1 = np.sort(logits_BLV, axis=-1)[..., -k][..., None]
    token_logit_BL = np.take_along_axis(logits_BLV, tokens_BL[..., None], axis=-1)[..., 0]
    return int(np.sum(token_logit_BL < kth_BL1[..., 0]))


def test_temperature_sampling_is_seeded_and_stays_in_the_top_k():
    top4 = SamplingConfig(temperature=1.0, top_k=4)
    first = _decode("scanned", sampling=top4, rng=jax.random.key(1))
    again = _decode("scanned", sampling=top4, rng=jax.random.key(1))
    other = _decode("scanned", sampling=top4, rng=jax.random.key(2))
    np.testing.assert_array_equal(first.tokens, again.tokens)
    assert np.any(first.tokens != other.tokens)
    assert np.any(first.tokens != _decode("scanned").tokens)
    logits_BLV = continuation_logits("scanned", PROMPTS, first.tokens)
    assert _outside_top_k(first.tokens, logits_BLV, 4) == 0
    np.testing.assert_allclose(first.log_probs, _log_softmax_at(logits_BLV, first.tokens),
                               rtol=1e-5, atol=1e-5)
    unrestricted = _decode("scanned", sampling=SamplingConfig(temperature=1.0),
                           rng=jax.random.key(1))
    unrestricted_logits_BLV = continuation_logits("scanned", PROMPTS, unrestricted.tokens)
    assert _outside_top_k(unrestricted.tokens, unrestricted_logits_BLV, 4) > 0


def test_sampling_config_binds_from_gin():
    gin.clear_config()
    try:
        gin.parse_config("SamplingConfig.temperature = 0.7\nSamplingConfig.top_k = 40")
        assert SamplingConfig() == SamplingConfig(temperature=0.7, top_k=40, top_p=1.0)
    finally:
        gin.clear_config()


@pytest.mark.parametrize("bad", [{"temperature": -1.0}, {"top_k": -1}, {"top_p": 0.0},
                                 {"top_p": 1.5}])
def test_sampling_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        SamplingConfig(**bad)


def test_score_is_the_sum_of_target_log_probs():
    spec, params, _ = _model("scanned")
    targets = [[3, 4], [5, 6, 7], [], [8, 9, 10, 11]]
    scores = decoding.score(spec, params, PROMPTS, targets)
    rows = [[decoding.START_ID, *x, *y] for x, y in zip(PROMPTS, targets)]
    expected = []
    for x, y, logits_TV in zip(PROMPTS, targets, full_logits("scanned", rows)):
        log_probs_TV = np.asarray(jax.nn.log_softmax(logits_TV, axis=-1))
        expected.append(sum(log_probs_TV[len(x) + j, token] for j, token in enumerate(y)))
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    assert scores[2] == 0.0 and np.all(scores[[0, 1, 3]] < 0)
    greedy = _decode("scanned")
    np.testing.assert_allclose(decoding.score(spec, params, PROMPTS, greedy.tokens.tolist()),
                               greedy.scores, rtol=1e-5)


@pytest.mark.parametrize("mesh_shape", [(2, 1, 1), (1, 2, 2)])
def test_sharded_decoding_matches_one_device(mesh_shape):
    devices = jax.devices()[:int(np.prod(mesh_shape))]
    mesh = partitioning.create_mesh(mesh_shape, devices=devices)
    top4 = SamplingConfig(temperature=1.0, top_k=4)
    for sampling in [SamplingConfig(), top4]:
        one = _decode("scanned", sampling=sampling, rng=jax.random.key(1))
        sharded = _decode("scanned", sampling=sampling, rng=jax.random.key(1), mesh=mesh)
        np.testing.assert_array_equal(sharded.tokens, one.tokens)
        np.testing.assert_allclose(sharded.log_probs, one.log_probs, rtol=1e-5, atol=1e-5)
