"""Autoregressive decoding and scoring of given targets, for any model family.

Sequences follow the training layout: the model input starts with the start
token (id 0, the shift-right token of `decoder_input_tokens`), then the prompt;
what the model predicts after the prompt's last token is its continuation.
`decode` and `score` add the start token themselves.

Batched prompts are left-padded: every row's prompt ends at slot P - 1; the
family's `prefill` and `extend` run them and each new token (the decoder with a
KV cache; the encoder-decoder encodes the prompt without the start token, as its
training inputs have none, and starts its decoder from the start token).

Log-probs are those of the model's distribution (log-softmax of the logits,
before temperature, top-k or top-p), so a row's score does not depend on the
sampling settings and equals `score` of the same continuation.

Both run jitted; with a mesh, params sit in their training shardings, the batch
on the `batch` logical axis, under the activation rules.
"""

import contextlib
import dataclasses
import functools
from collections.abc import Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from t5x_lite.parallel import partitioning
from t5x_lite.models.spec import ModelSpec

START_ID = 0
PAD_ID = 0


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the next token is drawn: `temperature=0` is greedy (argmax); otherwise
    from softmax(logits / temperature), restricted to the `top_k` most likely
    tokens (0: all) and to the smallest set whose mass reaches `top_p`."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"{self}: need temperature >= 0, top_k >= 0, 0 < top_p <= 1.")


@dataclasses.dataclass(frozen=True)
class DecodeResult:
    """Generated tokens per row; after EOS (included) come `PAD_ID` and log-prob 0."""

    tokens: np.ndarray  # [B, max_decode_len] int32
    log_probs: np.ndarray  # [B, max_decode_len] float32
    scores: np.ndarray  # [B] sum of log_probs
    lengths: np.ndarray  # [B] generated tokens, EOS included


def sample_tokens(logits_BV: jax.Array, rng: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """Next tokens [B] drawn from float32 logits under `sampling`."""
    if sampling.temperature == 0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logits_BV = logits_BV / sampling.temperature
    if sampling.top_k:
        kth_B1 = jax.lax.top_k(logits_BV, min(sampling.top_k, logits_BV.shape[-1]))[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
    if sampling.top_p < 1:
        logits_BV = _top_p_filter(logits_BV, sampling.top_p)
    return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)


def _top_p_filter(logits_BV, top_p: float):
    """Keeps the most likely tokens until their mass reaches top_p (at least one)."""
    sorted_BV = jnp.flip(jnp.sort(logits_BV, axis=-1), axis=-1)
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    kept_BV = mass_before_BV < top_p
    threshold_B1 = jnp.min(jnp.where(kept_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits_BV < threshold_B1, -jnp.inf, logits_BV)


def _generate(spec: ModelSpec, params, tokens_BP, starts_B, key_data, eos_id, *,
              max_decode_len: int, sampling: SamplingConfig):
    """The decode loop: (tokens [B, L], log-probs [B, L]) of the continuations."""
    family, cfg, model = spec.family, spec.cfg, spec.bind(params)
    batch, prompt_len = tokens_BP.shape
    rng = jax.random.wrap_key_data(key_data)
    logits_BV, cache = family.prefill(cfg, model, tokens_BP, starts_B,
                                      prompt_len + max_decode_len)
    tokens_BL = jnp.full((batch, max_decode_len), PAD_ID, jnp.int32)
    log_probs_BL = jnp.zeros((batch, max_decode_len), jnp.float32)
    done_B = jnp.zeros((batch,), jnp.bool_)

    def step(loop):
        i, logits_BV, cache, tokens_BL, log_probs_BL, done_B = loop
        token_B = sample_tokens(logits_BV, jax.random.fold_in(rng, i), sampling)
        log_prob_B = jnp.take_along_axis(jax.nn.log_softmax(logits_BV), token_B[:, None], -1)
        token_B = jnp.where(done_B, PAD_ID, token_B)
        log_prob_B = jnp.where(done_B, 0.0, log_prob_B[:, 0])
        tokens_BL = jax.lax.dynamic_update_index_in_dim(tokens_BL, token_B, i, axis=1)
        log_probs_BL = jax.lax.dynamic_update_index_in_dim(log_probs_BL, log_prob_B, i, axis=1)
        logits_BV, cache = family.extend(cfg, model, token_B, starts_B, prompt_len + i, cache)
        return i + 1, logits_BV, cache, tokens_BL, log_probs_BL, done_B | (token_B == eos_id)

    def unfinished(loop):
        return (loop[0] < max_decode_len) & ~jnp.all(loop[-1])

    loop = (jnp.int32(0), logits_BV, cache, tokens_BL, log_probs_BL, done_B)
    _, _, _, tokens_BL, log_probs_BL, _ = jax.lax.while_loop(unfinished, step, loop)
    return tokens_BL, log_probs_BL


def pad_prompts(prompts: Sequence[Sequence[int]], prompt_length: int | None = None):
    """Left-padded rows [B, P] of start token + prompt, and each row's first slot [B].

    P is 1 + `prompt_length`, or 1 + the longest prompt if that is None.
    """
    rows = [[START_ID, *prompt] for prompt in prompts]
    longest = max(len(row) for row in rows)
    width = longest if prompt_length is None else prompt_length + 1
    if width < longest:
        raise ValueError(f"prompt_length={prompt_length} is shorter than the longest prompt "
                         f"({longest - 1} tokens).")
    tokens_BP = np.full((len(rows), width), PAD_ID, np.int32)
    starts_B = np.array([width - len(row) for row in rows], np.int32)
    for b, row in enumerate(rows):
        tokens_BP[b, starts_B[b]:] = row
    return tokens_BP, starts_B


def decode(spec: ModelSpec, params, prompts: Sequence[Sequence[int]], max_decode_len: int,
           eos_id: int | None, sampling: SamplingConfig = SamplingConfig(),
           rng: jax.Array | None = None, mesh: Mesh | None = None, *,
           prompt_length: int | None = None, rules=None) -> DecodeResult:
    """Continues each prompt (token ids, no start token) by up to `max_decode_len`
    tokens, stopping a row at `eos_id` (None: never).

    `rng` (a key; default key 0) drives sampling. `prompt_length` pads prompts to
    a fixed length so that batches share one compiled program. `rules` are the
    (param, activation) axis rules; default `partitioning.axis_rules()`.
    """
    if max_decode_len < 1 or not prompts:
        raise ValueError("decode needs at least one prompt and max_decode_len >= 1.")
    rules = _frozen_rules(rules)
    generate = _compiled_generate(spec.cfg, max_decode_len, sampling, mesh, rules)
    eos_id = -1 if eos_id is None else eos_id  # -1 matches no token
    tokens_BP, starts_B = pad_prompts(prompts, prompt_length)
    with _activation_sharding(mesh, rules):
        params = _place_params(spec, params, mesh, rules)
        tokens_BP, starts_B = _place_rows((tokens_BP, starts_B), mesh, rules)
        tokens_BL, log_probs_BL = generate(params, tokens_BP, starts_B, _key_data(rng),
                                           np.int32(eos_id))
    tokens_BL, log_probs_BL = np.asarray(tokens_BL), np.asarray(log_probs_BL)
    is_eos_BL = tokens_BL == eos_id
    lengths_B = np.where(is_eos_BL.any(axis=1), is_eos_BL.argmax(axis=1) + 1, max_decode_len)
    return DecodeResult(tokens_BL, log_probs_BL, log_probs_BL.sum(axis=1), lengths_B)


def score(spec: ModelSpec, params, inputs: Sequence[Sequence[int]],
          targets: Sequence[Sequence[int]], mesh: Mesh | None = None, *,
          length: int | None = None, rules=None) -> np.ndarray:
    """Log-likelihood [B] of each row's targets after its inputs (sum of the target
    tokens' log-probs). `length` pads rows to a fixed length (see `decode`)."""
    rules = _frozen_rules(rules)
    log_likelihood = _compiled_log_likelihood(spec.cfg, mesh, rules)
    batch = spec.family.example_batch(inputs, targets, length)
    with _activation_sharding(mesh, rules):
        params = _place_params(spec, params, mesh, rules)
        batch = dict(zip(batch, _place_rows(tuple(batch.values()), mesh, rules)))
        return np.asarray(log_likelihood(params, batch))


@functools.lru_cache(maxsize=16)
def _compiled_generate(cfg, max_decode_len, sampling, mesh, rules):
    generate = functools.partial(_generate, ModelSpec.create(cfg), max_decode_len=max_decode_len,
                                 sampling=sampling)
    return jax.jit(generate, out_shardings=_replicated(mesh))


@functools.lru_cache(maxsize=16)
def _compiled_log_likelihood(cfg, mesh, rules):
    log_likelihood = ModelSpec.create(cfg).score
    return jax.jit(log_likelihood, out_shardings=_replicated(mesh))


def _key_data(rng: jax.Array | None) -> np.ndarray:
    """The raw bits of a typed or legacy key (default: key 0), to pass into jit."""
    rng = jax.random.key(0) if rng is None else rng
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    return np.asarray(rng)


def _replicated(mesh):
    return None if mesh is None else partitioning.replicated(mesh)


def _frozen_rules(rules):
    """(param rules, activation rules) as nested tuples, so they can key a cache."""
    rules = partitioning.axis_rules() if rules is None else rules
    def freeze(table):
        return tuple((name, tuple(axes) if isinstance(axes, list) else axes)
                     for name, axes in table)
    return freeze(rules[0]), freeze(rules[1])


def _activation_sharding(mesh, rules):
    if mesh is None:
        return contextlib.nullcontext()
    return partitioning.activation_sharding(mesh, rules[1])


def _place_params(spec: ModelSpec, params, mesh, rules):
    """Params in their training shardings (a no-op for params already there)."""
    if mesh is None:
        return params
    return jax.device_put(params, partitioning.tree_shardings(
        spec.logical_axes, params, mesh, rules[0]))


def _place_rows(arrays, mesh, rules):
    """Host arrays [B, ...] as global arrays split over the `batch` logical axis."""
    if mesh is None:
        return tuple(jnp.asarray(x) for x in arrays)
    def place(x):
        axes = ("batch", "length")[:x.ndim]
        sharding = partitioning.named_sharding(axes, x.shape, mesh, rules[1])
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
    return tuple(place(x) for x in arrays)
