"""Character-level Shakespeare on CPU: t5x_lite beside the PyTorch reference.

    python bench/suite_shakespeare.py [--steps 2000] [--text PATH] [--skip_torch]
                                      [--devices 2] [--out bench/results/shakespeare.json]

Runs bench/torch_reference.py, then `t5x_lite train` with
gin/experiments/shakespeare_char.gin, each as a child process, on the same text,
steps, batch (12) and context (64). Logs, the reference's summary and a copy of
t5x_lite's metrics.jsonl go beside --out, named shakespeare_*.
"""

import json
import os
import pathlib
import shutil
import sys
import tempfile

import figures
import harness
import markdown
from harness import BenchError

TITLE = "Character-level Shakespeare (CPU)"
DEVICES = None  # The t5x_lite child gets --devices host devices; the torch child none.

TORCH_REFERENCE = harness.BENCH_DIR / "torch_reference.py"
GIN_FILE = "experiments/shakespeare_char.gin"
SPEED_GOAL = 1.5  # t5x_lite tokens/s over torch's


def add_arguments(parser) -> None:
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--text", type=pathlib.Path, default=harness.DEFAULT_TEXT)
    parser.add_argument("--skip_torch", action="store_true",
                        help="reuse the torch figures of the last results with the same setup")
    parser.add_argument("--devices", type=int, default=2,
                        help="XLA host devices for t5x_lite (one per core is fastest)")


def check_args(args) -> None:
    args.text = harness.existing_text(args.text)
    if args.steps < 1 or args.devices < 1:
        raise BenchError("--steps and --devices must be positive")


def side_file(args, name: str) -> pathlib.Path:
    return args.out.parent / f"shakespeare_{name}"


def run_torch(args) -> dict:
    summary_path = side_file(args, "torch_reference.json")
    summary_path.unlink(missing_ok=True)
    argv = [sys.executable, str(TORCH_REFERENCE), "--text", str(args.text),
            "--steps", str(args.steps), "--out", str(summary_path)]
    print(f"running the torch reference: {harness.display(argv)}", flush=True)
    child = harness.run_child("torch reference", argv, dict(os.environ),
                              side_file(args, "torch_reference.log"))
    return {"command": harness.display(argv), "summary": json.loads(summary_path.read_text()),
            **child}


def run_t5x_lite(args) -> dict:
    model_dir = pathlib.Path(tempfile.mkdtemp(prefix="t5x_lite_bench_"))
    try:
        argv = [harness.t5x_lite_cli(), "train", f"--gin_file={GIN_FILE}",
                f"--gin.TEXT_FILES=['{args.text}']", f"--gin.MODEL_DIR='{model_dir}'",
                f"--gin.TRAIN_STEPS={args.steps}"]
        overrides = harness.host_devices_env(args.devices)
        print(f"running t5x_lite: {harness.display(argv, overrides)}", flush=True)
        child = harness.run_child("t5x_lite train", argv, {**os.environ, **overrides},
                                  side_file(args, "t5x_lite.log"))
        shutil.copy(model_dir / "metrics.jsonl", side_file(args, "t5x_lite_metrics.jsonl"))
        shown = harness.display(argv, overrides).replace(str(model_dir), "<fresh tmp dir>")
        return {"command": shown, **child, **figures.t5x_lite_figures(model_dir)}
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)


def torch_side(run: dict, t5x_lite: dict) -> dict:
    constants = figures.torch_constants(TORCH_REFERENCE)
    side = figures.torch_figures(run["summary"], figures.torch_flops_per_token(constants),
                                 t5x_lite["peak_flops_measured"])
    return {"command": run["command"], "wall_s": run["wall_s"],
            "peak_rss_mb": run["peak_rss_mb"], **side}


def reused_torch_side(args) -> dict | None:
    """The torch figures of the previous results, when they ran the same text and steps."""
    if not args.out.is_file():
        return None
    previous = json.loads(args.out.read_text())
    if previous.get("torch") is None or (previous.get("text"), previous.get("steps")) != (
            str(args.text), args.steps):
        return None
    return {**previous["torch"], "reused_from": previous["torch"].get("reused_from",
                                                                      previous["date"])}


def ratios(torch: dict | None, t5x_lite: dict) -> dict | None:
    if torch is None:
        return None
    keys = ("tokens_per_second_median", "tokens_per_second_overall")
    return {key: t5x_lite[key] / torch[key] for key in keys}


def targets(torch: dict | None, t5x_lite: dict, ratio: dict | None) -> list[dict]:
    """Val loss no worse than torch's after the same tokens; tokens/s >= 1.5x torch's."""
    same_tokens = torch is not None and (torch["tokens_per_step"] * torch["steps"]
                                         == t5x_lite["tokens_per_step"] * t5x_lite["steps"])
    loss_goal = f"<= torch {torch['final_val_loss']:.3f}" if same_tokens else "<= torch"
    rows = [harness.target("val loss after the same tokens", round(t5x_lite["final_val_loss"], 4),
                           loss_goal,
                           t5x_lite["final_val_loss"] <= torch["final_val_loss"]
                           if same_tokens else None)]
    for kind in ("median", "overall"):
        value = None if ratio is None else round(ratio[f"tokens_per_second_{kind}"], 3)
        rows.append(harness.target(f"tokens/s ({kind}) / torch's", value, f">= {SPEED_GOAL}",
                                   None if value is None else value >= SPEED_GOAL))
    return rows


def measure(args) -> dict:
    check_args(args)
    results = {"text": str(args.text), "steps": args.steps, "devices": args.devices,
               "versions": harness.versions("flax", "torch")}
    torch_run = None if args.skip_torch else run_torch(args)
    t5x_lite = run_t5x_lite(args)
    torch = torch_side(torch_run, t5x_lite) if torch_run else reused_torch_side(args)
    ratio = ratios(torch, t5x_lite)
    return {**results, "torch": torch, "t5x_lite": t5x_lite,
            "ratio_t5x_lite_over_torch": ratio, "targets": targets(torch, t5x_lite, ratio)}


COLUMNS = ("run", "tokens/s (median)", "tokens/s (overall)", "step time ms", "compile s",
           "val loss @ steps", "MFU", "peak RSS MB")


def _row(name: str, side: dict | None) -> tuple:
    if side is None:
        return (name, "not run", *[""] * (len(COLUMNS) - 2))
    return (name, markdown.number(side["tokens_per_second_median"]),
            markdown.number(side["tokens_per_second_overall"]),
            markdown.number(side["step_time_ms"], 1), markdown.number(side["compile_s"], 1),
            f"{side['final_val_loss']:.3f} @ {side['final_val_loss_step']}",
            markdown.percent(side["mfu"]), markdown.number(side["peak_rss_mb"]))


def _torch_name(side: dict | None) -> str:
    if side and side.get("reused_from"):
        return f"torch reference (run of {side['reused_from']})"
    return "torch reference"


def _ratio_line(ratio: dict | None) -> str:
    if ratio is None:
        return "t5x_lite / torch tokens/s: — (torch reference not run)."
    return (f"t5x_lite / torch tokens/s: **{ratio['tokens_per_second_median']:.2f}x** (median), "
            f"**{ratio['tokens_per_second_overall']:.2f}x** (overall).")


def _wall_line(result: dict) -> str:
    parts = [f"{name} {result[name]['wall_s']:.0f} s" for name in ("torch", "t5x_lite")
             if result[name] and result[name].get("wall_s") is not None]
    return ("Whole-command wall time (start-up, data, compile, training, evals): "
            + ", ".join(parts) + ".")


DEFINITIONS = """\
- tokens/s (median): t5x_lite: median of the logged `tokens_per_second` (one value per
  `log_every` interval), leaving out step 1 and the intervals holding an eval or a checkpoint
  save; torch: batch x 64 / median step time (steps 11 on, evals are not inside a step).
- tokens/s (overall): tokens / time summed over those same training steps (t5x_lite: the kept
  intervals; torch: steps 11 on), i.e. a mean over training steps without compile or evals.
- step time ms: batch x 64 / tokens/s (median). compile s: t5x_lite's goodput `compile` (the
  first batch and the dispatch of step 1, which compiles it); the eager reference has none.
- val loss: after the same tokens on both sides (same steps, batch 12 x 64), on the last 10%
  of the text (torch: 200 random 64-byte windows; t5x_lite: 140 packed rows of 64).
- MFU: model FLOPs (6 x matmul params + attention, t5x_lite's accounting for both models) /
  peak. On CPU the peak is the matmul FLOP/s the t5x_lite run measured at start-up, so MFU
  moves with machine load; the torch figure uses the same peak.
- peak RSS MB: maximum resident set of each child process (from its own `wait4` rusage)."""


def section(result: dict) -> str:
    versions = result["versions"]
    lines = [
        markdown.provenance(result, f"jax {versions['jax']}, torch {versions['torch']}."), "",
        markdown.table(COLUMNS, [_row(_torch_name(result["torch"]), result["torch"]),
                                 _row(f"t5x_lite ({result['devices']} host devices)",
                                      result["t5x_lite"])]), "",
        _ratio_line(result["ratio_t5x_lite_over_torch"]), "",
        markdown.targets_line(result["targets"]), "",
        _wall_line(result), "",
        DEFINITIONS,
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    harness.suite_main(__file__, TITLE, add_arguments, measure)
