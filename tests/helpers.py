"""Small models and synthetic packed batches shared by the tests."""

import contextlib
import itertools

import jax
import numpy as np

from t5x_lite.parallel import partitioning
from t5x_lite.train import optim, steps
from t5x_lite.resilience.faults import FaultInjector
from t5x_lite.models.decoder.config import DecoderConfig
from t5x_lite.models.spec import ModelSpec
from t5x_lite.train.state import init_state, state_shardings

TINY = DecoderConfig(num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2, head_dim=8,
                     mlp_dim=64, vocab_size=64)


def packed_batch(rows: int, length: int, vocab: int, seed: int = 0) -> dict:
    """Rows holding two packed segments each (second starts at length // 3 + row % 5)."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(3, vocab, size=(rows, length), dtype=np.int32)
    segment_ids = np.ones((rows, length), np.int32)
    positions = np.tile(np.arange(length, dtype=np.int32), (rows, 1))
    for row in range(rows):
        split = length // 3 + row % 5
        segment_ids[row, split:] = 2
        positions[row, split:] = np.arange(length - split)
    inputs = np.roll(targets, 1, axis=1)
    inputs[positions == 0] = 0
    return {"decoder_input_tokens": inputs, "decoder_target_tokens": targets,
            "decoder_loss_weights": np.ones((rows, length), np.int32),
            "decoder_segment_ids": segment_ids, "decoder_positions": positions}


@contextlib.contextmanager
def tiny_training(mesh_shape, warmup_steps: int, decay_steps: int, cfg=TINY, name="adamw",
                  num_microbatches: int = 1, faults: FaultInjector = FaultInjector()):
    """Yields (state, train_step, batch_sharding) for 8 x 32 batches on a mesh of the first
    devices, inside the mesh's activation-sharding context."""
    devices = jax.devices()[:int(np.prod(mesh_shape))]
    mesh = partitioning.create_mesh(mesh_shape, devices=devices)
    param_rules, activation_rules = partitioning.axis_rules()
    schedule = optim.create_schedule(warmup_steps=warmup_steps, decay_steps=decay_steps)
    spec = ModelSpec.create(cfg)
    optimizer = optim.create_optimizer(schedule, name=name,
                                       model_no_decay=spec.family.no_decay(cfg))
    _, shardings = state_shardings(spec, optimizer, mesh, param_rules)
    batch_sharding = partitioning.named_sharding(("batch", "length"), (8, 32), mesh,
                                                 activation_rules)
    with partitioning.activation_sharding(mesh, activation_rules):
        state = init_state(spec, optimizer, shardings, seed=0)
        train_step = steps.make_train_step(spec, optimizer, schedule, shardings, batch_sharding,
                                           num_microbatches, faults)
        yield state, train_step, batch_sharding


def take(iterator, count: int) -> list:
    return list(itertools.islice(iterator, count))


def assert_same_batches(left: list[dict], right: list[dict]) -> None:
    """The same batches: same keys in the same order, equal arrays."""
    assert len(left) == len(right)
    for a, b in zip(left, right):
        assert list(a) == list(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
