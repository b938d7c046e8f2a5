"""`ProfileConfig` traces a window of train steps with jax.profiler."""

import glob
import os

from tests.cli import run_cli, train_command


def test_profile_window_writes_a_trace_of_the_train_step(tmp_path):
    result = run_cli(train_command(tmp_path, 6, "--gin.ProfileConfig.first_step=3",
                                   "--gin.ProfileConfig.num_steps=2"))
    assert result.returncode == 0, result.stderr[-2000:]
    traces = glob.glob(os.path.join(tmp_path, "profile", "plugins", "profile", "*",
                                    "*.xplane.pb"))
    assert len(traces) == 1
    with open(traces[0], "rb") as f:
        assert b"train_step" in f.read()


def test_no_profile_by_default(tmp_path):
    result = run_cli(train_command(tmp_path, 3))
    assert result.returncode == 0, result.stderr[-2000:]
    assert not os.path.exists(os.path.join(tmp_path, "profile"))
