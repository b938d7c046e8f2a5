"""Divergence: anomalous steps are skipped, repeated ones roll back, hopeless runs stop."""

import json
import os

import jax
import numpy as np
import pytest

from t5x_lite.resilience.faults import FaultInjector
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


def _judge(steps, cfg=None):
    """Anomaly codes of (loss, grad norm) pairs fed in turn, and the health after them."""
    import jax.numpy as jnp

    from t5x_lite.resilience import divergence
    cfg, health, codes = cfg or divergence.DivergenceConfig(), divergence.init_health(), []
    for loss, grad_norm in steps:
        code, health = divergence.assess(health, jnp.float32(loss), jnp.float32(grad_norm), cfg)
        codes.append(int(code))
    return codes, health


def _noisy(values, scale=0.03, seed=0):
    return values * np.exp(scale * np.random.default_rng(seed).standard_normal(len(values)))


def test_a_loss_spike_is_judged_against_a_baseline_that_follows_the_loss():
    from t5x_lite.resilience import divergence
    falling = _noisy(5.0 * 0.98 ** np.arange(60))  # 5.0 down to 1.5
    history = list(zip(falling, _noisy(np.ones(60), seed=1)))
    codes, health = _judge(history)
    assert codes == [divergence.HEALTHY] * 60 and int(health["count"]) == 60
    current = falling[-1]
    # 1.6x the current loss, below the mean of the whole history: a spike all the same.
    assert 1.6 * current < falling.mean()
    codes, after = _judge(history + [(1.6 * current, 1.0)])
    assert codes[-1] == divergence.LOSS_SPIKE and int(after["count"]) == 60
    assert _judge(history + [(1.05 * current, 1.0)])[0][-1] == divergence.HEALTHY
    assert _judge(history + [(float("nan"), 1.0)])[0][-1] == divergence.NON_FINITE
    assert _judge(history + [(current, float("inf"))])[0][-1] == divergence.NON_FINITE


def test_a_gradient_norm_spike_counts_only_with_a_raised_loss():
    from t5x_lite.resilience import divergence
    flat = list(zip(_noisy(np.full(40, 2.0), 0.01), _noisy(np.ones(40), 0.05, seed=1)))
    codes, health = _judge(flat + [(2.0, 30.0)])
    assert codes[-1] == divergence.HEALTHY and int(health["count"]) == 41
    assert _judge(flat + [(2.2, 30.0)])[0][-1] == divergence.GRAD_NORM_SPIKE
    assert _judge(flat + [(2.2, 1.0)])[0][-1] == divergence.HEALTHY


def test_a_slowly_rising_loss_is_caught_as_a_drift():
    from t5x_lite.resilience import divergence
    flat = _noisy(np.full(40, 2.0), 0.02)
    rising = _noisy(2.0 * 1.01 ** np.arange(1, 41), 0.02, seed=1)  # +1% a step
    codes, _ = _judge(zip(np.concatenate([flat, rising]), np.ones(80)))
    flagged = [(step, code) for step, code in enumerate(codes) if code]
    assert flagged and flagged[0][1] == divergence.LOSS_DRIFT, flagged
    assert 40 < flagged[0][0] < 60, flagged


def _recovery_records(model_dir) -> list[dict]:
    return [json.loads(line) for line in (model_dir / "recovery.jsonl").read_text().splitlines()]


LADDER = ["--gin.CheckpointConfig.save_every=4", "--gin.DivergenceConfig.max_consecutive_skips=3",
          "--gin.DivergenceConfig.skip_batches=10", "--gin.DivergenceConfig.rollback_margin=0"]


def test_repeated_anomalies_roll_back_and_skip_the_bad_batches(tmp_path):
    bad = "--gin.FaultInjector.nan_loss_at_steps=(6, 7, 8, 9, 10, 11, 12)"
    result = run_cli(train_command(tmp_path, 16, bad, *LADDER))
    assert result.returncode == 0, result.stderr[-3000:]
    actions = [(r["step"], r["action"]) for r in _recovery_records(tmp_path)]
    assert actions == [(6, "skipped_update"), (7, "skipped_update"), (8, "checkpoint_deferred"),
                       (8, "skipped_update"), (8, "rollback_to_step_4")]
    assert _recovery_records(tmp_path)[-1]["batches_skipped"] == 10
    losses = losses_by_step(tmp_path)
    assert all(value is not None for value in losses[16])


def test_a_hopeless_run_stops_as_diverged(tmp_path):
    every = "--gin.FaultInjector.nan_loss_at_steps=" + str(tuple(range(6, 200)))
    result = run_cli(train_command(tmp_path, 60, every, *LADDER,
                                   "--gin.DivergenceConfig.max_rollbacks=2"))
    assert result.returncode == 77, result.stderr[-3000:]
    actions = [r["action"] for r in _recovery_records(tmp_path)]
    assert actions.count("rollback_to_step_4") == 1
    assert actions.count("rollback_lower_lr_to_step_4") == 1
    assert actions[-1] == "stopped_diverged"
    steps = [int(name) for name in os.listdir(tmp_path / "checkpoints") if name.isdigit()]
    assert steps == [4]  # nothing written while the anomalies went on


def test_a_divergence_before_the_first_checkpoint_rolls_back_to_the_initial_state(tmp_path):
    blow_up = ["--gin.FaultInjector.lr_factor_at_steps=(3,)",
               "--gin.FaultInjector.lr_factor=1e300"]
    result = run_cli(train_command(tmp_path, 16, *blow_up, *LADDER))
    assert result.returncode == 0, result.stderr[-3000:]
    records = _recovery_records(tmp_path)
    assert {"step": 4, "signal": "non_finite_params", "action": "checkpoint_not_written",
            "batches_skipped": 0} in records
    assert [r["action"] for r in records if r["action"].startswith("rollback")] == [
        "rollback_to_initial_state"], records
    assert records[-1]["batches_skipped"] == 10
    losses = losses_by_step(tmp_path)
    assert all(len(losses[step]) == 2 for step in range(1, 7))  # steps 1-6 ran twice
    assert losses[1][1] == pytest.approx(losses[1][0], rel=0.05)  # from the same init
    assert all(losses[step][-1] is not None for step in range(1, 17))
    assert losses[16][-1] < losses[1][-1]
    steps = [int(name) for name in os.listdir(tmp_path / "checkpoints") if name.isdigit()]
    assert min(steps) >= 8  # step 4's non-finite params were never written


def test_a_learning_rate_spike_rolls_back_before_it_and_skips_its_window(tmp_path):
    spike = ["--gin.FaultInjector.lr_factor_at_steps=(30,)", "--gin.FaultInjector.lr_factor=300",
             "--gin.DivergenceConfig.rollback_margin=2"]
    result = run_cli(train_command(tmp_path, 50, *spike, *LADDER[:-1]))
    assert result.returncode == 0, result.stderr[-3000:]
    records = _recovery_records(tmp_path)
    first = records[0]
    assert first["action"] == "skipped_update" and 30 < first["step"] <= 32, records
    rollback = [r for r in records if r["action"].startswith("rollback")]
    assert len(rollback) == 1 and rollback[0]["batches_skipped"] == 10, records
    restored = int(rollback[0]["action"].rsplit("_", 1)[1])
    assert restored < first["step"] - 2  # before the spike, by the margin

    losses = losses_by_step(tmp_path)
    before_spike = np.mean([losses[step][0] for step in range(26, 31)])
    assert losses[first["step"]][0] > 1.5 * before_spike  # the spike was real
    assert np.mean([losses[step][-1] for step in range(41, 51)]) < before_spike
    assert all(len(losses[step]) == 2 for step in range(restored + 1, rollback[0]["step"] + 1))

    goodput = json.loads((tmp_path / "goodput.jsonl").read_text())
    assert goodput["steps"]["rolled_back"] == rollback[0]["step"] + 1 - restored
    assert goodput["seconds"]["rolled_back"] > 0
    assert abs(sum(goodput["seconds"].values()) - goodput["wall_seconds"]) < 0.05


def test_rollbacks_are_counted_per_incident(tmp_path):
    from t5x_lite.resilience.divergence import NON_FINITE, DivergenceConfig
    from t5x_lite.resilience.recovery import Diverged, DivergenceLadder, RecoveryLog

    cfg = DivergenceConfig(max_consecutive_skips=2, max_rollbacks=1, rollback_margin=3,
                           rollbacks_reset_after=5)
    ladder = DivergenceLadder(cfg, RecoveryLog(str(tmp_path)))
    assert ladder.observe(10, NON_FINITE) is None and ladder.streak_open
    first = ladder.observe(11, NON_FINITE)
    assert (first.before, first.lower_lr) == (7, False) and not ladder.streak_open
    for step in range(12, 17):  # a whole healthy stretch closes the incident
        assert ladder.observe(step, 0) is None
    ladder.observe(20, NON_FINITE)
    assert ladder.observe(21, NON_FINITE).before == 17
    ladder.observe(22, 0)  # too short a healthy stretch: the same incident
    ladder.observe(23, NON_FINITE)
    with pytest.raises(Diverged):
        ladder.observe(24, NON_FINITE)
