"""Where the time of a profiled CPU run goes, from its jax.profiler trace.

    python bench/trace_summary.py MODEL_DIR/profile [--steps N] [--top 15]

Reads the newest `*.xplane.pb` under the folder (written by `ProfileConfig` or
`jax.profiler.trace`) and sums the XLA CPU thread events by operation and by kind
(matmul fusions, other fusions, copies and transposes, collectives), and the busy time
of the Python main thread. With --steps, also per step.
"""

import argparse
import collections
import glob
import os
import re

from jax.profiler import ProfileData

KINDS = (("collective + wait", re.compile(
             r"all-reduce|all-gather|reduce-scatter|collective|all-to-all|Rendezvous|Wait:")),
         ("copy/transpose", re.compile(r"^(copy|transpose)")),
         ("matmul", re.compile(r"ynn|dot|convolution|gemm|matmul")),
         ("loop", re.compile(r"^while")),
         ("other fusion", re.compile(r"fusion")))
NOT_OPS = re.compile(r"^(end: |ThreadpoolListener|\[|\$|Thunk|CommonPjRt|PjRt)")


def newest_trace(folder: str) -> str:
    traces = glob.glob(os.path.join(folder, "**", "*.xplane.pb"), recursive=True)
    if not traces:
        raise SystemExit(f"no *.xplane.pb under {folder}: run with ProfileConfig.num_steps > 0")
    return max(traces, key=os.path.getmtime)


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if pattern.search(name):
            return kind
    return "other"


def op_seconds(trace_path: str) -> tuple[collections.Counter, float]:
    """(seconds per XLA op summed over the compute threads, Python main-thread seconds)."""
    per_op, python_ns = collections.Counter(), 0
    for plane in ProfileData.from_file(trace_path).planes:
        for line in plane.lines:
            if line.name.startswith("tf_XLAEigen") or line.name.startswith("tf_XLACpu"):
                for event in line.events:
                    if not NOT_OPS.search(event.name):
                        per_op[event.name] += event.duration_ns
            elif line.name.endswith(".py"):
                python_ns += _covered_ns(e for e in line.events if e.name.startswith("$"))
    return collections.Counter({k: v / 1e9 for k, v in per_op.items()}), python_ns / 1e9


def _covered_ns(events) -> int:
    """Nanoseconds covered by the union of the events' intervals (calls nest)."""
    covered, reached = 0, 0
    for start, duration in sorted((e.start_ns, e.duration_ns) for e in events):
        end = start + duration
        if end > reached:
            covered += end - max(start, reached)
            reached = end
    return covered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--steps", type=int, default=1, help="steps in the trace")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    trace = newest_trace(args.folder)
    per_op, python_s = op_seconds(trace)
    total = sum(per_op.values())
    by_kind = collections.Counter()
    for name, seconds in per_op.items():
        by_kind[kind_of(name)] += seconds
    print(f"{trace}\nXLA thread busy time {1000 * total / args.steps:.1f} ms per step "
          f"(summed over threads); Python main thread {1000 * python_s / args.steps:.1f} ms")
    for kind, seconds in by_kind.most_common():
        print(f"  {kind:<16} {100 * seconds / total:5.1f}%  {1000 * seconds / args.steps:7.2f} ms")
    print(f"top {args.top} ops:")
    for name, seconds in per_op.most_common(args.top):
        print(f"  {100 * seconds / total:5.1f}%  {1000 * seconds / args.steps:7.2f} ms  {name}")


if __name__ == "__main__":
    main()
