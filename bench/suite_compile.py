"""Compile time of the train step against depth, with and without scan over layers.

    python bench/suite_compile.py [--layers 2,32] [--repeats 3] [--out FILE.json]

Each measurement is a fresh process (bench/compile_probe.py, persistent compilation
cache off) that lowers and compiles the small model's train step with `num_layers`
overridden, on one host device. Runs are interleaved over the configurations, and the
fastest of `--repeats` is kept, so machine load hits every column alike.
"""

import json
import os
import subprocess
import sys

import harness
import markdown

TITLE = "Compile time against depth (CPU)"
DEVICES = 1
PROBE = harness.BENCH_DIR / "compile_probe.py"
GOAL = 1.5  # scanned: deepest / shallowest compile time


def add_arguments(parser) -> None:
    parser.add_argument("--layers", default="2,32", help="comma-separated depths")
    parser.add_argument("--repeats", type=int, default=3)


def _probe(num_layers: int, scan: bool) -> dict:
    argv = [sys.executable, str(PROBE), f"--num_layers={num_layers}",
            *([] if scan else ["--no_scan"])]
    env = {**os.environ, **harness.host_devices_env(DEVICES)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=harness.REPO,
                          check=False)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
        raise harness.BenchError(f"{harness.display(argv)} failed: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fastest(runs: list[dict]) -> dict:
    best = min(runs, key=lambda run: run["lower_seconds"] + run["compile_seconds"])
    return {**best, "all_lower_plus_compile_seconds": [
        round(run["lower_seconds"] + run["compile_seconds"], 2) for run in runs]}


def measure(args) -> dict:
    depths = [int(depth) for depth in args.layers.split(",")]
    configs = [(depth, scan) for scan in (True, False) for depth in depths]
    runs: dict[tuple, list] = {config: [] for config in configs}
    for _ in range(args.repeats):
        for config in configs:
            runs[config].append(_probe(*config))
    rows = [_fastest(runs[config]) for config in configs]
    seconds = {(r["num_layers"], r["scan_layers"]): r["lower_seconds"] + r["compile_seconds"]
               for r in rows}
    ratio = seconds[(depths[-1], True)] / seconds[(depths[0], True)]
    return {"gin_file": "models/decoder/small.gin", "repeats": args.repeats, "rows": rows,
            "versions": harness.versions("flax"),
            "scanned_deepest_over_shallowest": ratio,
            "unrolled_deepest_over_shallowest":
                seconds[(depths[-1], False)] / seconds[(depths[0], False)],
            "targets": [harness.target(
                f"scan: {depths[-1]}-layer / {depths[0]}-layer compile time", round(ratio, 3),
                f"<= {GOAL}", ratio <= GOAL)]}


COLUMNS = ("layers", "lower s (scan)", "compile s (scan)", "total s (scan)",
           "lower s (unrolled)", "compile s (unrolled)", "total s (unrolled)")


def _cells(row: dict) -> tuple:
    return (f"{row['lower_seconds']:.2f}", f"{row['compile_seconds']:.2f}",
            f"{row['lower_seconds'] + row['compile_seconds']:.2f}")


def section(result: dict) -> str:
    by_config = {(r["num_layers"], r["scan_layers"]): r for r in result["rows"]}
    depths = sorted({depth for depth, _ in by_config})
    rows = [(depth, *_cells(by_config[(depth, True)]), *_cells(by_config[(depth, False)]))
            for depth in depths]
    runs = "; ".join(f"{depth} layers {'scan' if scan else 'unrolled'}: "
                     f"{by_config[(depth, scan)]['all_lower_plus_compile_seconds']}"
                     for depth, scan in sorted(by_config))
    lines = [
        markdown.provenance(result, f"jax {result['versions']['jax']}."), "",
        markdown.table(COLUMNS, rows), "",
        (f"Deepest over shallowest: scan {result['scanned_deepest_over_shallowest']:.2f}x, "
         f"unrolled {result['unrolled_deepest_over_shallowest']:.2f}x."), "",
        markdown.targets_line(result["targets"]), "",
        (f"The small model (`{result['gin_file']}`: width 512, 8 heads, MLP 1536, byte "
         "vocabulary) with `DecoderConfig.num_layers` overridden, batch 8 x 256, AdamW, on "
         "one host device. lower: tracing the train step to StableHLO; compile: XLA's "
         "`lowered.compile()`. Each figure is the fastest of "
         f"{result['repeats']} fresh processes (persistent compilation cache off), runs "
         f"interleaved; all runs (lower + compile, s): {runs}."),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    harness.suite_main(__file__, TITLE, add_arguments, measure)
