"""Time the jitted train step alone (no data pipeline, no logging) on CPU.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python bench/step_time.py [--scan]

The Shakespeare model (4 layers, width 128, 4 heads, context 64, batch 12) on a
(devices, 1, 1) mesh with a fixed packed batch; prints the fastest and the median
of eight 20-step windows, reading each step's loss one step behind as the trainer does.
"""

import argparse
import time

import jax
import numpy as np

from t5x_lite import optim, partitioning, steps
from t5x_lite.models.config import DecoderConfig
from t5x_lite.train_state import ModelSpec, init_state, state_shardings

BATCH, LENGTH, VOCAB = 12, 64, 384


def fixed_batch() -> dict:
    rng = np.random.default_rng(0)
    targets = rng.integers(3, VOCAB, size=(BATCH, LENGTH), dtype=np.int32)
    inputs = np.concatenate([np.zeros((BATCH, 1), np.int32), targets[:, :-1]], axis=1)
    return {"decoder_input_tokens": inputs, "decoder_target_tokens": targets,
            "decoder_loss_weights": np.ones_like(targets),
            "decoder_segment_ids": np.ones_like(targets),
            "decoder_positions": np.tile(np.arange(LENGTH, dtype=np.int32), (BATCH, 1))}


def window_seconds_per_step(scan_layers: bool, windows: int = 8, steps_per_window: int = 20):
    cfg = DecoderConfig(num_layers=4, embed_dim=128, num_heads=4, num_kv_heads=4, head_dim=32,
                        mlp_dim=384, vocab_size=VOCAB, scan_layers=scan_layers)
    mesh = partitioning.create_mesh((-1, 1, 1))
    param_rules, activation_rules = partitioning.axis_rules()
    schedule = optim.create_schedule(decay_steps=2000)
    optimizer = optim.create_optimizer(schedule)
    spec = ModelSpec.create(cfg)
    _, shardings = state_shardings(spec, optimizer, mesh, param_rules)
    batch_sharding = partitioning.named_sharding(("batch", "length"), (BATCH, LENGTH), mesh,
                                                 activation_rules)
    with partitioning.activation_sharding(mesh, activation_rules):
        state = init_state(spec, optimizer, shardings, seed=0)
        train_step = steps.make_train_step(spec, optimizer, schedule, shardings, batch_sharding)
        batch = {k: jax.device_put(v, batch_sharding) for k, v in fixed_batch().items()}
        for position in range(5):
            state, metrics = train_step(state, batch, position)
        jax.block_until_ready(metrics)
        times, previous = [], None
        for _ in range(windows):
            start = time.perf_counter()
            for position in range(steps_per_window):
                state, metrics = train_step(state, batch, position)
                if previous is not None:
                    float(previous["loss"])
                previous = metrics
            jax.block_until_ready(metrics)
            times.append((time.perf_counter() - start) / steps_per_window)
    return sorted(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", action="store_true", help="scan over layers")
    args = parser.parse_args()
    times = window_seconds_per_step(args.scan)
    fastest, median = times[0], times[len(times) // 2]
    print(f"{len(jax.devices())} devices, scan={args.scan}: fastest {1000 * fastest:.1f} ms/step, "
          f"median {1000 * median:.1f} ms/step ({BATCH * LENGTH / median:,.0f} tokens/s)")


if __name__ == "__main__":
    main()
