"""bench/run.py: suites as children, BENCHMARKS.md sections replaced in place, the summary."""

import json
import pathlib
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import markdown  # bench/ is not a package: its modules import one another by name
import run

DOCUMENT = """\
# Benchmarks

## Summary

| suite | target | value | goal | met |
|---|---|---:|---|---|
| gone | old row | 1 | >= 2 | not met |

## First

old first body

## Written by hand

keep me
"""

FAKE_SUITE = '''\
"""A suite that follows the contract and writes what it was given."""

import argparse
import json
import os

TITLE = "{title}"
DEVICES = 3


def section(result):
    return f"value {{result['value']}}, flags {{result['xla_flags']}}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--value", type=float, default=1.0)
    args = parser.parse_args()
    {body}
    result = {{"title": TITLE, "command": "fake", "date": "2026-01-01 00:00 UTC",
              "machine": {{}}, "value": args.value,
              "xla_flags": os.environ.get("XLA_FLAGS", ""),
              "targets": [{{"name": "speed", "value": args.value, "goal": ">= 2",
                           "met": args.value >= 2}}]}}
    with open(args.out, "w") as f:
        json.dump(result, f)
'''


def run_entry_point(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / "run.py"), *args], check=False,
                          capture_output=True, text=True, timeout=60)


def write_suite(folder: pathlib.Path, name: str, title: str, body: str = "pass") -> None:
    (folder / f"suite_{name}.py").write_text(FAKE_SUITE.format(title=title, body=body))


def test_sections_are_replaced_in_place_and_others_kept():
    document = markdown.replace_section(DOCUMENT, "First", "new first body")
    document = markdown.replace_section(document, "Added", "added body")
    assert "old first body" not in document and "new first body" in document
    assert "## Written by hand\n\nkeep me\n" in document
    headings = [line for line in document.splitlines() if line.startswith("## ")]
    assert headings == ["## Summary", "## First", "## Written by hand", "## Added"]


def test_summary_goes_first_and_lists_every_target():
    document = markdown.replace_section("# Benchmarks\n\n## Only\n\nbody\n", "Summary",
                                        markdown.summary_body({
                                            "fast": {"date": "d", "targets": [
                                                {"name": "tokens/s", "value": 1234.5,
                                                 "goal": ">= 1000", "met": True},
                                                {"name": "loss", "value": None,
                                                 "goal": "<= 2", "met": None}]}},
                                            "bench/results"), at_top=True)
    lines = document.splitlines()
    assert lines.index("## Summary") < lines.index("## Only")
    assert "| fast | tokens/s | 1,234 | >= 1000 | met |" in lines
    assert "| fast | loss | — | <= 2 | not measured |" in lines


def test_the_summary_keeps_the_rows_of_suites_without_results_here(tmp_path):
    old = markdown.summary_body({name: {"date": date, "targets": [
        {"name": f"{name} goal", "value": 1.0, "goal": "<= 2", "met": True}]}
        for name, date in (("alpha", "2026-01-01 00:00 UTC"), ("gamma", "2026-01-03 00:00 UTC"))},
        "bench/results")
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(markdown.replace_section(markdown.INTRO, "Summary", old, at_top=True))
    run.rewrite_benchmarks(path, [], {"beta": {"date": "2026-01-02 00:00 UTC", "targets": [
        {"name": "beta goal", "value": 3.0, "goal": "<= 2", "met": False}]}}, tmp_path,
        ("alpha", "beta", "gamma"))
    lines = path.read_text().splitlines()
    rows = [line for line in lines if line.startswith("| ") and "goal |" in line
            and not line.startswith("| suite |")]
    assert rows == ["| alpha | alpha goal | 1 | <= 2 | met |",
                    "| beta | beta goal | 3 | <= 2 | not met |",
                    "| gamma | gamma goal | 1 | <= 2 | met |"]
    assert any("taken 2026-01-01 00:00 UTC to 2026-01-03 00:00 UTC" in line for line in lines)


def test_suite_flags_go_to_their_suite():
    args, flags = run.parse_args(["--suites", "a,b", "--a.steps", "20", "--a.skip_torch",
                                  "--b.text=/x.txt", "--out_dir", "/tmp/o"])
    assert args.suites == "a,b" and str(args.out_dir) == "/tmp/o"
    assert flags == {"a": ["--steps", "20", "--skip_torch"], "b": ["--text=/x.txt"]}
    with pytest.raises(run.BenchError, match="not selected"):
        run.select(["a", "b"], "a", flags)
    with pytest.raises(run.BenchError, match="no suite named 'c'"):
        run.select(["a", "b"], "c", {})


def test_entry_point_runs_suites_and_a_failing_one_gives_exit_1(tmp_path):
    suites, out_dir, document = tmp_path / "suites", tmp_path / "results", tmp_path / "B.md"
    suites.mkdir()
    document.write_text(DOCUMENT)
    write_suite(suites, "good", "First")
    write_suite(suites, "broken", "Broken", body="raise SystemExit('broken on purpose')")
    result = run_entry_point("--suite_dir", str(suites), "--out_dir", str(out_dir),
                             "--markdown", str(document), "--good.value", "2.5")

    assert result.returncode == 1, result.stderr
    error_lines = result.stderr.strip().splitlines()
    assert len(error_lines) == 1, result.stderr
    assert "suite broken failed" in error_lines[0] and "broken on purpose" in error_lines[0]
    assert str(out_dir / "broken.log") in error_lines[0]

    text = document.read_text()
    assert "value 2.5, flags --xla_force_host_platform_device_count=3" in text
    assert "old first body" not in text and "## Written by hand\n\nkeep me" in text
    assert "| good | speed | 2.5 | >= 2 | met |" in text and "gone" not in text
    assert "Broken" not in text
    assert json.loads((out_dir / "good.json").read_text())["value"] == 2.5


def test_list_names_each_suite(tmp_path):
    write_suite(tmp_path, "good", "A fake suite")
    result = run_entry_point("--suite_dir", str(tmp_path), "--list")
    assert result.returncode == 0, result.stderr
    assert "good" in result.stdout and "A fake suite" in result.stdout
