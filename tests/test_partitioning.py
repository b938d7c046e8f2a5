"""Sharding: the same losses on every mesh, rule resolution, microbatching."""

import jax
import numpy as np
import pytest

from t5x_lite.parallel import partitioning
from t5x_lite.errors import ConfigError
from tests.helpers import TINY, packed_batch, tiny_training

MESHES = [(1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 4, 2)]


def run_losses(mesh_shape, num_steps=10, num_microbatches=1, cfg=TINY, name="adamw"):
    with tiny_training(mesh_shape, 3, num_steps, cfg, name, num_microbatches) as (
            state, step, batch_sharding):
        losses = []
        for i in range(num_steps):
            batch = {k: jax.device_put(v, batch_sharding)
                     for k, v in packed_batch(8, 32, cfg.vocab_size, seed=i % 2).items()}
            state, metrics = step(state, batch, i)
            losses.append(float(metrics["loss"]))
    return np.array(losses), state


def test_losses_match_across_meshes():
    reference, _ = run_losses(MESHES[0])
    assert reference[-1] < reference[0]
    for mesh_shape in MESHES[1:]:
        losses, state = run_losses(mesh_shape)
        np.testing.assert_allclose(losses, reference, rtol=1e-5, err_msg=str(mesh_shape))


def test_params_are_sharded_as_the_rules_say():
    _, state = run_losses((2, 2, 2), num_steps=1)
    gate = state["params"]["blocks"]["mlp"]["gate_DF"]
    assert gate.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert state["step"].sharding.spec == jax.sharding.PartitionSpec()
    adam_mu = state["opt_state"][1][0].mu["blocks"]["mlp"]["gate_DF"]
    assert adam_mu.sharding == gate.sharding


def test_gradient_accumulation_matches_one_big_batch():
    whole, _ = run_losses((2, 2, 2), num_steps=4)
    accumulated, _ = run_losses((2, 2, 2), num_steps=4, num_microbatches=2)
    np.testing.assert_allclose(accumulated, whole, rtol=1e-5)


def test_adafactor_trains():
    losses, _ = run_losses((2, 2, 2), num_steps=6, name="adafactor")
    assert losses[-1] < losses[0]


def test_mesh_shape_resolution():
    assert partitioning.resolve_mesh_shape((-1, 2, 1), 8) == (4, 2, 1)
    with pytest.raises(ConfigError, match="does not fit 8 devices"):
        partitioning.resolve_mesh_shape((3, 1, 1), 8)
    with pytest.raises(ConfigError, match="at most one -1"):
        partitioning.resolve_mesh_shape((-1, -1, 1), 8)


def test_a_mesh_axis_that_does_not_divide_is_dropped():
    mesh = partitioning.create_mesh((1, 4, 2))
    spec = partitioning.logical_to_spec(("embed", "kv_heads"), (32, 1), mesh,
                                        partitioning.DEFAULT_PARAM_RULES)
    assert spec == jax.sharding.PartitionSpec("fsdp", None)
