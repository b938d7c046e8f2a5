"""Small models and synthetic packed batches shared by the tests."""

import contextlib
import itertools

import jax
import numpy as np

from t5x_lite.parallel import partitioning
from t5x_lite.train import optim, steps
from t5x_lite.resilience.faults import FaultInjector
from t5x_lite.models.decoder.config import DecoderConfig
from t5x_lite.models.encdec.config import EncDecConfig
from t5x_lite.models.spec import ModelSpec
from t5x_lite.train.state import init_state, state_shardings

TINY = DecoderConfig(num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2, head_dim=8,
                     mlp_dim=64, vocab_size=64)
TINY_ENCDEC = EncDecConfig(num_encoder_layers=2, num_decoder_layers=2, embed_dim=32, num_heads=4,
                           head_dim=8, mlp_dim=64, vocab_size=64)


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


def packed_encdec_batch(rows: int, input_length: int, target_length: int, vocab: int,
                        seed: int = 0) -> dict:
    """Encoder-decoder rows of two packed examples each, as seqio's packed
    `EncDecFeatureConverter` gives them: inputs split at input_length // 3 + row % 5, targets
    at target_length // 2 - row % 4, and the last row % 3 slots of both sides padding."""
    rng = np.random.default_rng(seed)
    batch = {}
    for side, length, split_at in (("encoder", input_length, lambda r: input_length // 3 + r % 5),
                                   ("decoder", target_length,
                                    lambda r: target_length // 2 - r % 4)):
        segment_ids = np.zeros((rows, length), np.int32)
        positions = np.zeros((rows, length), np.int32)
        for row in range(rows):
            split, end = split_at(row), length - row % 3
            segment_ids[row, :split], segment_ids[row, split:end] = 1, 2
            positions[row, :split] = np.arange(split)
            positions[row, split:end] = np.arange(end - split)
        tokens = np.where(segment_ids != 0, rng.integers(3, vocab, size=(rows, length)), 0)
        batch[side] = tokens.astype(np.int32), segment_ids, positions
    (inputs, enc_segments, enc_positions), (targets, dec_segments, dec_positions) = (
        batch["encoder"], batch["decoder"])
    decoder_inputs = np.roll(targets, 1, axis=1)
    decoder_inputs[dec_positions == 0] = 0
    decoder_inputs[dec_segments == 0] = 0
    return {"encoder_input_tokens": inputs, "encoder_segment_ids": enc_segments,
            "encoder_positions": enc_positions, "decoder_input_tokens": decoder_inputs,
            "decoder_target_tokens": targets,
            "decoder_loss_weights": (dec_segments != 0).astype(np.int32),
            "decoder_segment_ids": dec_segments, "decoder_positions": dec_positions}


@contextlib.contextmanager
def tiny_training(mesh_shape, warmup_steps: int, decay_steps: int, cfg=TINY, name="adamw",
                  num_microbatches: int = 1, faults: FaultInjector = FaultInjector(),
                  params: dict | None = None):
    """Yields (state, train_step, batch_sharding) for 8-row batches on a mesh of the first
    devices, inside the mesh's activation-sharding context. `cfg` is of any family (the
    decoder's `packed_batch`, the encoder-decoder's `packed_encdec_batch`); the rows'
    lengths are not sharded, so one sharding fits every feature. `params` (host arrays)
    start the state instead of a jitted init of seed 0, which compiles for every mesh."""
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
        state = init_state(spec, optimizer, shardings, seed=0, params=params)
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
