"""Runs benchmark suites and rewrites BENCHMARKS.md from their results.

    python bench/run.py [--suites a,b,...] [--out_dir bench/results] [--list]
                        [--<suite>.<flag> [VALUE]] ...

A suite is a module bench/suite_<name>.py with TITLE, DEVICES and section(result);
each selected suite runs as `python bench/suite_<name>.py --out <out_dir>/<name>.json`
(plus its flags, `--shakespeare.steps 200` passing `--steps 200` to shakespeare),
with its output in <out_dir>/<name>.log. Then the sections of the suites that ran
are replaced in BENCHMARKS.md and the summary table at its top is rebuilt from
every suite's results JSON in out_dir. A failed suite: one line, the others still
run, exit code 1.
"""

import argparse
import importlib.util
import json
import os
import pathlib
import sys
import types

import harness
import markdown
from harness import BenchError

BENCHMARKS_MD = harness.REPO / "BENCHMARKS.md"


def discover(suite_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """Suite name -> module path, sorted by name."""
    paths = sorted(suite_dir.glob("suite_*.py"))
    return {path.stem.removeprefix("suite_"): path for path in paths}


def load_suite(path: pathlib.Path) -> types.ModuleType:
    """Imports a suite module (its folder on sys.path, for its helper modules)."""
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for attribute in ("TITLE", "DEVICES", "section"):
        if not hasattr(module, attribute):
            raise BenchError(f"{harness.shown_path(path)} has no {attribute}")
    return module


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, dict[str, list[str]]]:
    """The entry point's own flags, and each suite's flags keyed by suite name."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], allow_abbrev=False,
        epilog="Flags of the form --<suite>.<flag> [VALUE] go to that suite as --<flag> [VALUE].")
    parser.add_argument("--suites", help="comma-separated suite names (default: all)")
    parser.add_argument("--out_dir", type=pathlib.Path, default=harness.DEFAULT_OUT_DIR)
    parser.add_argument("--list", action="store_true", help="list the suites and exit")
    parser.add_argument("--suite_dir", type=pathlib.Path, default=harness.BENCH_DIR,
                        help="where the suite_<name>.py modules are")
    parser.add_argument("--markdown", type=pathlib.Path, default=BENCHMARKS_MD,
                        help="the file to rewrite")
    args, rest = parser.parse_known_args(argv)
    return args, _suite_flags(rest, parser)


def _suite_flags(rest: list[str], parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """`--name.flag[=value] [value ...]` -> {name: ['--flag[=value]', 'value', ...]}."""
    flags: dict[str, list[str]] = {}
    current = None
    for token in rest:
        if token.startswith("--") and "." in token.split("=", 1)[0]:
            current, flag = token[2:].split(".", 1)
            flags.setdefault(current, []).append(f"--{flag}")
        elif current is not None and not token.startswith("--"):
            flags[current].append(token)
        else:
            parser.error(f"unrecognized argument {token!r}; suite flags are "
                         "--<suite>.<flag> [VALUE]")
    return flags


def select(names: list[str], suites_flag: str | None, flags: dict[str, list[str]]) -> list[str]:
    chosen = names if suites_flag is None else [n.strip() for n in suites_flag.split(",")
                                                if n.strip()]
    unknown = [name for name in [*chosen, *flags] if name not in names]
    if unknown:
        raise BenchError(f"no suite named {unknown[0]!r}; the suites are {', '.join(names)}")
    unselected = [name for name in flags if name not in chosen]
    if unselected:
        raise BenchError(f"flags for suite {unselected[0]!r}, which is not selected in --suites")
    return chosen


def suite_env(devices: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if devices is not None:
        env.update(harness.host_devices_env(devices, cpu_only=False))
    return env


def run_suite(name: str, suite: types.ModuleType, out_dir: pathlib.Path,
              flags: list[str]) -> dict:
    """Runs one suite's script as a child; its fresh results, with the child's wall time."""
    path = pathlib.Path(suite.__file__)
    results_path, log_path = out_dir / f"{name}.json", out_dir / f"{name}.log"
    before = _stamp(results_path)
    argv = [sys.executable, str(path), "--out", str(results_path), *flags]
    env = suite_env(suite.DEVICES)
    shown_env = {"XLA_FLAGS": env["XLA_FLAGS"]} if suite.DEVICES is not None else None
    print(f"{name}: {harness.display(argv, shown_env)} (log: {harness.shown_path(log_path)})",
          flush=True)
    child = harness.run_child(f"suite {name}", argv, env, log_path)
    if _stamp(results_path) in (None, before):
        raise BenchError(f"suite {name} wrote no {harness.shown_path(results_path)} "
                         f"[log: {harness.shown_path(log_path)}]")
    result = json.loads(results_path.read_text())
    print(f"{name}: done in {child['wall_s']:.0f} s", flush=True)
    return {**result, "suite_wall_s": round(child["wall_s"], 1)}


def _stamp(path: pathlib.Path) -> tuple | None:
    if not path.exists():
        return None
    status = path.stat()
    return status.st_ino, status.st_mtime_ns


def present_results(names: list[str], out_dir: pathlib.Path) -> dict[str, dict]:
    """The results JSON of every suite found in out_dir, in suite order."""
    results = {}
    for name in names:
        path = out_dir / f"{name}.json"
        if path.is_file():
            results[name] = json.loads(path.read_text())
    return results


def rewrite_benchmarks(path: pathlib.Path, sections: list[tuple[str, str]],
                       all_results: dict[str, dict], out_dir: pathlib.Path,
                       suites: tuple[str, ...] = ()) -> None:
    """Replaces each (title, body) section in place and the summary at the top (keeping
    the rows of the `suites` with no results in `out_dir`)."""
    document = path.read_text() if path.exists() else markdown.INTRO
    for title, body in sections:
        document = markdown.replace_section(document, title, body)
    summary = markdown.summary_body(all_results, harness.shown_path(out_dir),
                                    markdown.section_body(document, markdown.SUMMARY_TITLE),
                                    suites)
    document = markdown.replace_section(document, markdown.SUMMARY_TITLE, summary, at_top=True)
    harness.write_atomically(path, document)


def list_suites(suites: dict[str, pathlib.Path]) -> None:
    for name, path in suites.items():
        try:
            suite = load_suite(path)
            print(f"{name:12} {suite.TITLE} (host devices: {suite.DEVICES or 'default'})")
        except Exception as error:  # noqa: BLE001  (a broken suite is listed, not fatal)
            print(f"{name:12} cannot be imported: {error}")


def run(argv: list[str]) -> int:
    args, flags = parse_args(argv)
    suites = discover(args.suite_dir.resolve())
    if args.list:
        list_suites(suites)
        return 0
    chosen = select(list(suites), args.suites, flags)
    out_dir = args.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    sections, failed = [], []
    for name in chosen:
        try:
            suite = load_suite(suites[name])
            result = run_suite(name, suite, out_dir, flags.get(name, []))
            harness.write_atomically(out_dir / f"{name}.json", json.dumps(result, indent=2) + "\n")
            sections.append((suite.TITLE, suite.section(result)))
        except Exception as error:  # noqa: BLE001  (one failed suite must not stop the rest)
            print(f"bench/run.py: {_one_line(error)}", file=sys.stderr, flush=True)
            failed.append(name)
    rewrite_benchmarks(args.markdown.resolve(), sections, present_results(list(suites), out_dir),
                       out_dir, tuple(suites))
    print(f"rewrote {harness.shown_path(args.markdown.resolve())}"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text if isinstance(error, BenchError) else f"{type(error).__name__}: {text}"


def main() -> None:
    try:
        sys.exit(run(sys.argv[1:]))
    except BenchError as error:
        print(f"bench/run.py: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
