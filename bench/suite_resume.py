"""What reaching a data position costs a resumed run: token stores against the seqio
(skip) stream, side by side on the quickstart data, and what building the stores costs.

    python bench/suite_resume.py [--store_positions 0,1000,10000,100000,1000000] \
        [--skip_positions 0,1000,5000] [--out bench/results/resume.json]

For each stream and position P: seconds from building `train_batches(cfg, P)` to its
first batch, in one process, with the stores already built (as on every resume after
the first run). Then the stores are built afresh in an empty directory and timed.
"""

import tempfile
import time

import harness
import markdown
from harness import BenchError

TITLE = "Resuming at a data position (CPU)"
DEVICES = 1
FLAT_GOAL = 2.0  # the store stream at the furthest position / at position 0


def add_arguments(parser) -> None:
    parser.add_argument("--store_positions", default="0,1000,10000,100000,1000000")
    parser.add_argument("--skip_positions", default="0,1000,5000")


def _positions(text: str) -> list[int]:
    try:
        positions = [int(p) for p in text.split(",")]
    except ValueError:
        raise BenchError(f"positions must be comma-separated integers, not {text!r}") from None
    if any(p < 0 for p in positions):
        raise BenchError("positions cannot be negative")
    return positions


def quickstart_config(stream: str, store_dir: str | None = None):
    import gin

    from t5x_lite.config import gin_config
    from t5x_lite.config.configurables import register_configurables
    from t5x_lite.pipeline import input_pipeline

    gin.clear_config()
    register_configurables()
    gin_config.parse(["quickstart.gin"], ["MODEL_DIR='unused'", "TRAIN_STEPS=1",
                                          f"DataConfig.stream='{stream}'",
                                          f"DataConfig.store_dir={store_dir!r}"])
    return input_pipeline.DataConfig()


def first_batch_seconds(cfg, position: int) -> float:
    from t5x_lite.pipeline import input_pipeline
    start = time.perf_counter()
    next(input_pipeline.train_batches(cfg, position, 0, 1))
    return time.perf_counter() - start


def build_seconds(store_dir: str) -> dict:
    from t5x_lite.pipeline import input_pipeline
    cfg = quickstart_config("store", store_dir)
    start = time.perf_counter()
    stores = input_pipeline.build_stores(cfg)
    seconds = time.perf_counter() - start
    tokens = sum(store.manifest.features["targets"]["tokens"] for _, _, store in stores)
    return {"seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds}


def measure(args) -> dict:
    store_positions, skip_positions = (_positions(args.store_positions),
                                       _positions(args.skip_positions))
    with tempfile.TemporaryDirectory() as store_dir:
        build = build_seconds(store_dir)
        cfg = quickstart_config("store", store_dir)
        first_batch_seconds(cfg, 0)  # imports and the stores' first open, as in any run
        rows = {"store": {p: first_batch_seconds(cfg, p) for p in store_positions}}
    cfg = quickstart_config("skip")
    first_batch_seconds(cfg, 0)
    rows["skip"] = {p: first_batch_seconds(cfg, p) for p in skip_positions}
    flat = rows["store"][max(store_positions)] / rows["store"][min(store_positions)]
    return {"versions": harness.versions("tensorflow", "seqio"),
            "batch": [cfg.global_batch_size, cfg.sequence_length],
            "first_batch_s": {stream: {str(p): s for p, s in figures.items()}
                              for stream, figures in rows.items()},
            "build": build,
            "targets": [harness.target(
                f"store stream at position {max(store_positions):,} / at "
                f"{min(store_positions):,}", round(flat, 2), f"<= {FLAT_GOAL:g}",
                flat <= FLAT_GOAL)]}


def section(result: dict) -> str:
    rows = [(stream, f"{int(position):,}", markdown.number(seconds, 3))
            for stream, figures in result["first_batch_s"].items()
            for position, seconds in figures.items()]
    build = result["build"]
    versions = result["versions"]
    batch, length = result["batch"]
    return "\n".join([
        markdown.provenance(result, f"jax {versions['jax']}, tensorflow "
                                    f"{versions['tensorflow']}, seqio {versions['seqio']}."),
        "", f"Quickstart data (`embedded` mixture), batch {batch} x {length}, one process.", "",
        markdown.table(("stream", "data position", "first batch s"), rows, align="lrr"), "",
        f"Building the stores (train and validation of both Tasks, byte vocabulary): "
        f"{build['tokens']:,} tokens in {build['seconds']:.1f} s, "
        f"{build['tokens_per_second']:,.0f} tokens/s.", "",
        markdown.targets_line(result["targets"]), "",
        "- first batch s: from calling `train_batches(cfg, P)` to its first batch, after a "
        "warm-up call at position 0 (imports, the stores' first open); process start-up and "
        "compilation are the same for both streams and not included.",
        "- skip: the seqio pipeline rebuilt and replayed to position P, as every resume and "
        "rollback did before token stores; it grows with P, so it is timed only up to a "
        "few thousand batches.",
    ]) + "\n"


if __name__ == "__main__":
    harness.suite_main(__file__, TITLE, add_arguments, measure)
