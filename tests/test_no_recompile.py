"""A training run compiles its train and eval steps once, fresh or resumed."""

import collections
import contextlib

import gin
import jax

from t5x_lite.config import gin_config
from t5x_lite.config.configurables import register_configurables
from t5x_lite.train import trainer

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
LOOP_FUNCTIONS = ("jit(train_step)", "jit(eval_step)", "jit(_all_finite)")


@contextlib.contextmanager
def compilations():
    """Yields a Counter of XLA compilations by function name while the block runs."""
    counts = collections.Counter()

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE:
            counts[kwargs.get("fun_name", "?")] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def train(model_dir, steps: int) -> None:
    """`t5x_lite train` in this process: evals every 2 steps, a save every 3, logs every step."""
    gin.clear_config()
    register_configurables()
    gin_config.parse(["quickstart.gin"], [
        f"MODEL_DIR='{model_dir}'", f"TRAIN_STEPS={steps}", "BATCH_SIZE=8",
        "TASK_FEATURE_LENGTHS={'targets': 32}", "train.eval_every=2", "train.eval_steps=2",
        "train.log_every=1", "CheckpointConfig.save_every=3"])
    try:
        trainer.train()
    finally:
        gin.clear_config()


def loop_compilations(counts: collections.Counter) -> dict[str, int]:
    return {name: counts[name] for name in LOOP_FUNCTIONS}


def test_steps_compile_once_in_a_fresh_and_a_resumed_run(tmp_path):
    with compilations() as fresh:
        train(tmp_path, steps=6)
    assert loop_compilations(fresh) == {"jit(train_step)": 1, "jit(eval_step)": 1,
                                        "jit(_all_finite)": 1}, fresh

    # The resumed run builds new jitted steps; restored arrays must not add a second variant.
    with compilations() as resumed:
        train(tmp_path, steps=9)
    assert loop_compilations(resumed) == {"jit(train_step)": 1, "jit(eval_step)": 1,
                                          "jit(_all_finite)": 0}, resumed
