"""Orbax checkpoints: bit-exact round trips, resharding, retention, clear errors."""

import dataclasses

import jax
import numpy as np
import pytest

from t5x_lite.parallel import partitioning
from t5x_lite.train import optim
from t5x_lite.checkpoints.manager import CheckpointConfig, Checkpointer, restore_params
from t5x_lite.resilience.divergence import init_health
from t5x_lite.errors import ConfigError
from t5x_lite.models.spec import ModelSpec
from t5x_lite.train.state import init_state, state_shardings
from tests.helpers import TINY
from tests.test_partitioning import run_losses


def _target(mesh_shape, cfg=TINY):
    mesh = partitioning.create_mesh(mesh_shape, devices=jax.devices()[:int(np.prod(mesh_shape))])
    spec = ModelSpec.create(cfg)
    optimizer = optim.create_optimizer(optim.create_schedule(warmup_steps=3, decay_steps=10),
                                       model_no_decay=spec.family.no_decay(cfg))
    abstract, shardings = state_shardings(spec, optimizer, mesh,
                                          partitioning.DEFAULT_PARAM_RULES)
    return spec, optimizer, abstract, shardings


def _assert_trees_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.fixture(scope="module")
def trained_state():
    _, state = run_losses((2, 2, 2), num_steps=3)
    return state


def _save(tmp_path, state, step=3, meta=None):
    checkpointer = Checkpointer(str(tmp_path), CheckpointConfig(save_every=1))
    checkpointer.save(step, state, meta or {"data_position": step})
    checkpointer.wait()
    return checkpointer


def test_round_trip_is_bit_exact(tmp_path, trained_state):
    checkpointer = _save(tmp_path, trained_state)
    _, _, abstract, shardings = _target((2, 2, 2))
    restored, meta = checkpointer.restore(3, abstract, shardings)
    _assert_trees_equal(restored, trained_state)
    assert meta == {"data_position": 3}
    assert restored["params"]["embed_VD"].sharding == shardings["params"]["embed_VD"]


@pytest.mark.parametrize("mesh_shape", [(4, 1, 1), (8, 1, 1), (1, 2, 2)])
def test_restore_onto_another_mesh(tmp_path, trained_state, mesh_shape):
    checkpointer = _save(tmp_path, trained_state)
    _, _, abstract, shardings = _target(mesh_shape)
    restored, _ = checkpointer.restore(3, abstract, shardings)
    _assert_trees_equal(restored, trained_state)
    assert len(restored["params"]["embed_VD"].sharding.device_set) == int(np.prod(mesh_shape))


def test_initial_checkpoint_restores_params_only(tmp_path, trained_state):
    _save(tmp_path, trained_state)
    spec, optimizer, abstract, shardings = _target((4, 1, 1))
    for path in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / "3"):
        params = restore_params(str(path), abstract["params"], shardings["params"])
        _assert_trees_equal(params, trained_state["params"])
    state = init_state(spec, optimizer, shardings, seed=0, params=params)
    assert int(state["step"]) == 0


def test_shape_mismatch_is_a_clear_error(tmp_path, trained_state):
    checkpointer = _save(tmp_path, trained_state)
    wider = dataclasses.replace(TINY, mlp_dim=128)
    _, _, abstract, shardings = _target((2, 2, 2), cfg=wider)
    with pytest.raises(ConfigError, match=r"down_FD.*shape \(2, 64, 32\) in the checkpoint "
                                          r"but \(2, 128, 32\) in the model"):
        checkpointer.restore(3, abstract, shardings)
    with pytest.raises(ConfigError, match="does not match the model"):
        restore_params(str(tmp_path), abstract["params"], shardings["params"])


def test_retention_keeps_last_k_and_every_mth(tmp_path, trained_state):
    checkpointer = Checkpointer(str(tmp_path), CheckpointConfig(save_every=1, keep=2,
                                                                keep_every=3))
    for step in range(1, 8):
        checkpointer.save(step, trained_state, {"data_position": step})
    checkpointer.wait()
    assert sorted(checkpointer.manager.all_steps()) == [3, 6, 7]


def test_missing_initial_checkpoint_is_a_clear_error(tmp_path):
    _, _, abstract, shardings = _target((1, 1, 1))
    with pytest.raises(ConfigError, match="INITIAL_CHECKPOINT_PATH=.* does not exist"):
        restore_params(str(tmp_path / "nope"), abstract["params"], shardings["params"])


def test_divergence_statistics_of_an_older_layout_start_afresh(tmp_path, trained_state, capfd):
    older = {**trained_state, "health": {"loss": np.full((100,), 2.0, np.float32),
                                         "grad_norm": np.ones((100,), np.float32),
                                         "count": np.int32(7), "lr_scale": np.float32(0.5)}}
    checkpointer = _save(tmp_path, older)
    _, _, abstract, shardings = _target((2, 2, 2))
    restored, _ = checkpointer.restore(3, abstract, shardings)
    _assert_trees_equal(restored["params"], trained_state["params"])
    _assert_trees_equal(restored["opt_state"], trained_state["opt_state"])
    _assert_trees_equal(restored["health"], init_health())
    assert "divergence statistics have an older layout" in capfd.readouterr().err
