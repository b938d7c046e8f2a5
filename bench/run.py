"""Character-level Shakespeare on CPU: t5x_lite beside the PyTorch reference.

    python bench/run.py [--steps 2000] [--text PATH] [--out_dir bench/results]
                        [--skip_torch] [--devices 2]

Runs bench/torch_reference.py, then `t5x_lite train` with
gin/experiments/shakespeare_char.gin, each as a child process, and writes
<out_dir>/shakespeare.json and the matching section of BENCHMARKS.md.
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import figures
import report
from figures import BenchError

REPO = pathlib.Path(__file__).resolve().parent.parent
TORCH_REFERENCE = REPO / "bench" / "torch_reference.py"
DEFAULT_TEXT = (REPO.parent / "shared" / "data" / "tinyshakespeare.txt").resolve()
DEFAULT_OUT_DIR = REPO / "bench" / "results"
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
GIN_FILE = "experiments/shakespeare_char.gin"
RESULTS_NAME = "shakespeare.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--text", type=pathlib.Path, default=DEFAULT_TEXT)
    parser.add_argument("--out_dir", type=pathlib.Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--skip_torch", action="store_true",
                        help="reuse the torch figures of the last results with the same setup")
    parser.add_argument("--devices", type=int, default=2,
                        help="XLA host devices for t5x_lite (one per core is fastest)")
    args = parser.parse_args(argv)
    args.text, args.out_dir = args.text.resolve(), args.out_dir.resolve()
    if not args.text.is_file():
        raise BenchError(f"--text {args.text}: no such file; give the path of a text file")
    if args.steps < 1 or args.devices < 1:
        raise BenchError("--steps and --devices must be positive")
    return args


def run_child(name: str, argv: list[str], env: dict, log_path: pathlib.Path) -> dict:
    """Runs one child to completion; its wall time and its own peak RSS."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        # wait4 gives this child's own rusage; RUSAGE_CHILDREN would be a max over all children.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall_s = time.perf_counter() - start
    if process.returncode != 0:
        raise BenchError(f"{name} failed (exit code {process.returncode}): "
                         f"{_last_line(log_path)} [log: {log_path}]")
    # ru_maxrss is in kilobytes on Linux.
    return {"wall_s": wall_s, "peak_rss_mb": usage.ru_maxrss / 1024}


def _last_line(log_path: pathlib.Path) -> str:
    """The last non-blank line of a log, progress-bar carriage returns included."""
    text = log_path.read_text(errors="replace").replace("\r", "\n")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def torch_command(args: argparse.Namespace, summary_path: pathlib.Path) -> list[str]:
    return [sys.executable, str(TORCH_REFERENCE), "--text", str(args.text),
            "--steps", str(args.steps), "--out", str(summary_path)]


def t5x_lite_command(args: argparse.Namespace, model_dir: pathlib.Path) -> list[str]:
    return [_t5x_lite_cli(), "train", f"--gin_file={GIN_FILE}",
            f"--gin.TEXT_FILES=['{args.text}']", f"--gin.MODEL_DIR='{model_dir}'",
            f"--gin.TRAIN_STEPS={args.steps}"]


def _t5x_lite_cli() -> str:
    beside_python = pathlib.Path(sys.executable).parent / "t5x_lite"
    found = str(beside_python) if beside_python.exists() else shutil.which("t5x_lite")
    if not found:
        raise BenchError("the t5x_lite command is not installed; run `pip install -e .` "
                         "in the repository first")
    return found


def t5x_lite_env_overrides(devices: int) -> dict[str, str]:
    """CPU only, `devices` host devices; other XLA flags of the caller are kept."""
    kept = [flag for flag in os.environ.get("XLA_FLAGS", "").split()
            if not flag.startswith("--xla_force_host_platform_device_count")]
    flags = [f"--xla_force_host_platform_device_count={devices}", *kept]
    return {"XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu"}


def display(argv: list[str], env_overrides: dict[str, str] | None = None) -> str:
    """A command line as a user would type it from the repository root."""
    shown = [_shown_path(part) for part in argv]
    prefix = [f"{key}={shlex.quote(value)}" for key, value in (env_overrides or {}).items()]
    return " ".join(prefix + [_quoted(part) for part in shown])


def _quoted(part: str) -> str:
    """Shell quoting that keeps `--flag="['gin', 'value']"` readable."""
    if shlex.quote(part) == part or "=" not in part or any(c in part for c in '"$`\\!'):
        return shlex.quote(part)
    name, value = part.split("=", 1)
    return f'{name}="{value}"' if shlex.quote(name) == name else shlex.quote(part)


def _shown_path(part: str) -> str:
    if part == sys.executable:
        return "python"
    if part.endswith(os.sep + "t5x_lite") and os.path.isabs(part):
        return "t5x_lite"
    if part.startswith(str(REPO) + os.sep):
        return os.path.relpath(part, REPO)
    return part


def run_torch(args: argparse.Namespace) -> dict:
    summary_path = args.out_dir / "torch_reference.json"
    summary_path.unlink(missing_ok=True)
    argv = torch_command(args, summary_path)
    print(f"running the torch reference: {display(argv)}", flush=True)
    child = run_child("torch reference", argv, dict(os.environ),
                      args.out_dir / "torch_reference.log")
    summary = json.loads(summary_path.read_text())
    return {"command": display(argv), "summary": summary, **child}


def run_t5x_lite(args: argparse.Namespace) -> dict:
    model_dir = pathlib.Path(tempfile.mkdtemp(prefix="t5x_lite_bench_"))
    try:
        argv = t5x_lite_command(args, model_dir)
        overrides = t5x_lite_env_overrides(args.devices)
        print(f"running t5x_lite: {display(argv, overrides)}", flush=True)
        child = run_child("t5x_lite train", argv, {**os.environ, **overrides},
                          args.out_dir / "t5x_lite.log")
        shutil.copy(model_dir / "metrics.jsonl", args.out_dir / "t5x_lite_metrics.jsonl")
        shown = display(argv, overrides).replace(str(model_dir), "<fresh tmp dir>")
        return {"command": shown, **child, **figures.t5x_lite_figures(model_dir)}
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)


def torch_side(run: dict, t5x_lite: dict) -> dict:
    constants = figures.torch_constants(TORCH_REFERENCE)
    side = figures.torch_figures(run["summary"], figures.torch_flops_per_token(constants),
                                 t5x_lite["peak_flops_measured"])
    return {"command": run["command"], "wall_s": run["wall_s"],
            "peak_rss_mb": run["peak_rss_mb"], **side}


def reused_torch_side(args: argparse.Namespace) -> dict | None:
    """The torch figures of the previous results, when they ran the same text and steps."""
    previous_path = args.out_dir / RESULTS_NAME
    if not previous_path.is_file():
        return None
    previous = json.loads(previous_path.read_text())
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


def machine() -> dict:
    cpu = platform.processor() or "unknown CPU"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]}


def versions() -> dict:
    names = ("jax", "jaxlib", "flax", "torch")
    return {"python": platform.python_version(),
            **{name: importlib.metadata.version(name) for name in names}}


def harness_command(argv: list[str]) -> str:
    return " ".join(["python", "bench/run.py", *(shlex.quote(a) for a in argv)])


def benchmark(argv: list[str]) -> dict:
    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results = {"benchmark": "shakespeare_char", "command": harness_command(argv),
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": machine(), "versions": versions(), "text": str(args.text),
               "steps": args.steps, "devices": args.devices}
    torch_run = None if args.skip_torch else run_torch(args)
    t5x_lite = run_t5x_lite(args)
    torch = torch_side(torch_run, t5x_lite) if torch_run else reused_torch_side(args)
    results.update(torch=torch, t5x_lite=t5x_lite,
                   ratio_t5x_lite_over_torch=ratios(torch, t5x_lite))
    report.write_atomically(args.out_dir / RESULTS_NAME, json.dumps(results, indent=2) + "\n")
    report.update_benchmarks(BENCHMARKS_MD, results)
    return results


def main() -> None:
    try:
        results = benchmark(sys.argv[1:])
    except BenchError as error:
        print(f"bench/run.py: error: {error}", file=sys.stderr)
        sys.exit(1)
    print(report.render_section(results))


if __name__ == "__main__":
    main()
