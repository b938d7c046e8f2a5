"""`t5x_lite plan` for the 1b and 7b configs on a TPU v5p-128 slice and on 8 H100s.

    python bench/suite_plan.py [--sequence_length 4096] [--rows_per_device 4] [--mfu 0.4]
                               [--out FILE.json]

Each plan runs as its own `t5x_lite plan` process (it simulates the mesh's device
count with CPU devices), writes its JSON report beside --out (plan_<model>_<mesh>.json)
and is timed. The global batch gives every device `--rows_per_device` rows.
"""

import json
import os

import harness
import markdown

TITLE = "Plans for 1b and 7b on v5p-128 and 8xH100 (AOT compile on CPU)"
DEVICES = None  # each plan sets its own device count
MODELS = ("1b", "7b")
MESHES = {"v5p-128": 64, "h100x8": 8}  # devices
# 1b.gin takes its vocabulary from the task (bytes in runs/pretrain.gin); plan it with a
# 32k table, as a SentencePiece vocabulary would give and as the GPU bench runs it.
MODEL_BINDINGS = {"1b": ["--gin.DecoderConfig.vocab_size=32768"], "7b": []}
WALL_GOAL_S = 300.0


def add_arguments(parser) -> None:
    parser.add_argument("--sequence_length", type=int, default=4096)
    parser.add_argument("--rows_per_device", type=int, default=4)
    parser.add_argument("--mfu", type=float, default=0.4)


def _plan(args, model: str, mesh: str) -> dict:
    report_path = args.out.parent / f"plan_{model}_{mesh}.json"
    report_path.unlink(missing_ok=True)
    argv = [harness.t5x_lite_cli(), "plan", f"--gin_file=models/decoder/{model}.gin",
            "--gin_file=runs/pretrain.gin", f"--mesh={mesh}",
            f"--gin.TASK_FEATURE_LENGTHS={{'targets': {args.sequence_length}}}",
            f"--gin.BATCH_SIZE={args.rows_per_device * MESHES[mesh]}", f"--mfu={args.mfu}",
            f"--output={report_path}", *MODEL_BINDINGS[model]]
    log_path = args.out.parent / f"plan_{model}_{mesh}.log"
    print(f"planning {model} on {mesh}: {harness.display(argv)}", flush=True)
    base = {"model": model, "mesh": mesh, "command": harness.display(argv)}
    try:
        child = harness.run_child(f"plan {model} {mesh}", argv, dict(os.environ),
                                  log_path)
    except harness.BenchError:
        return {**base, "refused": harness.last_line(log_path)}
    return {**base, **child, "report": json.loads(report_path.read_text())}


def measure(args) -> dict:
    plans = [_plan(args, model, mesh) for model in MODELS for mesh in MESHES]
    slowest = max(plan.get("wall_s", 0.0) for plan in plans)
    return {"sequence_length": args.sequence_length, "rows_per_device": args.rows_per_device,
            "mfu": args.mfu, "versions": harness.versions("flax"), "plans": plans,
            "targets": [harness.target("slowest plan, wall s here", round(slowest, 1),
                                       f"<= {WALL_GOAL_S:.0f}", slowest <= WALL_GOAL_S)]}


GIB = 2**30
MEMORY_COLUMNS = ("model", "mesh (data x fsdp x tensor)", "chip", "batch", "params + opt GiB",
                  "temps GiB", "total GiB / HBM", "lower + compile s", "plan wall s")
SPEED_COLUMNS = ("model", "mesh", "config TFLOP/dev", "compiled TFLOP/dev", "config / compiled",
                 "comm GB/dev (wire)", "comm s", "step s", "tokens/s", "tokens/s/dev")


def _memory_row(plan: dict) -> tuple:
    if "refused" in plan:
        return (plan["model"], plan["mesh"], "", "", plan["refused"], "", "", "", "")
    report = plan["report"]
    memory, model = report["memory_per_device"], report["model"]
    shape = " x ".join(str(size) for size in report["mesh"]["shape"].values())
    compile_s = report["compile"]["lower_seconds"] + report["compile"]["compile_seconds"]
    return (plan["model"], f"{plan['mesh']} ({shape})", report["chip"]["name"],
            f"{model['global_batch_size']} x {model['sequence_length']}",
            f"{(memory['params_bytes'] + memory['optimizer_bytes']) / GIB:.2f}",
            f"{memory['temp_bytes'] / GIB:.1f}",
            (f"{memory['total_bytes'] / GIB:.1f} / {memory['hbm_bytes'] / GIB:.0f} "
             f"({100 * memory['fraction_of_hbm']:.0f}%)"), f"{compile_s:.1f}",
            f"{plan['wall_s']:.1f}")


def _speed_row(plan: dict) -> tuple:
    if "refused" in plan:
        return (plan["model"], plan["mesh"], *[""] * (len(SPEED_COLUMNS) - 2))
    report = plan["report"]
    flops, comm = report["flops_per_step"], report["communication_per_step_per_device"]
    prediction = report["prediction"]
    return (plan["model"], plan["mesh"], f"{flops['config_per_device'] / 1e12:,.1f}",
            f"{flops['compiled_matmul_per_device'] / 1e12:,.1f}",
            f"{flops['config_over_compiled']:.3f}", f"{comm['wire_bytes'] / 1e9:,.1f}",
            f"{comm['seconds']:.3f}", f"{prediction['step_seconds']:.3f}",
            markdown.number(prediction["tokens_per_second"]),
            markdown.number(prediction["tokens_per_second_per_device"]))


DEFINITIONS = """\
- Memory is per device, from XLA's buffer assignment of the CPU compile standing in for the
  chip's (the chip's compiler fuses, lays out and schedules differently, and CPU may keep
  bfloat16 work in float32). params + opt: from the shardings' shard shapes (float32 params,
  AdamW moments). temps: activations, gradients and workspace; with the dense XLA attention
  the T x T score tensors dominate them at this sequence length.
- config TFLOP/dev: the family's `flops_per_token` x tokens / devices (model FLOPs, what MFU
  counts). compiled TFLOP/dev: the step's matmuls, while loops times their trip counts; it
  holds the rematerialized forward pass too (1b: `dots_no_batch` recomputes attention; 7b:
  `full` recomputes the whole forward), hence config / compiled below 1.
- comm: every collective of the compiled step, per device, with ring-algorithm wire bytes;
  seconds at the chip's one-direction interconnect bandwidth (v5p ICI 600 GB/s, H100 NVLink
  450 GB/s), nothing overlapped. The CPU compiler keeps gradient reductions as all-reduce
  where TPU and GPU compilers emit reduce-scatter (about half the wire bytes).
- step s: config FLOPs / (peak x MFU); tokens/s: tokens per step / step s. 7b fixes a
  32,000-token vocabulary; 1b.gin takes the task's (bytes under `runs/pretrain.gin`), so it
  is planned with `DecoderConfig.vocab_size=32768`, as a SentencePiece vocabulary gives."""


def section(result: dict) -> str:
    lines = [
        markdown.provenance(result, f"jax {result['versions']['jax']}."), "",
        (f"Sequence length {result['sequence_length']}, {result['rows_per_device']} rows per "
         f"device, MFU assumed {100 * result['mfu']:.0f}%. One command per row, e.g.:"), "",
        f"```\n{result['plans'][-1]['command']}\n```", "",
        markdown.table(MEMORY_COLUMNS, [_memory_row(plan) for plan in result["plans"]],
                       align="llllrrrrr"), "",
        markdown.table(SPEED_COLUMNS, [_speed_row(plan) for plan in result["plans"]],
                       align="ll" + "r" * 8), "",
        markdown.targets_line(result["targets"]), "",
        DEFINITIONS,
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    harness.suite_main(__file__, TITLE, add_arguments, measure)
