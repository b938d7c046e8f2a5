"""What asynchronous checkpointing costs a training run, on CPU.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python bench/suite_checkpoint.py \
        [--steps 300] [--save_every 50] [--repeats 3] [--text PATH] [--devices 2] \
        [--saves 8] [--out bench/results/checkpoint.json]

Runs `t5x_lite train` on the Shakespeare config (no evals, a log every 5 steps) saving
every --save_every steps and saving only at the last step, --repeats times each,
interleaved. What a save adds: its block (from goodput.jsonl, beyond the final-only
runs') plus the time it adds to the logged steps around it (save_windows.py), over
--save_every clean steps; beside it, the two kinds' mean step times compared directly.
Then, in this process, saves the same model's train state --saves times and times the
part of Checkpointer.save before it returns and the whole save.
"""

import json
import os
import pathlib
import shutil
import statistics
import tempfile
import time

import harness
import markdown
import save_windows
import shakespeare_setup
from harness import BenchError

TITLE = "Asynchronous checkpoint cost (CPU)"
DEVICES = 2

OVERHEAD_GOAL = 0.05  # at most this much added to the mean step time
NEVER = 10**9  # a save interval that leaves only the forced save at the last step


def add_arguments(parser) -> None:
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--save_every", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind")
    parser.add_argument("--text", type=pathlib.Path, default=harness.DEFAULT_TEXT)
    parser.add_argument("--devices", type=int, default=2, help="host devices of the runs")
    parser.add_argument("--saves", type=int, default=8, help="saves timed in this process")


def check_args(args) -> None:
    args.text = harness.existing_text(args.text)
    if min(args.steps, args.save_every, args.repeats, args.devices, args.saves) < 1:
        raise BenchError("--steps, --save_every, --repeats, --devices and --saves must be "
                         "positive")
    if args.save_every >= args.steps:
        raise BenchError(f"--save_every {args.save_every} must be below --steps {args.steps} "
                         "for any save before the last step")


def train_argv(args, model_dir: pathlib.Path, save_every: int) -> list[str]:
    return [harness.t5x_lite_cli(), "train", f"--gin_file={shakespeare_setup.GIN_FILE}",
            f"--gin.TEXT_FILES=['{args.text}']", f"--gin.MODEL_DIR='{model_dir}'",
            f"--gin.TRAIN_STEPS={args.steps}", "--gin.train.eval_every=None",
            f"--gin.train.log_every={save_windows.LOG_EVERY}",
            f"--gin.CheckpointConfig.save_every={save_every}"]


def run_training(args, save_every: int, log_path: pathlib.Path) -> dict:
    """One `t5x_lite train` child: its goodput and logged-interval figures, wall and CPU time."""
    model_dir = pathlib.Path(tempfile.mkdtemp(prefix="t5x_lite_bench_"))
    try:
        argv, env = train_argv(args, model_dir, save_every), harness.host_devices_env(args.devices)
        child = harness.run_child("t5x_lite train", argv, {**os.environ, **env}, log_path)
        lines = (model_dir / "goodput.jsonl").read_text().splitlines()
        command = harness.display(argv, env).replace(str(model_dir), "<fresh tmp dir>")
        return {"command": command, "save_every": save_every, "wall_s": child["wall_s"],
                **step_figures(json.loads(lines[-1]), args.steps, save_every),
                **save_windows.around_saves(save_windows.logged_intervals(model_dir),
                                            args.steps, save_every)}
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)


def step_figures(goodput: dict, train_steps: int, save_every: int) -> dict:
    """Mean step time over the steps after the first (compile), checkpoint blocks included."""
    seconds, steps = goodput["seconds"], goodput["steps"]["productive"]
    saves = train_steps // save_every + (train_steps % save_every != 0)
    train_s = seconds["productive"] + seconds["checkpointing"]
    return {"steps_timed": steps, "saves": saves, "productive_s": seconds["productive"],
            "checkpointing_s": seconds["checkpointing"], "train_s": train_s,
            "step_ms": 1000 * train_s / steps}


def interleaved_runs(args) -> dict[str, list[dict]]:
    """Both kinds of run, alternating which goes first, so drifting load hits both alike."""
    runs = {"periodic": [], "final_only": []}
    intervals = {"periodic": args.save_every, "final_only": NEVER}
    for repeat in range(args.repeats):
        order = ["final_only", "periodic"] if repeat % 2 == 0 else ["periodic", "final_only"]
        for kind in order:
            print(f"repeat {repeat + 1}/{args.repeats}: training, save_every="
                  f"{intervals[kind]}", flush=True)
            log_path = args.out.parent / f"checkpoint_{kind}_{repeat + 1}.log"
            runs[kind].append(run_training(args, intervals[kind], log_path))
    return runs


def compared(runs: dict[str, list[dict]]) -> dict:
    """Mean step times of the two kinds of run: the median over pairs of periodic /
    final-only - 1 (a pair shares the load of its minutes), and the ratio of the means."""
    def mean(kind):
        return statistics.mean(run["step_ms"] for run in runs[kind])
    pairs = [p["step_ms"] / f["step_ms"] - 1 for p, f in zip(runs["periodic"], runs["final_only"])]
    return {"mean_step_ms": {kind: mean(kind) for kind in runs}, "added_per_pair": pairs,
            "added_median_pair": statistics.median(pairs),
            "added_by_means": mean("periodic") / mean("final_only") - 1}


def per_save(runs: dict[str, list[dict]]) -> dict:
    """What one save adds, in parts: its block (the checkpoint seconds of the periodic runs
    beyond the final-only runs', per extra save), the time it adds to the steps around it,
    and their sum over `save_every` clean steps."""
    def mean(kind, key):
        return statistics.mean(run[key] for run in runs[kind])
    periodic = runs["periodic"]
    extra_saves = periodic[0]["saves"] - runs["final_only"][0]["saves"]
    block_ms = 1000 * (mean("periodic", "checkpointing_s")
                       - mean("final_only", "checkpointing_s")) / extra_saves
    outside_ms = statistics.median(ms for run in periodic for ms in run["outside_block_ms_each_save"])
    clean_ms = statistics.median(run["clean_step_ms"] for run in periodic)
    return {"block_ms": block_ms, "outside_block_ms": outside_ms, "clean_step_ms": clean_ms,
            "added": (block_ms + outside_ms) / (periodic[0]["save_every"] * clean_ms)}


def save_timings(args) -> dict:
    """Blocking and total milliseconds of saves of the Shakespeare train state."""
    from t5x_lite.checkpoints.manager import CheckpointConfig, Checkpointer

    _, state, meta = shakespeare_setup.build(args.text)
    blocking, total = [], []
    with tempfile.TemporaryDirectory() as model_dir:
        checkpointer = Checkpointer(model_dir, CheckpointConfig(save_every=1))
        for step in range(1, args.saves + 1):
            start = time.perf_counter()
            checkpointer.save(step, state, meta, force=True)
            returned = time.perf_counter()
            checkpointer.wait()
            blocking.append(1000 * (returned - start))
            total.append(1000 * (time.perf_counter() - start))
        checkpointer.close()
    later = slice(1, None) if len(blocking) > 1 else slice(None)
    return {"state_mb": shakespeare_setup.size_mb(state), "first_blocking_ms": blocking[0],
            "first_total_ms": total[0], "saves_after_first": len(blocking[later]),
            "blocking_ms_median": statistics.median(blocking[later]),
            "total_ms_median": statistics.median(total[later])}


def measure(args) -> dict:
    check_args(args)
    runs = interleaved_runs(args)
    parts = per_save(runs)
    return {"steps": args.steps, "save_every": args.save_every, "repeats": args.repeats,
            "devices": args.devices, "versions": harness.versions("orbax-checkpoint"),
            "runs": runs, "compared": compared(runs), "per_save": parts,
            "save": save_timings(args),
            "targets": [harness.target(f"% step time added by saving every {args.save_every} "
                                       "steps", round(100 * parts["added"], 2),
                                       f"< {100 * OVERHEAD_GOAL:g}",
                                       parts["added"] < OVERHEAD_GOAL)]}


COLUMNS = ("runs", "saves per run", "mean step ms", "clean step ms", "checkpoint blocks s",
           "wall s")


def _kind_row(name: str, kind_runs: list[dict]) -> tuple:
    def mean(key):
        return statistics.mean(run[key] for run in kind_runs)
    return (f"{name} (x{len(kind_runs)})", kind_runs[0]["saves"],
            markdown.number(mean("step_ms"), 1), markdown.number(mean("clean_step_ms"), 1),
            markdown.number(mean("checkpointing_s"), 2), markdown.number(mean("wall_s")))


def _per_save_line(result: dict) -> str:
    parts = result["per_save"]
    return (f"One save every {result['save_every']} steps, in the loop: "
            f"{parts['block_ms']:.0f} ms blocked (finiteness check and `save()`) + "
            f"{parts['outside_block_ms']:.0f} ms added to the steps around it = "
            f"{parts['block_ms'] + parts['outside_block_ms']:.0f} ms per "
            f"{result['save_every']} steps of {parts['clean_step_ms']:.1f} ms: "
            f"**{100 * parts['added']:+.1f}%** step time (the target's figure).")


def _compared_line(result: dict) -> str:
    compared_ = result["compared"]
    pairs = ", ".join(f"{100 * value:+.1f}%" for value in compared_["added_per_pair"])
    return (f"The mean step times compared directly: periodic / final-only - 1 = "
            f"{100 * compared_['added_median_pair']:+.1f}% (median of the pairs {pairs}; "
            f"{100 * compared_['added_by_means']:+.1f}% from the means).")


def _save_line(save: dict) -> str:
    return (f"One save of the {save['state_mb']:.1f} MB train state in an idle process "
            f"(median of {save['saves_after_first']} after the first): "
            f"**{save['blocking_ms_median']:.0f} ms** before `save()` returns, "
            f"**{save['total_ms_median']:.0f} ms** until it is on disk (first save: "
            f"{save['first_blocking_ms']:.0f} ms blocking, {save['first_total_ms']:.0f} ms total).")


NOTES = """- mean step ms: (goodput `productive` + `checkpointing` seconds) / productive steps: the
  wall time of steps 2 to the last with the checkpoint blocks put back in (the logged
  tokens/s stops its clock in them). Both kinds of run make the forced save at the last
  step and pay the one-time costs of a first save (compiling the finiteness check, orbax's
  set-up), so their difference is the saves before the last step.
- clean step ms: median ms per step of the logged 5-step intervals away from any save
  (from 5 steps before one to 15 after), without step 1 and the last interval.
- Parts of a save: blocked = the periodic runs' checkpoint-block seconds beyond the
  final-only runs', per extra save (the finiteness check, which waits for the step in
  flight, plus `Checkpointer.save` until it returns); added around it = the logged
  intervals from 5 steps before to 15 after each save beyond their steps at the clean step
  time (the background write slowing the next steps, less the step the block waited for),
  median over the saves of all periodic runs. Their sum over `save_every` clean steps is
  what saving adds to a long run's mean step time. It compares intervals seconds apart
  within a run, so it is steadier under a changing machine load than the direct
  comparison of whole runs a minute apart, whose pairs show the noise (runs alternate
  which goes first)."""


def section(result: dict) -> str:
    runs, versions = result["runs"], result["versions"]
    rows = [_kind_row(f"save every {result['save_every']} steps", runs["periodic"]),
            _kind_row("save at the last step only", runs["final_only"])]
    setup = (f"`t5x_lite train` on `{shakespeare_setup.GIN_FILE}` without evals, "
             f"{result['steps']} steps on {result['devices']} host devices; figures per run:")
    lines = [
        markdown.provenance(result, f"jax {versions['jax']}, orbax-checkpoint "
                                    f"{versions['orbax-checkpoint']}."), "",
        setup, "",
        markdown.table(COLUMNS, rows), "",
        _per_save_line(result), "",
        _compared_line(result), "",
        _save_line(result["save"]), "",
        markdown.targets_line(result["targets"]), "",
        NOTES,
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    harness.suite_main(__file__, TITLE, add_arguments, measure)
