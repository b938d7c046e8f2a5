"""Time the jitted train step alone (no data pipeline, no logging) on any devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python bench/step_time.py [--scan]
    python bench/step_time.py --gin_file models/decoder/1b.gin --batch 8 --length 2048 \
        --gin.DecoderConfig.attention="'cudnn'" --out step.json          # one GPU

Without --gin_file: the Shakespeare model (4 layers, width 128, 4 heads, context 64,
batch 12, float32, unrolled unless --scan). The mesh is (devices, 1, 1) unless --mesh says otherwise. Prints the
fastest and the median of several windows of steps, reading each step's loss one step
behind as the trainer does, and the model FLOPs utilization: FLOPs per token from the
config (the family's flops_per_token) over the chip's dense peak (t5x_lite/observe/chips.py) or,
on CPU, a measured matmul rate; on CPU also the compiled step's matmul FLOPs over the
config's count.
"""

import argparse
import dataclasses
import datetime
import json
import os
import time

import gin
import jax
import numpy as np

from t5x_lite.analysis import hlo_stats
from t5x_lite.observe import metrics
from t5x_lite.parallel import partitioning
from t5x_lite.models.decoder import DECODER
from t5x_lite.models.decoder.config import DecoderConfig
from t5x_lite.train.setup import build_setup
from t5x_lite.train.state import init_state

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")
# The model of gin/experiments/shakespeare_char.gin (byte vocabulary padded to 264).
SHAKESPEARE = {"num_layers": 4, "embed_dim": 128, "num_heads": 4, "num_kv_heads": 4,
               "head_dim": 32, "mlp_dim": 344, "vocab_size": 264, "scan_layers": False}


def fixed_batch(batch: int, length: int, vocab_size: int) -> dict:
    rng = np.random.default_rng(0)
    targets = rng.integers(3, vocab_size, size=(batch, length), dtype=np.int32)
    inputs = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], axis=1)
    return {"decoder_input_tokens": inputs, "decoder_target_tokens": targets,
            "decoder_loss_weights": np.ones_like(targets),
            "decoder_segment_ids": np.ones_like(targets),
            "decoder_positions": np.tile(np.arange(length, dtype=np.int32), (batch, 1))}


def model_config(args) -> DecoderConfig:
    if not args.gin_file:
        return DecoderConfig(**{**SHAKESPEARE, "scan_layers": args.scan})
    gin.parse_config_files_and_bindings(
        [os.path.join(GIN_DIR, f) for f in args.gin_file], args.gin_bindings)
    cfg = DecoderConfig()
    return cfg if cfg.vocab_size else DecoderConfig(vocab_size=args.vocab_size)


def time_steps(train_step, state, batch, windows: int, steps_per_window: int):
    """Sorted seconds per step of each window, after a few warm-up steps."""
    for position in range(3):
        state, step_metrics = train_step(state, batch, position)
    jax.block_until_ready(step_metrics)
    seconds, previous = [], None
    for _ in range(windows):
        start = time.perf_counter()
        for position in range(steps_per_window):
            state, step_metrics = train_step(state, batch, position)
            if previous is not None:
                float(previous["loss"])
            previous = step_metrics
        jax.block_until_ready(step_metrics)
        seconds.append((time.perf_counter() - start) / steps_per_window)
    return sorted(seconds), float(previous["loss"])


@dataclasses.dataclass(frozen=True)
class SyntheticData:
    """The batch shape of a run without a data pipeline (vocab_size must be set)."""

    global_batch_size: int
    sequence_length: int
    mixture_or_task_name: str | None = None

    @property
    def task_feature_lengths(self) -> dict[str, int]:
        return {"targets": self.sequence_length}


def measure(args) -> dict:
    cfg = model_config(args)
    with gin.unlock_config():
        gin.bind_parameter("create_schedule.decay_steps", 2000)
    mesh = partitioning.create_mesh(args.mesh)
    setup = build_setup(cfg, SyntheticData(args.batch, args.length), 1, mesh)
    with partitioning.activation_sharding(mesh, setup.activation_rules):
        state = init_state(setup.spec, setup.optimizer, setup.shardings, seed=0)
        train_step = setup.train_step()
        batch = {k: jax.device_put(v, setup.batch_shardings[k])
                 for k, v in fixed_batch(args.batch, args.length, cfg.vocab_size).items()}
        start = time.perf_counter()
        compiled = train_step.lower(state, batch, 0).compile()
        compile_s = time.perf_counter() - start
        seconds, loss = time_steps(train_step, state, batch, args.windows, args.steps)
    return summarize(args, cfg, compiled, compile_s, seconds, loss)


def compiled_matmul_flops(compiled) -> float | None:
    """Matmul FLOPs of one step on all devices, read from the optimized HLO with loop trip
    counts (CPU only: on GPU the matmuls are cuBLAS/cuDNN custom calls)."""
    devices = jax.devices()
    if devices[0].platform != "cpu":
        return None
    return hlo_stats.analyze(compiled.as_text(), len(devices)).matmul_flops * len(devices)


def summarize(args, cfg: DecoderConfig, compiled, compile_s: float, seconds, loss) -> dict:
    tokens = args.batch * args.length
    median = seconds[len(seconds) // 2]
    flops_per_token = DECODER.flops_per_token(cfg, {"targets": args.length})
    matmul_flops = compiled_matmul_flops(compiled)
    peak = metrics.total_peak_flops()
    devices = jax.devices()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": devices[0].device_kind, "devices": len(devices), "jax": jax.__version__,
        "model": dataclasses.asdict(cfg), "batch": args.batch, "length": args.length,
        "mesh": list(args.mesh), "compile_s": compile_s,
        "fastest_ms": 1000 * seconds[0], "median_ms": 1000 * median,
        "tokens_per_second": tokens / median, "loss_after": loss,
        "flops_per_token_config": flops_per_token,
        "compiled_over_config": matmul_flops / (flops_per_token * tokens)
        if matmul_flops else None,
        "peak_flops": peak, "mfu": tokens / median * flops_per_token / peak,
    }


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", action="store_true", help="Shakespeare model: scan layers")
    parser.add_argument("--gin_file", action="append", default=[],
                        help="model gin file relative to gin/ (repeatable)")
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--vocab_size", type=int, default=32768,
                        help="vocabulary when the gin file leaves it to the task")
    parser.add_argument("--mesh", type=lambda s: tuple(int(x) for x in s.split(",")),
                        default=(-1, 1, 1))
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="steps per window")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args, unknown = parser.parse_known_args()
    args.gin_bindings = [u[len("--gin."):] for u in unknown if u.startswith("--gin.")]
    if len(args.gin_bindings) != len(unknown):
        parser.error(f"unknown arguments: {unknown}")
    return args


def main() -> None:
    args = parse_args()
    result = measure(args)
    print(json.dumps(result, indent=1))
    print(f"{result['devices']} x {result['device']}: fastest {result['fastest_ms']:.1f} ms/step,"
          f" median {result['median_ms']:.1f} ms/step ({result['tokens_per_second']:,.0f} "
          f"tokens/s), MFU {100 * result['mfu']:.1f}%, compiled/config matmul FLOPs "
          f"{result['compiled_over_config']}, compile {result['compile_s']:.1f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
