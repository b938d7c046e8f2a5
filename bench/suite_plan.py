"""`t5x_lite plan` for the 1b, 7b and Mixtral-8x7B configs on a TPU v5p-128 slice and on
8 H100s (Mixtral with expert parallelism, with each dispatch).

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

TITLE = "Plans for 1b, 7b and Mixtral-8x7B on v5p-128 and 8xH100 (AOT compile on CPU)"
DEVICES = None  # each plan sets its own device count
MODELS = ("1b", "7b")
MESHES = {"v5p-128": 64, "h100x8": 8}  # devices
# 1b.gin takes its vocabulary from the task (bytes in runs/pretrain.gin); plan it with a
# 32k table, as a SentencePiece vocabulary would give and as the GPU bench runs it.
MODEL_BINDINGS = {"1b": ["--gin.DecoderConfig.vocab_size=32768"], "7b": []}
# Mixtral-8x7B with expert parallelism (v5p-128: FSDP 8 x EP 8; 8 H100s: FSDP 2 x EP 4,
# with Adafactor and 2 rows per device, as AdamW's moments alone fill 80 GiB there), with
# each dispatch: dropless gathers the expert weights, capacity sends tokens.
MOE_MESHES = {"v5p-128": ("1,8,1,8", "v5p", []),
              "h100x8": ("1,2,1,4", "h100", ["--gin.create_optimizer.name='adafactor'"])}
MOE_ROWS_PER_DEVICE = {"h100x8": 2}
MOE_DISPATCHES = ("dropless", "capacity")
WALL_GOAL_S = 300.0


def add_arguments(parser) -> None:
    parser.add_argument("--sequence_length", type=int, default=4096)
    parser.add_argument("--rows_per_device", type=int, default=4)
    parser.add_argument("--mfu", type=float, default=0.4)


def _entries() -> list[dict]:
    """Each plan: its label, gin file, mesh (a config name or a shape and chip) and
    extra flags."""
    dense = [{"model": model, "gin_file": f"models/decoder/{model}.gin", "mesh": mesh,
              "flags": [f"--mesh={mesh}", *MODEL_BINDINGS[model]], "devices": devices}
             for model in MODELS for mesh, devices in MESHES.items()]
    moe = [{"model": f"mixtral_8x7b {dispatch}", "gin_file": "models/moe/mixtral_8x7b.gin",
            "mesh": mesh, "devices": MESHES[mesh],
            "rows_per_device": MOE_ROWS_PER_DEVICE.get(mesh),
            "flags": [f"--mesh={shape}", f"--chip={chip}",
                      f"--gin.MoEConfig.dispatch='{dispatch}'", *flags]}
           for mesh, (shape, chip, flags) in MOE_MESHES.items() for dispatch in MOE_DISPATCHES]
    return dense + moe


def _plan(args, entry: dict) -> dict:
    name = f"{entry['model'].replace(' ', '_')}_{entry['mesh']}"
    report_path = args.out.parent / f"plan_{name}.json"
    report_path.unlink(missing_ok=True)
    rows_per_device = entry.get("rows_per_device") or args.rows_per_device
    argv = [harness.t5x_lite_cli(), "plan", f"--gin_file={entry['gin_file']}",
            "--gin_file=runs/pretrain.gin",
            f"--gin.TASK_FEATURE_LENGTHS={{'targets': {args.sequence_length}}}",
            f"--gin.BATCH_SIZE={rows_per_device * entry['devices']}", f"--mfu={args.mfu}",
            f"--output={report_path}", *entry["flags"]]
    log_path = args.out.parent / f"plan_{name}.log"
    print(f"planning {entry['model']} on {entry['mesh']}: {harness.display(argv)}", flush=True)
    base = {"model": entry["model"], "mesh": entry["mesh"], "command": harness.display(argv)}
    try:
        child = harness.run_child(f"plan {entry['model']} {entry['mesh']}", argv,
                                  dict(os.environ), log_path)
    except harness.BenchError:
        return {**base, "refused": harness.last_line(log_path)}
    return {**base, **child, "report": json.loads(report_path.read_text())}


def measure(args) -> dict:
    plans = [_plan(args, entry) for entry in _entries()]
    slowest = max(plan.get("wall_s", 0.0) for plan in plans)
    return {"sequence_length": args.sequence_length, "rows_per_device": args.rows_per_device,
            "mfu": args.mfu, "versions": harness.versions("flax"), "plans": plans,
            "targets": [harness.target("slowest plan, wall s here", round(slowest, 1),
                                       f"<= {WALL_GOAL_S:.0f}", slowest <= WALL_GOAL_S)]}


GIB = 2**30
MEMORY_COLUMNS = ("model", "mesh (data x fsdp x tensor [x expert])", "chip", "batch", "params + opt GiB",
                  "temps GiB", "total GiB / HBM", "lower + compile s", "plan wall s")
SPEED_COLUMNS = ("model", "mesh", "config TFLOP/dev", "compiled TFLOP/dev", "config / compiled",
                 "comm GB/dev (wire)", "all-to-all GB/dev", "all-gather GB/dev", "comm s",
                 "step s", "tokens/s", "tokens/s/dev")


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
            *(f"{comm['by_kind'].get(kind, {}).get('wire_bytes', 0) / 1e9:,.1f}"
              for kind in ("all-to-all", "all-gather")),
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
  is planned with `DecoderConfig.vocab_size=32768`, as a SentencePiece vocabulary gives.
- Mixtral-8x7B (`models/moe/mixtral_8x7b.gin`): config FLOPs count the active parameters
  (2 of 8 experts). Meshes with an expert axis: v5p-128 as 1 x 8 x 1 x 8 (FSDP 8, EP 8),
  8 H100s as 1 x 2 x 1 x 4 (FSDP 2, EP 4) with Adafactor and 2 rows per device (AdamW's
  float32 params, moments and gradients need 94 GiB per device there before any
  activation). dropless gathers every expert's weights to each device (all-gather), and
  the gathered weights and their gradients are what make it not fit; capacity (factor
  1.25) sends the token buffers to the experts' devices (all-to-all)."""


def section(result: dict) -> str:
    lines = [
        markdown.provenance(result, f"jax {result['versions']['jax']}."), "",
        (f"Sequence length {result['sequence_length']}, {result['rows_per_device']} rows per "
         f"device (Mixtral on 8 H100s: 2), MFU assumed {100 * result['mfu']:.0f}%. One command "
         "per row, e.g.:"), "",
        f"```\n{result['plans'][-1]['command']}\n```", "",
        markdown.table(MEMORY_COLUMNS, [_memory_row(plan) for plan in result["plans"]],
                       align="llllrrrrr"), "",
        markdown.table(SPEED_COLUMNS, [_speed_row(plan) for plan in result["plans"]],
                       align="ll" + "r" * 10), "",
        markdown.targets_line(result["targets"]), "",
        DEFINITIONS,
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    harness.suite_main(__file__, TITLE, add_arguments, measure)
