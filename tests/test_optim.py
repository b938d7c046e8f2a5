"""Schedules and the weight-decay mask."""

import jax.numpy as jnp
import pytest

from t5x_lite.train import optim


@pytest.mark.parametrize("kind", optim.SCHEDULES)
def test_schedules_warm_up_to_the_peak(kind):
    schedule = optim.create_schedule(kind=kind, peak_value=1e-3, warmup_steps=10,
                                     decay_steps=100, end_value=1e-4)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(5e-4)
    assert float(schedule(10)) == pytest.approx(1e-3)
    end = float(schedule(100))
    expected_end = {"cosine": 1e-4, "linear": 1e-4, "constant": 1e-3,
                    "rsqrt": 1e-3 * (10 / 100) ** 0.5}[kind]
    assert end == pytest.approx(expected_end, rel=1e-3)


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="create_schedule.kind='cosin'"):
        optim.create_schedule(kind="cosin", decay_steps=10)


def test_decay_mask_skips_vectors_and_excluded_names():
    params = {"embed_VD": jnp.zeros((4, 2)), "blocks": {"mlp": {"up_DF": jnp.zeros((2, 3))},
                                                       "norm": {"scale": jnp.zeros((2,))}}}
    mask = optim.decay_mask(params, exclude=("embed_VD",))
    assert mask == {"embed_VD": False, "blocks": {"mlp": {"up_DF": True},
                                                  "norm": {"scale": False}}}
