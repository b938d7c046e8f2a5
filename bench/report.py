"""The BENCHMARKS.md section, rendered from a results JSON."""

import os
import pathlib

HEADING = "## Character-level Shakespeare (CPU)"
INTRO = "# Benchmarks\n"
VAL_LOSS_TARGET = 1.90
TARGET_STEPS = 2000
COLUMNS = ("run", "tokens/s (median)", "tokens/s (overall)", "step time ms", "compile s",
           "val loss @ steps", "MFU", "peak RSS MB")


def _number(value, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _percent(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _row(name: str, side: dict | None) -> str:
    if side is None:
        return f"| {name} | not run | | | | | | |"
    cells = (name, _number(side["tokens_per_second_median"]),
             _number(side["tokens_per_second_overall"]), _number(side["step_time_ms"], 1),
             _number(side["compile_s"], 1),
             f"{side['final_val_loss']:.3f} @ {side['final_val_loss_step']}",
             _percent(side["mfu"]), _number(side["peak_rss_mb"]))
    return "| " + " | ".join(cells) + " |"


def _torch_name(side: dict | None) -> str:
    if side and side.get("reused_from"):
        return f"torch reference (run of {side['reused_from']})"
    return "torch reference"


def table(results: dict) -> str:
    t5x_name = f"t5x_lite ({results['devices']} host devices)"
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|---|" + "---:|" * (len(COLUMNS) - 1),
             _row(_torch_name(results["torch"]), results["torch"]),
             _row(t5x_name, results["t5x_lite"])]
    return "\n".join(lines)


def _ratio_line(results: dict) -> str:
    ratio = results["ratio_t5x_lite_over_torch"]
    if ratio is None:
        return "t5x_lite / torch tokens/s: — (torch reference not run)."
    return (f"t5x_lite / torch tokens/s: **{ratio['tokens_per_second_median']:.2f}x** (median), "
            f"**{ratio['tokens_per_second_overall']:.2f}x** (overall).")


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "not met", None: "not measured"}[met]


def _targets_line(results: dict) -> str:
    t5x, ratio = results["t5x_lite"], results["ratio_t5x_lite_over_torch"]
    loss_met = t5x["final_val_loss"] <= VAL_LOSS_TARGET
    speed_met = None if ratio is None else min(ratio.values()) >= 1.0
    line = (f"Targets: val loss <= {VAL_LOSS_TARGET:.2f} at {TARGET_STEPS} steps "
            f"({_verdict(loss_met)}: {t5x['final_val_loss']:.3f}); tokens/s >= the reference, "
            f"median and overall ({_verdict(speed_met)}).")
    if results["steps"] != TARGET_STEPS:
        line += f" This run has {results['steps']} steps: the loss target does not apply."
    return line


def _wall_line(results: dict) -> str:
    parts = [f"{name} {results[key]['wall_s']:.0f} s"
             for name, key in (("torch", "torch"), ("t5x_lite", "t5x_lite"))
             if results[key] and results[key].get("wall_s") is not None]
    return ("Whole-command wall time (start-up, data, compile, training, evals): "
            + ", ".join(parts) + ".")


DEFINITIONS = """\
- tokens/s (median): t5x_lite: median of the logged `tokens_per_second` (one value per
  `log_every` interval), leaving out step 1 and the intervals holding an eval or a checkpoint
  save; torch: batch x 64 / median step time (steps 11 on, evals are not inside a step).
- tokens/s (overall): tokens / time summed over those same training steps (t5x_lite: the kept
  intervals; torch: steps 11 on), i.e. a mean over training steps without compile or evals.
- step time ms: batch x 64 / tokens/s (median). compile s: t5x_lite's step 1 (compile, first
  batch and one step); the eager reference has none.
- MFU: model FLOPs (6 x matmul params + attention, t5x_lite's accounting for both models) /
  peak. On CPU the peak is the matmul FLOP/s the t5x_lite run measured at start-up, so MFU
  moves with machine load; the torch figure uses the same peak.
- peak RSS MB: maximum resident set of each child process (from its own `wait4` rusage)."""


def render_section(results: dict) -> str:
    """The whole section, heading to last line, from a results dict."""
    machine, versions = results["machine"], results["versions"]
    lines = [
        HEADING, "",
        "```", results["command"], "```", "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores "
        f"(load average {machine['load_average_at_start']:.2f} at start). "
        f"Date: {results['date']}. jax {versions['jax']}, torch {versions['torch']}.", "",
        table(results), "",
        _ratio_line(results), "",
        _targets_line(results), "",
        _wall_line(results), "",
        DEFINITIONS,
    ]
    return "\n".join(lines) + "\n"


def replace_section(document: str, section: str) -> str:
    """`document` with the section under HEADING replaced (or appended)."""
    lines = document.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == HEADING), None)
    if start is None:
        return document.rstrip("\n") + "\n\n" + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))
    following = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + following if following else "")


def update_benchmarks(path: pathlib.Path, results: dict) -> None:
    document = path.read_text() if path.exists() else INTRO
    write_atomically(path, replace_section(document, render_section(results)))


def write_atomically(path: pathlib.Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)
