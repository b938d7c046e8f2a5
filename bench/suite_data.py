"""Input pipeline delivery beside the train step's consumption, on CPU.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python bench/suite_data.py \
        [--text PATH] [--batches 1000] [--skip_embedded] [--out bench/results/data.json]

Times t5x_lite.pipeline.input_pipeline.train_batches (one process, after a warm-up) on the
Shakespeare Task with gin/experiments/shakespeare_char.gin (batch 12 x 64) and on the
default embedded data at runs/pretrain.gin's batch and length; the jitted Shakespeare
train step alone on one of those batches (bench/step_time.py's windows, on this
process's host devices); and the trainer's conversion of a batch into global arrays.
"""

import pathlib
import statistics
import time

import harness
import markdown
import shakespeare_setup
from harness import BenchError

TITLE = "Input pipeline delivery (CPU)"
DEVICES = 2

SPEED_GOAL = 10.0  # pipeline batches/s over the train step's steps/s
CONFIGS = {
    "shakespeare": ([shakespeare_setup.GIN_FILE], ["TEXT_FILES=['{text}']"]),
    "embedded": (["models/decoder/tiny.gin", "runs/pretrain.gin"], []),
}


def add_arguments(parser) -> None:
    parser.add_argument("--text", type=pathlib.Path, default=harness.DEFAULT_TEXT)
    parser.add_argument("--batches", type=int, default=1000, help="timed batches per pipeline")
    parser.add_argument("--warmup", type=int, default=50, help="batches read before timing")
    parser.add_argument("--skip_embedded", action="store_true",
                        help="time only the Shakespeare pipeline")


def data_config(name: str, text: pathlib.Path):
    """The DataConfig a `t5x_lite train` with that config would build."""
    import gin

    from t5x_lite.config import gin_config
    from t5x_lite.config.configurables import register_configurables
    from t5x_lite.pipeline import input_pipeline

    gin_files, bindings = CONFIGS[name]
    gin.clear_config()
    register_configurables()
    gin_config.parse(gin_files, [b.format(text=text) for b in bindings]
                     + ["MODEL_DIR='unused'", "TRAIN_STEPS=1"])
    return input_pipeline.DataConfig()


def pipeline_rate(cfg, batches: int, warmup: int) -> tuple[dict, dict]:
    """Batches/s of train_batches after `warmup` batches; the last batch read, for reuse."""
    from t5x_lite.pipeline import input_pipeline

    start = time.perf_counter()
    stream = input_pipeline.train_batches(cfg, 0, 0, 1)
    batch = next(stream)
    first_batch_s = time.perf_counter() - start
    for _ in range(warmup):
        next(stream)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(stream)
    seconds = time.perf_counter() - start
    tokens = cfg.global_batch_size * cfg.sequence_length
    return {"batch_size": cfg.global_batch_size, "length": cfg.sequence_length,
            "first_batch_s": first_batch_s, "batches_timed": batches,
            "batches_per_second": batches / seconds, "ms_per_batch": 1000 * seconds / batches,
            "tokens_per_second": batches * tokens / seconds}, batch


def global_batch_cost(setup, batch: dict, repeats: int = 300) -> dict:
    """Milliseconds to turn one host batch into global arrays, as the trainer does."""
    import jax

    from t5x_lite.train import trainer

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(trainer._global_batch(batch, setup.batch_shardings))
        times.append(time.perf_counter() - start)
    return {"devices": len(jax.devices()), "median_ms": 1000 * statistics.median(times),
            "fastest_ms": 1000 * min(times)}


def step_consumption(setup, state, batch: dict, windows: int = 8, steps_per_window: int = 20) -> dict:
    """The Shakespeare train step alone, on one pipeline batch placed on the devices once."""
    import jax
    import step_time

    from t5x_lite.parallel import partitioning

    with partitioning.activation_sharding(setup.mesh, setup.activation_rules):
        train_step = setup.train_step()
        placed = {key: jax.device_put(value, setup.batch_shardings[key])
                  for key, value in batch.items()}
        seconds, _ = step_time.time_steps(train_step, state, placed, windows,
                                          steps_per_window)
    median_ms = 1000 * seconds[len(seconds) // 2]
    return {"devices": len(jax.devices()), "batch_size": setup.global_batch_size,
            "length": setup.sequence_length, "median_ms": median_ms,
            "fastest_ms": 1000 * seconds[0], "steps_per_second": 1000 / median_ms}


def measure(args) -> dict:
    args.text = harness.existing_text(args.text)
    if args.batches < 1 or args.warmup < 0:
        raise BenchError("--batches must be positive and --warmup not negative")
    names = ["shakespeare"] + ([] if args.skip_embedded else ["embedded"])
    pipelines, last_batches = {}, {}
    for name in names:
        print(f"timing the {name} pipeline", flush=True)
        pipelines[name], last_batches[name] = pipeline_rate(data_config(name, args.text),
                                                            args.batches, args.warmup)
    print("timing the train step and the global arrays", flush=True)
    setup, state, _ = shakespeare_setup.build(args.text)
    consumption = step_consumption(setup, state, last_batches["shakespeare"])
    global_batch = global_batch_cost(setup, last_batches["shakespeare"])
    ratio = pipelines["shakespeare"]["batches_per_second"] / consumption["steps_per_second"]
    return {"text": str(args.text), "versions": harness.versions("tensorflow", "seqio"),
            "pipelines": pipelines, "train_step": consumption, "global_batch": global_batch,
            "pipeline_over_consumption": ratio,
            "targets": [harness.target("Shakespeare pipeline batches/s / train steps/s",
                                       round(ratio, 1), f">= {SPEED_GOAL:g}",
                                       ratio >= SPEED_GOAL)]}


COLUMNS = ("data", "batch x length", "batches/s", "ms/batch", "tokens/s", "first batch s")


def _pipeline_row(name: str, figures: dict) -> tuple:
    return (name, f"{figures['batch_size']} x {figures['length']}",
            markdown.number(figures["batches_per_second"]),
            markdown.number(figures["ms_per_batch"], 2),
            markdown.number(figures["tokens_per_second"]),
            markdown.number(figures["first_batch_s"], 1))


def _step_line(result: dict) -> str:
    step = result["train_step"]
    return (f"Train step (Shakespeare model, {step['batch_size']} x {step['length']}, "
            f"{step['devices']} host devices): {step['median_ms']:.1f} ms median "
            f"({step['fastest_ms']:.1f} fastest), {step['steps_per_second']:.1f} steps/s. "
            f"Pipeline / consumption: **{result['pipeline_over_consumption']:.1f}x**.")


def _host_line(result: dict) -> str:
    step, pipeline = result["train_step"], result["pipelines"]["shakespeare"]
    host_ms = pipeline["ms_per_batch"] + result["global_batch"]["median_ms"]
    return (f"Host work per Shakespeare batch: {pipeline['ms_per_batch']:.2f} ms in the pipeline "
            f"+ {result['global_batch']['median_ms']:.2f} ms into global arrays on "
            f"{result['global_batch']['devices']} devices = {host_ms:.2f} ms, "
            f"{100 * host_ms / step['median_ms']:.1f}% of a {step['median_ms']:.1f} ms step.")


NOTES = """\
- batches/s: `train_batches` of one process, timed over `--batches` batches after
  `--warmup`; nothing else runs meanwhile, so this is the rate the pipeline can deliver on
  its own. first batch s: building the pipeline (seqio Task, packing) and its first batch.
- train step: the jitted step of `experiments/shakespeare_char.gin`'s model alone, on one
  pipeline batch placed on the devices once (no data, no logging), median of eight 20-step
  windows (`bench/step_time.py`'s timing); steps/s = 1000 / median ms.
- global arrays: `trainer._global_batch` on a pipeline batch
  (`jax.make_array_from_process_local_data` per feature, until the arrays are ready).
- The embedded row (Python's own library source and docs at `runs/pretrain.gin`'s batch
  and length) has no target; it shows what the default data costs at its default size."""


def section(result: dict) -> str:
    rows = [_pipeline_row(name, figures) for name, figures in result["pipelines"].items()]
    versions = result["versions"]
    lines = [
        markdown.provenance(result, f"jax {versions['jax']}, tensorflow "
                                    f"{versions['tensorflow']}, seqio {versions['seqio']}."), "",
        markdown.table(COLUMNS, rows, align="lrrrrr"), "",
        _step_line(result), "",
        _host_line(result), "",
        markdown.targets_line(result["targets"]), "",
        NOTES,
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    harness.suite_main(__file__, TITLE, add_arguments, measure)
