"""BENCHMARKS.md: numbers as cells, tables, sections replaced in place, the summary."""

import re

INTRO = "# Benchmarks\n"
SUMMARY_TITLE = "Summary"
SUMMARY_COLUMNS = ("suite", "target", "value", "goal", "met")


def number(value, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def percent(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def cell(value) -> str:
    """A figure in a few significant digits, thousands separated; text as it is."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"


def provenance(result: dict, versions: str = "") -> str:
    """The command in a code block, then the machine, its load and the date."""
    machine = result["machine"]
    return (f"```\n{result['command']}\n```\n\n"
            f"Machine: {machine['cpu']}, {machine['cores']} cores (load average "
            f"{machine['load_average_at_start']:.2f} at start). Date: {result['date']}."
            + (f" {versions}" if versions else ""))


def verdict(met: bool | None) -> str:
    return {True: "met", False: "not met", None: "not measured"}[met]


def table(columns: tuple[str, ...], rows: list[tuple], align: str | None = None) -> str:
    """A markdown table; `align` has an l or r per column (default: first l, others r)."""
    align = align or "l" + "r" * (len(columns) - 1)
    rule = "|" + "".join("---|" if side == "l" else "---:|" for side in align)
    lines = ["| " + " | ".join(columns) + " |", rule]
    lines += ["| " + " | ".join(str(part) for part in row) + " |" for row in rows]
    return "\n".join(lines)


def targets_line(targets: list[dict]) -> str:
    """`Targets: name value (goal goal: met); ...` for a suite's section."""
    parts = [f"{t['name']} {cell(t['value'])} (goal {t['goal']}: {verdict(t['met'])})"
             for t in targets]
    return "Targets: " + "; ".join(parts) + "." if parts else "Targets: none."


def summary_body(results: dict[str, dict], out_dir: str, kept: str = "",
                 suites: tuple[str, ...] = ()) -> str:
    """The summary table: one row per target of each suite's results, in suite order.
    `kept` (a former summary) gives the rows of the `suites` with no results here, and its
    dates count too: results are not committed, so one machine rarely has them all."""
    rows = [(name, t["name"], cell(t["value"]), t["goal"], verdict(t["met"]))
            for name, result in results.items() for t in result.get("targets", [])]
    rows = sorted(rows + [row for row in _summary_rows(kept)
                          if row[0] in suites and row[0] not in results],
                  key=lambda row: row[0])
    dates = sorted({result["date"] for result in results.values() if "date" in result}
                   | set(_summary_dates(kept)))
    when = f" (taken {dates[0]} to {dates[-1]})" if len(dates) > 1 else (
        f" (taken {dates[0]})" if dates else "")
    return (table(SUMMARY_COLUMNS, rows, align="llrll") + "\n\n"
            f"From the results in `{out_dir}/`{when}; each section below gives its "
            "command, machine and date. Rewritten by `python bench/run.py`.\n")


def _summary_rows(summary: str) -> list[tuple[str, ...]]:
    cells = [tuple(cell.strip() for cell in line.strip().strip("|").split("|"))
             for line in summary.splitlines() if line.startswith("| ")]
    return [row for row in cells if len(row) == len(SUMMARY_COLUMNS)
            and row != SUMMARY_COLUMNS]


def _summary_dates(summary: str) -> list[str]:
    found = re.search(r"\(taken (.+?)(?: to (.+?))?\);", summary)
    return [date for date in found.groups() if date] if found else []


def _section_span(lines: list[str], title: str) -> tuple[int, int] | None:
    """[start, end) of the lines of section `## title` (heading included), or None."""
    start = next((i for i, line in enumerate(lines) if line.rstrip() == f"## {title}"), None)
    if start is None:
        return None
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))
    return start, end


def section_body(document: str, title: str) -> str:
    """The body of the section `## title` of `document` ("" if absent)."""
    lines = document.splitlines(keepends=True)
    span = _section_span(lines, title)
    return "".join(lines[span[0] + 1:span[1]]) if span else ""


def section(title: str, body: str) -> str:
    return f"## {title}\n\n{body.strip(chr(10))}\n"


def replace_section(document: str, title: str, body: str, at_top: bool = False) -> str:
    """`document` with the section `## title` replaced in place; if absent, appended
    (or, with `at_top`, put before the first section)."""
    lines = document.splitlines(keepends=True)
    span = _section_span(lines, title)
    if span is None:
        first = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
        span = (first, first) if at_top else (len(lines), len(lines))
    start, end = span
    before = "".join(lines[:start]).rstrip("\n")
    after = "".join(lines[end:]).lstrip("\n")
    return "\n\n".join(part for part in (before, section(title, body).rstrip("\n"), after)
                       if part).rstrip("\n") + "\n"
