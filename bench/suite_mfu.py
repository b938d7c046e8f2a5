"""FLOPs per token: the config's accounting against XLA's view of the compiled train step.

    python bench/suite_mfu.py [--text PATH] [--matmul_sizes 2048,4096] [--out FILE.json]

For the Shakespeare, tiny and small models, with and without scan over layers, the
train step is compiled from an abstract state on one host device and its FLOPs per
token read three ways: the model family's flops_per_token (the config), the compiled
step's matmuls with while loops times their trip counts (t5x_lite.analysis.hlo_stats), and
XLA's cost_analysis (every op, but each loop body once). Also measures the CPU
"peak" the trainer uses for MFU on CPU: a float32 matmul, at several sizes.
"""

import os
import pathlib
import tempfile

import harness
import markdown

TITLE = "FLOP accounting against the compiled step (CPU)"
DEVICES = 1
GOAL = 0.10  # |config / compiled - 1|

MODELS = {
    "shakespeare": ["experiments/shakespeare_char.gin"],
    "tiny": ["models/decoder/tiny.gin", "runs/pretrain.gin"],
    "small": ["models/decoder/small.gin", "runs/pretrain.gin"],
}
FALLBACK_TEXT = "To be, or not to be, that is the question.\n" * 2000


def add_arguments(parser) -> None:
    parser.add_argument("--text", type=pathlib.Path, default=harness.DEFAULT_TEXT,
                        help="text for the Shakespeare Task (a small stand-in if missing)")
    parser.add_argument("--matmul_sizes", default="1024,2048,4096",
                        help="square matmul sizes for the measured CPU peak")


def _text_file(args, scratch: str) -> str:
    if args.text.is_file():
        return str(args.text.resolve())
    path = os.path.join(scratch, "stand_in.txt")
    with open(path, "w") as f:
        f.write(FALLBACK_TEXT)
    return path


def _row(model: str, scan: bool, gin_files: list[str], bindings: list[str]) -> dict:
    from t5x_lite.analysis import aot, step_analysis
    setup = harness.planned_setup(
        gin_files, [*bindings, f"DecoderConfig.scan_layers = {scan}"], (1, 1, 1))
    analysis = step_analysis.analyze(setup, aot.compile_train_step(setup))
    tokens = setup.tokens_per_step
    return {"model": model, "scan_layers": scan, "tokens_per_step": tokens,
            "num_layers": setup.cfg.num_layers,
            "config_flops_per_token": setup.flops_per_token,
            "compiled_matmul_flops_per_token": analysis.matmul_flops / tokens,
            "xla_cost_analysis_flops_per_token": analysis.xla_flops_loops_once / tokens,
            "loop_trip_counts": analysis.loop_trip_counts,
            "config_over_compiled": analysis.flops_ratio}


def _peaks(sizes: list[int]) -> list[dict]:
    from t5x_lite.observe import metrics
    return [{"size": size, "flops_per_second": metrics.measure_host_flops(size=size)}
            for size in sizes]


def _targets(rows: list[dict]) -> list[dict]:
    targets = []
    for model in MODELS:
        ratios = [row["config_over_compiled"] for row in rows if row["model"] == model]
        worst = max(ratios, key=lambda ratio: abs(ratio - 1))
        targets.append(harness.target(f"{model}: config / compiled FLOPs (worst of scan, "
                                      "unrolled)", round(worst, 4), f"within {GOAL:.0%}",
                                      abs(worst - 1) <= GOAL))
    return targets


def measure(args) -> dict:
    sizes = [int(size) for size in args.matmul_sizes.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        text = _text_file(args, scratch)
        extra = {"shakespeare": [f"TEXT_FILES = ['{text}']"]}
        rows = [_row(model, scan, files, extra.get(model, []))
                for model, files in MODELS.items() for scan in (True, False)]
    return {"text": str(text) if args.text.is_file() else "stand-in text",
            "versions": harness.versions("flax"), "rows": rows, "matmul_peaks": _peaks(sizes),
            "targets": _targets(rows)}


COLUMNS = ("model", "layers", "scan", "tokens/step", "config FLOPs/token",
           "compiled matmul FLOPs/token", "config / compiled", "XLA cost_analysis FLOPs/token")

DEFINITIONS = """\
- config FLOPs/token: the decoder family's `flops_per_token`, 6 x matmul parameters (embedding
  table once, as the output projection) + 12 L T N H for attention scores and values: the
  model FLOPs that MFU divides by the peak.
- compiled matmul FLOPs/token: every dot in the optimized HLO of the compiled train step,
  2 x output elements x contracted size, each computation weighted by how often it runs (a
  while body by its known trip count), divided by the tokens in the step. Elementwise work
  is left out on purpose: MFU counts matmuls only.
- XLA cost_analysis: `compiled.cost_analysis()["flops"]`, all ops including elementwise
  (norms, softmax, loss, AdamW), but each while-loop body counted once. Unrolled, it is the
  matmuls plus the elementwise share; scanned, it undercounts the layers about L-fold.
- These models have no rematerialization; with remat the compiled step also recomputes the
  forward pass, and config / compiled falls below 1 (see the plan table)."""


def _rows_table(rows: list[dict]) -> str:
    return markdown.table(COLUMNS, [
        (row["model"], row["num_layers"], "yes" if row["scan_layers"] else "no",
         markdown.number(row["tokens_per_step"]), markdown.number(row["config_flops_per_token"]),
         markdown.number(row["compiled_matmul_flops_per_token"]),
         f"{row['config_over_compiled']:.4f}",
         markdown.number(row["xla_cost_analysis_flops_per_token"])) for row in rows])


def _peak_line(peaks: list[dict]) -> str:
    parts = [f"{peak['size']}x{peak['size']}: {peak['flops_per_second'] / 1e9:.1f} GFLOP/s"
             for peak in peaks]
    return ("Measured CPU \"peak\" (`metrics.measure_host_flops`, float32 square matmul on one "
            "XLA host device, mean of 5 runs after a warm-up): " + "; ".join(parts) + ". On "
            "CPU the trainer divides by this figure (at size 1024) for MFU, so MFU on CPU "
            "means \"fraction of what a large matmul reaches here\", and moves with load.")


def section(result: dict) -> str:
    lines = [markdown.provenance(result, f"jax {result['versions']['jax']}."), "",
             _rows_table(result["rows"]), "", markdown.targets_line(result["targets"]), "",
             _peak_line(result["matmul_peaks"]), "", DEFINITIONS]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    harness.suite_main(__file__, TITLE, add_arguments, measure)
