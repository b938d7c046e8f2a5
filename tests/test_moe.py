"""The mixture-of-experts family: dispatch against a dense reference, capacity drops in
the documented order, the same losses on every mesh (expert parallelism included),
routing metrics, and parameter and FLOP counts."""

import dataclasses
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from t5x_lite.errors import ConfigError
from t5x_lite.inference import decoding
from t5x_lite.models.moe import MOE
from t5x_lite.models.moe import experts as experts_lib
from t5x_lite.models.moe.config import MoEConfig
from t5x_lite.models.spec import ModelSpec
from t5x_lite.parallel import partitioning
from tests.cli import assert_bitwise_resume, hang_then_kill, run_cli, saved_state
from tests.helpers import packed_batch, tiny_training

TINY_MOE = MoEConfig(num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2, head_dim=8,
                     vocab_size=128, num_experts=8, experts_per_token=2, expert_mlp_dim=16)


def _experts(cfg=TINY_MOE, seed=0) -> experts_lib.RoutedExperts:
    return experts_lib.RoutedExperts(cfg, nnx.Rngs(seed))


def dense_reference(layer: experts_lib.RoutedExperts, x_BTD):
    """Every expert on every token, masked by the routing weights."""
    B, T, D = x_BTD.shape
    x_ND = x_BTD.reshape(B * T, D)
    routing = layer.router(x_ND)
    rows_N1 = jnp.arange(B * T)[:, None]
    mask_NE = jnp.zeros((B * T, layer.cfg.num_experts)).at[rows_N1, routing.expert_NK].set(
        routing.weight_NK)
    gate_NEF = jnp.einsum("ND,EDF->NEF", x_ND, layer.gate_EDF[...])
    up_NEF = jnp.einsum("ND,EDF->NEF", x_ND, layer.up_EDF[...])
    out_NED = jnp.einsum("NEF,EFD->NED", jax.nn.silu(gate_NEF) * up_NEF, layer.down_EFD[...])
    return jnp.einsum("NED,NE->ND", out_NED, mask_NE).reshape(B, T, D)


@pytest.mark.parametrize("router", ["softmax", "sigmoid"])
@pytest.mark.parametrize("dispatch", ["dropless", "capacity"])
def test_dispatch_equals_the_dense_reference_in_outputs_and_gradients(router, dispatch):
    cfg = dataclasses.replace(TINY_MOE, router=router, capacity_factor=8.0)
    layer = _experts(cfg)
    x_BTD = jax.random.normal(jax.random.key(1), (2, 12, cfg.embed_dim))
    valid_BT = jnp.ones((2, 12), jnp.bool_)
    graphdef, state = nnx.split(layer)

    def output(state, reference: bool):
        merged = nnx.merge(graphdef, state)
        if reference:
            return dense_reference(merged, x_BTD)
        return merged(x_BTD, valid_BT, dispatch)[0]

    ours, reference = output(state, False), output(state, True)
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)
    grads = [jax.grad(lambda s, r=r: jnp.sum(output(s, r) ** 2))(state) for r in (False, True)]
    for ours_grad, reference_grad in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(ours_grad, reference_grad, rtol=1e-5, atol=1e-6)


def test_capacity_drops_later_choices_then_later_tokens_beyond_each_buffer():
    """Assignments fill each expert's buffer all first choices first, each in token order."""
    E, D, F = 2, 4, 3
    weights = experts_lib.ExpertWeights(
        *(jax.random.normal(jax.random.key(i), shape) for i, shape in
          enumerate([(E, D, F), (E, D, F), (E, F, D)])))
    x_ND = jax.random.normal(jax.random.key(9), (4, D))
    # Capacity 2. Expert 0 is chosen first by tokens 0, 2, 3 and second by token 1: it
    # keeps tokens 0 and 2. Expert 1 is chosen first by token 1, then second by tokens 0,
    # 2, 3: it keeps tokens 1 and 0.
    expert_NK = jnp.array([[0, 1], [1, 0], [0, 1], [0, 1]], jnp.int32)
    weight_NK = jnp.full((4, 2), 0.5)
    valid_N = jnp.array([True, True, True, True])
    out_ND, kept_NK = experts_lib.with_capacity(x_ND, expert_NK, weight_NK, weights, 2, valid_N)
    np.testing.assert_array_equal(kept_NK, [[True, True], [True, False], [True, False],
                                            [False, False]])
    full_ND = experts_lib.dropless(x_ND, expert_NK, weight_NK * kept_NK, weights)
    np.testing.assert_allclose(out_ND, full_ND, rtol=1e-5, atol=1e-6)


def test_padding_takes_no_capacity_and_counts_in_no_statistic():
    cfg = dataclasses.replace(TINY_MOE, dispatch="capacity", capacity_factor=1.0)
    layer = _experts(cfg)
    x_BTD = jax.random.normal(jax.random.key(2), (2, 8, cfg.embed_dim))
    valid_BT = jnp.arange(8)[None, :] < jnp.array([[8], [3]])
    _, stats = layer(x_BTD, valid_BT, "capacity")
    assert float(stats["tokens"]) == 11
    assert float(jnp.sum(stats["load_E"])) == 11 * cfg.experts_per_token


def test_the_dropped_fraction_is_reported():
    cfg = dataclasses.replace(TINY_MOE, dispatch="capacity", capacity_factor=0.25)
    spec = ModelSpec.create(cfg)
    batch = packed_batch(4, 32, cfg.vocab_size, seed=0)
    sums = jax.jit(spec.loss)(spec.init_params(0), batch)
    dropped = float(sums.aux["dropped_fraction"] / sums.weight)
    # Buffers hold a quarter of the mean load, so at least three quarters are dropped.
    assert 0.75 <= dropped < 1.0
    ample = ModelSpec.create(dataclasses.replace(cfg, capacity_factor=8.0))
    sums = jax.jit(ample.loss)(ample.init_params(0), batch)
    assert float(sums.aux["dropped_fraction"]) == 0.0


# --- training on meshes ---------------------------------------------------------------------

@functools.cache
def _initial_params(cfg) -> dict:
    return jax.tree.map(np.asarray, ModelSpec.create(cfg).init_params(0))


def run_losses(cfg, mesh_shape, num_steps=10):
    with tiny_training(mesh_shape, 3, num_steps, cfg, params=_initial_params(cfg)) as (
            state, step, batch_sharding):
        losses = []
        for i in range(num_steps):
            batch = packed_batch(8, 32, cfg.vocab_size, seed=i % 2)
            state, metrics = step(state, jax.device_put(batch, batch_sharding), i)
            losses.append(float(metrics["loss"]))
    return np.array(losses)


@pytest.mark.parametrize("dispatch", ["dropless", "capacity"])
def test_losses_match_across_expert_parallel_meshes(dispatch):
    # Capacity high enough that nothing drops: the meshes then agree exactly.
    cfg = dataclasses.replace(TINY_MOE, dispatch=dispatch, capacity_factor=8.0)
    reference = run_losses(cfg, (2, 4, 1, 1))  # expert parallelism 1
    assert np.all(np.isfinite(reference)) and reference[-1] < reference[0]
    for mesh_shape in [(4, 1, 1, 2), (1, 2, 1, 4), (1, 1, 1, 8)]:
        np.testing.assert_allclose(run_losses(cfg, mesh_shape), reference, rtol=1e-5,
                                   err_msg=str(mesh_shape))


@pytest.mark.parametrize("all_to_all", [True, False])
def test_capacity_buffers_go_by_all_to_all_to_the_devices_holding_their_experts(all_to_all):
    """On an expert-parallel mesh the capacity dispatch exchanges tokens (or, switched off,
    gathers the weights); with nothing dropped, the output is the single-device one."""
    cfg = dataclasses.replace(TINY_MOE, dispatch="capacity", capacity_factor=8.0,
                              expert_all_to_all=all_to_all)
    graphdef, state = nnx.split(_experts(cfg))
    x_BTD = jax.random.normal(jax.random.key(3), (8, 8, cfg.embed_dim))
    valid_BT = jnp.ones((8, 8), jnp.bool_)

    def layer(state, x_BTD):
        return nnx.merge(graphdef, state)(x_BTD, valid_BT, "capacity")[0]

    mesh = partitioning.create_mesh((1, 2, 2, 2))  # FSDP and tensor parallelism beside EP
    rules = partitioning.axis_rules()[1]
    with partitioning.activation_sharding(mesh, rules):
        compiled = jax.jit(layer).lower(state, x_BTD).compile()
    assert ("all-to-all" in compiled.as_text()) == all_to_all
    np.testing.assert_allclose(compiled(state, x_BTD), layer(state, x_BTD), rtol=1e-5,
                               atol=1e-6)


# --- decoding -----------------------------------------------------------------------------

def _next_token(logits_fn, params, sequence, width: int = 16) -> int:
    """The argmax of a full forward pass after `sequence`, one row right-padded to `width`
    (causal: the padding after it changes nothing)."""
    tokens = np.zeros((1, width), np.int32)
    tokens[0, :len(sequence) + 1] = [decoding.START_ID, *sequence]
    batch = {"decoder_input_tokens": tokens,
             "decoder_segment_ids": (np.arange(width) <= len(sequence)).astype(np.int32)[None],
             "decoder_positions": np.arange(width, dtype=np.int32)[None]}
    return int(np.argmax(np.asarray(logits_fn(params, batch))[0, len(sequence)]))


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scanned", "unscanned"])
def test_cached_greedy_decoding_equals_full_forward_argmax_after_dense_layers(scan_layers):
    cfg = dataclasses.replace(TINY_MOE, num_layers=3, first_dense_layers=1, mlp_dim=48,
                              num_shared_experts=1, scan_layers=scan_layers)
    spec = ModelSpec.create(cfg)
    params = spec.init_params(0)
    assert ("dense_blocks" in params) == scan_layers
    prompts, steps = [[5, 9, 13, 21], [7, 8]], 6
    result = decoding.decode(spec, params, prompts, steps, eos_id=None)
    logits_fn = jax.jit(spec.logits)
    for prompt, tokens in zip(prompts, result.tokens):
        expected = []
        for _ in range(steps):
            expected.append(_next_token(logits_fn, params, [*prompt, *expected]))
        np.testing.assert_array_equal(tokens, expected)


# --- counts and configuration ---------------------------------------------------------------

def test_active_parameters_count_k_of_e_experts_plus_shared():
    cfg = dataclasses.replace(TINY_MOE, num_shared_experts=1)
    total, active = MOE.param_count(cfg), MOE.param_count(cfg, active=True)
    per_expert = 3 * cfg.embed_dim * cfg.expert_mlp_dim
    assert total - active == cfg.num_layers * (cfg.num_experts - cfg.experts_per_token) * per_expert
    dense = dataclasses.replace(cfg, num_experts=2, experts_per_token=2)
    assert MOE.param_count(dense, active=True) == MOE.param_count(dense)
    first_dense = dataclasses.replace(cfg, num_layers=3, first_dense_layers=1)
    assert MOE.param_count(first_dense) - MOE.param_count(first_dense, active=True) == (
        2 * (cfg.num_experts - cfg.experts_per_token) * per_expert)


def test_bad_routing_settings_are_refused():
    with pytest.raises(ConfigError, match="experts_per_token=9"):
        MoEConfig(num_experts=8, experts_per_token=9)
    with pytest.raises(ConfigError, match="dispatch='sparse'"):
        MoEConfig(dispatch="sparse")


# --- loss-free balancing ----------------------------------------------------------------------

def test_loss_free_balancing_moves_each_router_bias_towards_the_mean_load():
    cfg = dataclasses.replace(TINY_MOE, bias_update_rate=0.01)
    spec = ModelSpec.create(cfg)
    load_LE = jnp.array([[4.0, 0, 2, 2, 0, 0, 0, 8], [2.0] * 8])
    params = spec.init_params(0)
    moved = spec.after_step(params, {"load_LE": load_LE})
    bias_LE = moved["blocks"]["experts"]["router"]["router_bias_E"]
    np.testing.assert_allclose(bias_LE[0], 0.01 * np.sign(2.0 - load_LE[0]))
    np.testing.assert_array_equal(bias_LE[1], 0.0)
    assert "router_bias_E" not in str(jax.tree_util.tree_structure(
        ModelSpec.create(TINY_MOE).init_params(0)))


def test_the_train_step_sets_the_router_bias_from_the_load_alone():
    cfg = dataclasses.replace(TINY_MOE, bias_update_rate=0.01, load_balance_loss=0.0)
    with tiny_training((1, 1, 1), 3, 3, cfg, params=_initial_params(cfg)) as (
            state, step, batch_sharding):
        for i in range(3):
            state, _ = step(state, jax.device_put(packed_batch(8, 32, cfg.vocab_size, seed=i),
                                                  batch_sharding), i)
        bias_LE = np.asarray(state["params"]["blocks"]["experts"]["router"]["router_bias_E"])
    # Three steps of +-0.01 (0 where an expert had exactly the mean load).
    steps_LE = np.round(bias_LE / 0.01)
    np.testing.assert_allclose(bias_LE, 0.01 * steps_LE, atol=1e-6)
    assert np.abs(steps_LE).max() <= 3 and np.abs(steps_LE).sum() > 0


# mistralai/Mixtral-8x7B-v0.1: 46,702,792,704 parameters, 12.9B active; Qwen/Qwen3-30B-A3B:
# 30,532,122,624 parameters, 3.3B active.
@pytest.mark.parametrize("size, vocab, total, active", [
    ("mixtral_8x7b", 32000, 46_702_792_704, 12_879_925_248),
    ("qwen3_30b_a3b", 151936, 30_532_122_624, 3_353_032_704)])
def test_published_sizes_have_their_parameter_counts(size, vocab, total, active):
    import gin
    from t5x_lite.config import gin_config
    from t5x_lite.config.configurables import register_configurables
    gin.clear_config()
    register_configurables()
    gin_config.parse([f"models/moe/{size}.gin"], [])
    try:
        cfg = MoEConfig().with_vocab(vocab)
    finally:
        gin.clear_config()
    assert MOE.param_count(cfg) == total
    assert MOE.param_count(cfg, active=True) == active


# --- load balancing on the embedded corpus --------------------------------------------------

def _final_imbalance(cfg, steps=200) -> float:
    """Max / mean expert load over the last 20 of `steps` steps on the embedded corpus."""
    from t5x_lite.pipeline import input_pipeline
    batches = input_pipeline.train_batches(
        input_pipeline.DataConfig("embedded", {"targets": 32}, 8), 0, 0, 1)
    imbalance = []
    with tiny_training((1, 1, 1), 10, steps, cfg) as (state, step, batch_sharding):
        for i in range(steps):
            state, metrics = step(state, jax.device_put(next(batches), batch_sharding), i)
            imbalance.append(float(metrics["aux"]["load_imbalance"]))
    return float(np.mean(imbalance[-20:]))


def test_balancing_keeps_the_expert_load_even_where_no_balancing_does_not():
    """Measured: about 3.6 unbalanced, 1.5 with either balancing (8 experts, top 2)."""
    cfg = dataclasses.replace(TINY_MOE, vocab_size=384, load_balance_loss=0.0, router_z_loss=0.0)
    assert _final_imbalance(cfg) > 2.5
    assert _final_imbalance(dataclasses.replace(cfg, load_balance_loss=0.01)) < 2.0
    assert _final_imbalance(dataclasses.replace(cfg, bias_update_rate=0.001)) < 2.0


# --- SIGKILL and resume ---------------------------------------------------------------------

def test_sigkill_resume_with_router_biases_is_bitwise_identical(tmp_path):
    """The loss-free balancing biases are checkpointed with the params: a run killed and
    resumed on an expert-parallel mesh repeats the uninterrupted run exactly."""
    def command(model_dir, *extra):
        return [sys.executable, "-m", "t5x_lite", "train", "--gin_file=models/moe/tiny.gin",
                "--gin_file=runs/pretrain.gin", f"--gin.MODEL_DIR='{model_dir}'",
                "--gin.TRAIN_STEPS=12", "--gin.BATCH_SIZE=8",
                "--gin.TASK_FEATURE_LENGTHS={'targets': 32}", "--gin.MESH_SHAPE=(1, 2, 1, 2)",
                "--gin.MoEConfig.bias_update_rate=0.01", "--gin.train.eval_every=None",
                "--gin.train.log_every=1", "--gin.CheckpointConfig.save_every=4", *extra]

    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    result = run_cli(command(reference_dir), num_devices=4)
    assert result.returncode == 0, result.stderr[-3000:]
    hang_then_kill(command(resumed_dir, "--gin.FaultInjector.hang_at_step=7"), resumed_dir)
    result = run_cli(command(resumed_dir), num_devices=4)
    assert result.returncode == 0 and "restored step 4" in result.stderr, result.stderr[-3000:]
    assert_bitwise_resume(resumed_dir, reference_dir, 12, repeated_step=5)
    bias = saved_state(reference_dir, 12)["params"]["blocks"]["experts"]["router"]["router_bias_E"]
    assert np.abs(np.asarray(bias)).sum() > 0
