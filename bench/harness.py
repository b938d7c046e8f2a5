"""What every benchmark suite shares: child processes, the machine, and its results JSON.

A suite's script calls `suite_main`, which parses `--out` (default
bench/results/<name>.json) beside the suite's own flags, stamps the result with
title, command, date and machine, and writes it. Nothing here imports jax.
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
import time
from collections.abc import Callable

REPO = pathlib.Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
DEFAULT_OUT_DIR = BENCH_DIR / "results"
DEFAULT_TEXT = (REPO.parent / "shared" / "data" / "tinyshakespeare.txt").resolve()


class BenchError(RuntimeError):
    """A failure a suite reports as one line."""


def existing_text(path: pathlib.Path) -> pathlib.Path:
    """The absolute path of a text file given by --text; BenchError when there is none."""
    path = path.resolve()
    if not path.is_file():
        raise BenchError(f"--text {path}: no such file; give the path of a text file")
    return path


def planned_setup(gin_files: list[str], bindings: list[str], mesh_shape: tuple):
    """The trainer's setup for a gin config on a mesh, the config parsed afresh as
    `t5x_lite plan` parses it; gin's config is cleared before and after."""
    import gin

    from t5x_lite.analysis import aot
    from t5x_lite.config import gin_config
    from t5x_lite.config.configurables import register_configurables
    from t5x_lite.parallel import partitioning
    gin.clear_config()
    register_configurables()
    gin_config.parse(gin_files, bindings)
    gin_config.bind_unset_macros(aot.PLACEHOLDER_MACROS)
    try:
        return aot.setup_from_gin(partitioning.create_mesh(mesh_shape))
    finally:
        gin.clear_config()


def target(name: str, value, goal: str, met: bool | None) -> dict:
    """One row of a suite's `targets`; `met` is None when it could not be measured."""
    return {"name": name, "value": value, "goal": goal, "met": met}


def run_child(name: str, argv: list[str], env: dict, log_path: pathlib.Path) -> dict:
    """Runs one child to completion, output to `log_path`; its wall time and own peak RSS."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        # wait4 gives this child's own rusage; RUSAGE_CHILDREN would be a max over all children.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall_s = time.perf_counter() - start
    if process.returncode != 0:
        raise BenchError(f"{name} failed (exit code {process.returncode}): "
                         f"{last_line(log_path)} [log: {shown_path(log_path)}]")
    # ru_maxrss is in kilobytes on Linux.
    return {"wall_s": wall_s, "peak_rss_mb": usage.ru_maxrss / 1024}


def last_line(log_path: pathlib.Path) -> str:
    """The last non-blank line of a log, progress-bar carriage returns included."""
    text = log_path.read_text(errors="replace").replace("\r", "\n")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def t5x_lite_cli() -> str:
    beside_python = pathlib.Path(sys.executable).parent / "t5x_lite"
    found = str(beside_python) if beside_python.exists() else shutil.which("t5x_lite")
    if not found:
        raise BenchError("the t5x_lite command is not installed; run `pip install -e .` "
                         "in the repository first")
    return found


def host_devices_env(devices: int, cpu_only: bool = True) -> dict[str, str]:
    """XLA_FLAGS giving `devices` host devices; the caller's other XLA flags are kept."""
    kept = [flag for flag in os.environ.get("XLA_FLAGS", "").split()
            if not flag.startswith("--xla_force_host_platform_device_count")]
    flags = [f"--xla_force_host_platform_device_count={devices}", *kept]
    return {"XLA_FLAGS": " ".join(flags), **({"JAX_PLATFORMS": "cpu"} if cpu_only else {})}


def display(argv: list[str], env_overrides: dict[str, str] | None = None) -> str:
    """A command line as a user would type it from the repository root."""
    prefix = [f"{key}={shlex.quote(value)}" for key, value in (env_overrides or {}).items()]
    return " ".join(prefix + [_quoted(_shown_part(part)) for part in argv])


def _quoted(part: str) -> str:
    """Shell quoting that keeps `--flag="['gin', 'value']"` readable."""
    if shlex.quote(part) == part or "=" not in part or any(c in part for c in '"$`\\!'):
        return shlex.quote(part)
    name, value = part.split("=", 1)
    return f'{name}="{value}"' if shlex.quote(name) == name else shlex.quote(part)


def _shown_part(part: str) -> str:
    if part == sys.executable:
        return "python"
    if part.endswith(os.sep + "t5x_lite") and os.path.isabs(part):
        return "t5x_lite"
    return shown_path(part)


def shown_path(path) -> str:
    """`path` relative to the repository root when it lies inside it."""
    text = str(path)
    return os.path.relpath(text, REPO) if text.startswith(str(REPO) + os.sep) else text


def machine() -> dict:
    cpu = platform.processor() or "unknown CPU"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]}


def versions(*names: str) -> dict:
    return {"python": platform.python_version(),
            **{name: importlib.metadata.version(name) for name in ("jax", "jaxlib", *names)}}


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def write_atomically(path: pathlib.Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def suite_main(script: str, title: str, add_arguments: Callable[[argparse.ArgumentParser], None],
               measure: Callable[[argparse.Namespace], dict]) -> None:
    """The command line of the suite in `script` (its __file__): measure, then write the JSON.

    `measure(args)` returns the figures and `targets`; `args.out` is the JSON path, and
    its folder takes the suite's logs. A BenchError ends the script with one line, exit 1.
    """
    name = pathlib.Path(script).stem.removeprefix("suite_")
    parser = argparse.ArgumentParser(description=f"{title} (python bench/run.py --suites {name})")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT_DIR / f"{name}.json",
                        help="the results JSON; logs go beside it")
    add_arguments(parser)
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    xla_flags = {"XLA_FLAGS": os.environ["XLA_FLAGS"]} if os.environ.get("XLA_FLAGS") else None
    command = display([sys.executable, shown_path(script), *sys.argv[1:]], xla_flags)
    stamp = {"title": title, "command": command, "date": utc_now(), "machine": machine()}
    try:
        result = {**stamp, **measure(args)}
    except BenchError as error:
        print(f"{shown_path(script)}: error: {error}", file=sys.stderr)
        sys.exit(1)
    write_atomically(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {shown_path(args.out)}")
