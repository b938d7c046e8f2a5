"""Divergence: anomalous steps are skipped, repeated ones roll back, hopeless runs stop."""

import json
import os

import jax
import numpy as np

from t5x_lite.faults import FaultInjector
from tests.cli import losses_by_step, run_cli, train_command
from tests.helpers import TINY, packed_batch, tiny_training


def test_nan_step_leaves_params_and_optimizer_state_untouched():
    with tiny_training((2, 2, 2), 2, 10, faults=FaultInjector(nan_loss_at_steps=(3,))) as (
            state, train_step, batch_sharding):
        batch = {k: jax.device_put(v, batch_sharding)
                 for k, v in packed_batch(8, 32, TINY.vocab_size).items()}
        snapshots, metrics = [], []
        for position in range(5):
            state, step_metrics = train_step(state, batch, position)
            snapshots.append(jax.device_get(state))
            metrics.append(jax.device_get(step_metrics))
    before, after = snapshots[1], snapshots[2]
    assert int(after["step"]) == 3
    jax.tree.map(np.testing.assert_array_equal, before["params"], after["params"])
    jax.tree.map(np.testing.assert_array_equal, before["opt_state"], after["opt_state"])
    assert [int(m["anomaly"]) for m in metrics] == [0, 0, 1, 0, 0]
    assert np.isnan(metrics[2]["loss"])
    assert all(np.isfinite(m["loss"]) for i, m in enumerate(metrics) if i != 2)
    assert metrics[4]["loss"] < metrics[1]["loss"]


def test_a_skipped_step_is_recorded(tmp_path):
    result = run_cli(train_command(tmp_path, 6, "--gin.FaultInjector.nan_loss_at_steps=(3,)"))
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "recovery.jsonl").read_text().splitlines()]
    assert records == [{"step": 3, "signal": "non_finite_loss_or_gradients",
                        "action": "skipped_update", "batches_skipped": 0}]
    assert "recovery: step 3" in result.stderr
    losses = losses_by_step(tmp_path)
    assert losses[3] == [None]
    assert all(losses[step][0] is not None for step in (1, 2, 4, 5, 6))


def test_watchdog_ends_a_hung_run_with_stacks(tmp_path):
    result = run_cli(train_command(tmp_path, 20, "--gin.FaultInjector.hang_at_step=4",
                                   "--gin.WatchdogConfig.floor_seconds=3",
                                   "--gin.WatchdogConfig.factor=5"), timeout=300)
    assert result.returncode == 76, result.stderr[-3000:]
    assert "watchdog: no step completed" in result.stderr
    assert "in maybe_hang" in result.stderr  # the dumped stack shows where it hung
    assert max(losses_by_step(tmp_path)) <= 4


def test_spikes_are_judged_against_the_window():
    import jax.numpy as jnp

    from t5x_lite import divergence
    cfg = divergence.DivergenceConfig(window=8, min_history=4, z_threshold=6.0, min_ratio=1.5)
    health = divergence.init_health(8)
    for loss in (2.0, 2.1, 1.9, 2.0, 2.05):
        code, health = divergence.assess(health, jnp.float32(loss), jnp.float32(1.0), cfg)
        assert int(code) == divergence.HEALTHY
    assert int(health["count"]) == 5
    code, after = divergence.assess(health, jnp.float32(9.0), jnp.float32(1.0), cfg)
    assert int(code) == divergence.LOSS_SPIKE and int(after["count"]) == 5
    code, _ = divergence.assess(health, jnp.float32(2.0), jnp.float32(50.0), cfg)
    assert int(code) == divergence.GRAD_NORM_SPIKE
    code, _ = divergence.assess(health, jnp.float32(jnp.inf), jnp.float32(1.0), cfg)
    assert int(code) == divergence.NON_FINITE
    code, _ = divergence.assess(health, jnp.float32(2.2), jnp.float32(1.1), cfg)
    assert int(code) == divergence.HEALTHY


def _recovery_records(model_dir) -> list[dict]:
    return [json.loads(line) for line in (model_dir / "recovery.jsonl").read_text().splitlines()]


LADDER = ["--gin.CheckpointConfig.save_every=4", "--gin.DivergenceConfig.max_consecutive_skips=3",
          "--gin.DivergenceConfig.skip_batches=10"]


def test_repeated_anomalies_roll_back_and_skip_the_bad_batches(tmp_path):
    bad = "--gin.FaultInjector.nan_loss_at_steps=(6, 7, 8, 9, 10, 11, 12)"
    result = run_cli(train_command(tmp_path, 16, bad, *LADDER))
    assert result.returncode == 0, result.stderr[-3000:]
    actions = [(r["step"], r["action"]) for r in _recovery_records(tmp_path)]
    assert actions == [(6, "skipped_update"), (7, "skipped_update"), (8, "skipped_update"),
                       (8, "rollback_to_step_8")]
    assert _recovery_records(tmp_path)[-1]["batches_skipped"] == 10
    losses = losses_by_step(tmp_path)
    assert all(value is not None for value in losses[16])


def test_a_hopeless_run_stops_as_diverged(tmp_path):
    every = "--gin.FaultInjector.nan_loss_at_steps=" + str(tuple(range(3, 200)))
    result = run_cli(train_command(tmp_path, 60, every, *LADDER,
                                   "--gin.DivergenceConfig.max_rollbacks=2"))
    assert result.returncode == 77, result.stderr[-3000:]
    actions = [r["action"] for r in _recovery_records(tmp_path)]
    assert "rollback_to_step_4" in actions[3]
    assert any(a.startswith("rollback_lower_lr") for a in actions)
    assert actions[-1] == "stopped_diverged"


def test_a_checkpoint_with_non_finite_params_is_never_written(tmp_path):
    blow_up = ["--gin.FaultInjector.lr_factor_at_steps=(3,)",
               "--gin.FaultInjector.lr_factor=1e300"]
    result = run_cli(train_command(tmp_path, 30, *blow_up, *LADDER))
    assert result.returncode == 77, result.stderr[-3000:]
    records = _recovery_records(tmp_path)
    assert {"step": 4, "signal": "non_finite_params", "action": "checkpoint_not_written",
            "batches_skipped": 0} in records
    assert records[-1]["action"] == "stopped_diverged"
    assert not [n for n in os.listdir(tmp_path / "checkpoints") if n.isdigit()]
