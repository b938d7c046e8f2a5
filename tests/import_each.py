"""Imports each named module of t5x_lite alone, as a fresh interpreter would.

    python tests/import_each.py OUT_DIR MODULE [MODULE ...]

The heavy third-party libraries load once, here, before any module of t5x_lite; each
module is then imported in a child forked from this process, with none of t5x_lite
loaded, a few children at a time. A child that fails writes the last line of its error
to OUT_DIR/<module>. Forking spares every child the seconds TensorFlow and jax take to
import, which keeps the check of every module short on two cores.
"""

import importlib
import os
import pathlib
import signal
import sys
import traceback

PRELOADED = ("numpy", "jax", "flax", "optax", "orbax.checkpoint", "gin", "tensorflow", "seqio")
WORKERS = 3
TIMEOUT_S = 240


def import_in_child(module: str, out_dir: pathlib.Path) -> None:
    """Runs in the forked child: imports `module`, records its error, never returns."""
    signal.alarm(TIMEOUT_S)
    try:
        importlib.import_module(module)
        code = 0
    except BaseException as error:  # noqa: BLE001  (any failure to import is the finding)
        lines = traceback.format_exception_only(error)[-1].strip().splitlines()
        (out_dir / module).write_text(lines[-1] if lines else type(error).__name__)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def wait_for_one(running: dict[int, str], out_dir: pathlib.Path) -> None:
    """Waits for a child; one that died without a word gets its exit status recorded."""
    pid, status = os.wait()
    module = running.pop(pid)
    if status and not (out_dir / module).exists():
        (out_dir / module).write_text(f"the import ended with wait status {status} "
                                      f"(killed after {TIMEOUT_S} s, or crashed)")


def main(out_dir: pathlib.Path, modules: list[str]) -> None:
    for library in PRELOADED:
        importlib.import_module(library)
    loaded = sorted(name for name in sys.modules if name.split(".")[0] == "t5x_lite")
    if loaded:
        raise SystemExit(f"t5x_lite modules loaded before the children start: {loaded}")
    running = {}
    for module in modules:
        if len(running) >= WORKERS:
            wait_for_one(running, out_dir)
        pid = os.fork()
        if pid == 0:
            import_in_child(module, out_dir)
        running[pid] = module
    while running:
        wait_for_one(running, out_dir)


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]), sys.argv[2:])
