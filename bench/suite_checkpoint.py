"""What asynchronous checkpointing costs a training run, on CPU.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python bench/suite_checkpoint.py \
        [--steps 300] [--save_every 50] [--repeats 3] [--text PATH] [--devices 2] \
        [--saves 8] [--out bench/results/checkpoint.json]

Runs `t5x_lite train` on the Shakespeare config (no evals) saving every --save_every
steps and saving only at the last step, --repeats times each, interleaved, and
compares the mean step time from each run's goodput.jsonl with the checkpoint blocks
counted in. Then, in this process, saves the same model's train state --saves times
and times the part of Checkpointer.save before it returns and the whole save.
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
    args.text = args.text.resolve()
    if not args.text.is_file():
        raise BenchError(f"--text {args.text}: no such file; give the path of a text file")
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
            f"--gin.CheckpointConfig.save_every={save_every}"]


def run_training(args, save_every: int, log_path: pathlib.Path) -> dict:
    """One `t5x_lite train` child: its goodput figures and wall time."""
    model_dir = pathlib.Path(tempfile.mkdtemp(prefix="t5x_lite_bench_"))
    try:
        argv, env = train_argv(args, model_dir, save_every), harness.host_devices_env(args.devices)
        child = harness.run_child("t5x_lite train", argv, {**os.environ, **env}, log_path)
        lines = (model_dir / "goodput.jsonl").read_text().splitlines()
        command = harness.display(argv, env).replace(str(model_dir), "<fresh tmp dir>")
        return {"command": command, "save_every": save_every, "wall_s": child["wall_s"],
                **step_figures(json.loads(lines[-1]), args.steps, save_every)}
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)


def step_figures(goodput: dict, train_steps: int, save_every: int) -> dict:
    """Mean step time over the steps after the first (compile), checkpoint blocks included."""
    seconds, steps = goodput["seconds"], goodput["steps"]["productive"]
    saves = train_steps // save_every + (train_steps % save_every != 0)
    train_s = seconds["productive"] + seconds["checkpointing"]
    return {"steps_timed": steps, "saves": saves, "productive_s": seconds["productive"],
            "checkpointing_s": seconds["checkpointing"], "train_s": train_s,
            "step_ms": 1000 * train_s / steps,
            "blocking_ms_per_save": 1000 * seconds["checkpointing"] / saves}


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


def overhead(runs: dict[str, list[dict]]) -> dict:
    """The periodic runs' mean step time over the final-only runs', minus one; per pair too."""
    mean_ms = {kind: statistics.mean(run["step_ms"] for run in kind_runs)
               for kind, kind_runs in runs.items()}
    pairs = [p["step_ms"] / f["step_ms"] - 1 for p, f in zip(runs["periodic"], runs["final_only"])]
    return {"mean_step_ms": mean_ms, "added": mean_ms["periodic"] / mean_ms["final_only"] - 1,
            "added_per_pair": pairs}


def save_timings(args) -> dict:
    """Blocking and total milliseconds of saves of the Shakespeare train state."""
    from t5x_lite.checkpointing import CheckpointConfig, Checkpointer

    setup = shakespeare_setup.build(args.text)
    state, meta = setup.state, setup.meta()
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
    added = overhead(runs)
    return {"steps": args.steps, "save_every": args.save_every, "repeats": args.repeats,
            "devices": args.devices, "versions": harness.versions("orbax-checkpoint"),
            "runs": runs, "overhead": added, "save": save_timings(args),
            "targets": [harness.target(f"% step time added by saving every {args.save_every} "
                                       "steps", round(100 * added["added"], 2),
                                       f"< {100 * OVERHEAD_GOAL:g}", added["added"] < OVERHEAD_GOAL)]}


COLUMNS = ("runs", "saves per run", "mean step ms", "checkpoint blocks s per run",
           "blocking ms per save", "wall s per run")


def _kind_row(name: str, kind_runs: list[dict]) -> tuple:
    def mean(key):
        return statistics.mean(run[key] for run in kind_runs)
    return (f"{name} (x{len(kind_runs)})", kind_runs[0]["saves"], markdown.number(mean("step_ms"), 1),
            markdown.number(mean("checkpointing_s"), 2),
            markdown.number(mean("blocking_ms_per_save")), markdown.number(mean("wall_s")))


def _save_line(save: dict) -> str:
    return (f"One save of the {save['state_mb']:.1f} MB train state in an idle process "
            f"(median of {save['saves_after_first']} after the first): "
            f"**{save['blocking_ms_median']:.0f} ms** before `save()` returns, "
            f"**{save['total_ms_median']:.0f} ms** until it is on disk (first save: "
            f"{save['first_blocking_ms']:.0f} ms blocking, {save['first_total_ms']:.0f} ms total).")


NOTES = """\
- mean step ms: (goodput `productive` + `checkpointing` seconds) / productive steps, i.e.
  the wall time of steps 2 to the last with the checkpoint blocks put back in (the logged
  tokens/s leaves them out). Both kinds of run hold the forced save at the last step; the
  writes that go on in the background after `save()` returns slow the following steps and
  are counted in `productive`.
- blocking ms per save: a run's `checkpointing` seconds / its saves: the finiteness check
  (which waits for the step in flight) plus `Checkpointer.save` until it returns.
- The runs alternate (final-only first in odd repeats, periodic first in even ones) so that
  a change in machine load falls on both; per-pair figures show the noise."""


def _overhead_line(result: dict) -> str:
    added = result["overhead"]
    pairs = ", ".join(f"{100 * value:+.1f}%" for value in added["added_per_pair"])
    return (f"Saving every {result['save_every']} steps adds **{100 * added['added']:.1f}%** to "
            f"the mean step time (each pair of runs: {pairs}).")


def section(result: dict) -> str:
    runs, versions = result["runs"], result["versions"]
    rows = [_kind_row(f"save every {result['save_every']} steps", runs["periodic"]),
            _kind_row("save at the last step only", runs["final_only"])]
    setup = (f"`t5x_lite train` on `{shakespeare_setup.GIN_FILE}` without evals, {result['steps']} steps on "
             f"{result['devices']} host devices:")
    lines = [
        markdown.provenance(result, f"jax {versions['jax']}, orbax-checkpoint "
                                    f"{versions['orbax-checkpoint']}."), "",
        setup, "",
        markdown.table(COLUMNS, rows), "",
        _overhead_line(result), "",
        _save_line(result["save"]), "",
        markdown.targets_line(result["targets"]), "",
        NOTES,
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    harness.suite_main(__file__, TITLE, add_arguments, measure)
