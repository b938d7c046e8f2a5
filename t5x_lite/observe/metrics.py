"""FLOPs, MFU and the run's metric writers (metrics.jsonl, TensorBoard, progress bar)."""

import math
import sys
import time

import jax
import jax.numpy as jnp
import tqdm

from t5x_lite import storage
from t5x_lite.observe import chips


def measure_host_flops(size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a float32 matmul on the first device: the CPU stand-in for a peak."""
    x = jnp.ones((size, size), jnp.float32, device=jax.devices()[0])
    matmul = jax.jit(lambda a: a @ a)
    matmul(x).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        matmul(x).block_until_ready()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def total_peak_flops(peak_flops_per_device: float | None = None) -> float:
    """Peak FLOP/s of all devices: gin override, else the chip table, else measured (CPU)."""
    devices = jax.devices()
    if peak_flops_per_device:
        return peak_flops_per_device * len(devices)
    chip = chips.for_device_kind(devices[0].device_kind)
    if chip is not None and devices[0].platform != "cpu":
        return chip.peak_flops * len(devices)
    # Host devices share the cores, so one measurement covers each host.
    return measure_host_flops() * jax.process_count()


# A TensorBoard event file on an object store is uploaded whole at every flush.
REMOTE_FLUSH_SECONDS = 300


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without torch where torch is not loaded yet:
    tensorboardX imports torch (seconds) only to accept its tensors, which we never pass."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # makes `import torch` fail fast
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def tensorboard_writer(model_dir: storage.PathLike):
    """A tensorboardX writer of MODEL_DIR/tensorboard events; on an object store it
    flushes every REMOTE_FLUSH_SECONDS and on close (metrics.jsonl holds every step
    meanwhile)."""
    SummaryWriter = _summary_writer_class()
    logdir = storage.join(model_dir, "tensorboard")
    if storage.is_uri(logdir):
        return SummaryWriter(str(logdir), max_queue=1000, flush_secs=REMOTE_FLUSH_SECONDS)
    return SummaryWriter(str(logdir))


def last_logged_step(model_dir: storage.PathLike) -> int:
    """The highest step in MODEL_DIR/metrics.jsonl (0 if none): how far earlier attempts got."""
    records = storage.read_jsonl(storage.join(model_dir, "metrics.jsonl"))
    return max((record["step"] for record in records), default=0)


class MetricsWriter:
    """Writes scalars on process 0: JSON lines, TensorBoard events and a progress bar."""

    def __init__(self, model_dir: storage.PathLike, total_steps: int, start_step: int):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        self.jsonl = storage.JsonlAppender(storage.join(model_dir, "metrics.jsonl"))
        self.tensorboard = tensorboard_writer(model_dir)
        self.bar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step",
                             dynamic_ncols=True, desc="train")

    def write(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        finite = {k: v if math.isfinite(v) else None for k, v in scalars.items()}
        self.jsonl.append({"step": step, **finite})
        for name, value in scalars.items():
            self.tensorboard.add_scalar(name, value, step)

    def progress(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        shown = {"loss": f"{scalars['loss']:.4f}",
                 "tok/s": f"{scalars['tokens_per_second']:,.0f}",
                 "mfu": f"{100 * scalars['mfu']:.2f}%"}
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(step - self.bar.n)

    def message(self, text: str) -> None:
        if self.enabled:
            tqdm.tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.tensorboard.close()
