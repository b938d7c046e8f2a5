"""A smoke scaling sweep through the real trainer: two budgets of three sizes, killed after
its first run and continued without training that run again, then fitted."""

import json
import math
import os
import signal
import subprocess
import sys
import time

from tests.cli import assert_one_line_error, cli_env, run_cli

SWEEP = [sys.executable, "-m", "t5x_lite", "scaling", "sweep",
         "--gin_file=models/decoder/tiny.gin", "--gin_file=runs/pretrain.gin",
         # Heads of 8 without grouping, so that sizes come in small steps.
         "--gin.DecoderConfig.num_layers=4", "--gin.DecoderConfig.embed_dim=64",
         "--gin.DecoderConfig.num_heads=8", "--gin.DecoderConfig.num_kv_heads=8",
         "--gin.DecoderConfig.head_dim=8", "--gin.DecoderConfig.mlp_dim=256",
         "--gin.BATCH_SIZE=16", "--gin.TASK_FEATURE_LENGTHS={'targets': 64}",
         "--gin.train.eval_steps=2", "--gin.train.log_every=50",
         "--gin.CheckpointConfig.save_every=100", "--budgets=2e10,4e10", "--per_budget=3"]


def _records(out_dir) -> dict[str, dict]:
    if not out_dir.exists():
        return {}
    return {name: json.loads((out_dir / name / "scaling_run.json").read_text())
            for name in sorted(os.listdir(out_dir))
            if (out_dir / name / "scaling_run.json").exists()}


def _starts(out_dir, name: str) -> int:
    """How many times the run's trainer started (each start prints its parameter count)."""
    return (out_dir / name / "train.log").read_text().count("initialized from scratch")


def test_a_killed_sweep_continues_without_rerunning_finished_runs(tmp_path):
    out_dir = tmp_path / "sweep"
    command = [*SWEEP, f"--out={out_dir}"]
    sweep = subprocess.Popen(command, env=cli_env(1), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    while not _records(out_dir) and sweep.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    first = _records(out_dir)
    assert len(first) == 1, sweep.stderr.read()[-2000:]

    result = run_cli(command, num_devices=1, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    records = _records(out_dir)
    assert len(records) == 6 and set(first) <= set(records)
    assert all(_starts(out_dir, name) == 1 for name in first)  # not trained again
    for budget in (2e10, 4e10):
        curve = sorted((r for r in records.values() if r["budget"] == budget),
                       key=lambda r: r["params"])
        assert len(curve) == 3 and curve[-1]["params"] > 4 * curve[0]["params"]
        for r in curve:
            assert budget * 0.95 < r["flops"] <= budget
            assert r["flops"] == r["tokens"] * r["flops_per_token"]
            assert r["non_embedding_params"] < r["params"]
            assert 0 < r["eval_loss"] < 7
    for name, r in records.items():  # each run's schedule ran its own steps
        metrics = [json.loads(line) for line in (out_dir / name / "metrics.jsonl").open()]
        assert max(m["step"] for m in metrics) == r["steps"]
        assert [m["eval_loss"] for m in metrics if "eval_loss" in m][-1] == r["eval_loss"]

    fitted = run_cli([sys.executable, "-m", "t5x_lite", "scaling", "fit",
                      f"--sweep_dir={out_dir}", "--bootstrap=10"], num_devices=1)
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    report = json.loads((out_dir / "fit.json").read_text())
    assert report["runs"] == 6 and "approach 2: N* ~ C^" in fitted.stdout
    assert [m["C"] for m in report["approach_2"]["minima"]] == [2e10, 4e10]
    law = report["approach_3"]
    assert all(math.isfinite(law[name]) and law["intervals_90"][name][0]
               <= law["intervals_90"][name][1] for name in ("E", "A", "B", "alpha", "beta"))


def test_a_budget_the_sizes_cannot_cover_is_refused_in_one_line(tmp_path):
    command = [*SWEEP[:-2], "--budgets=1e30", "--gin.SizeRule.max_layers=8",
               f"--out={tmp_path / 'sweep'}"]
    assert_one_line_error(run_cli(command, num_devices=1), "scaling",
                          "budget 1e+30 FLOPs: 0 sizes lie between")
    assert not (tmp_path / "sweep").exists()
