"""Each command's own flags and help, one-line errors for bad flags and gin, a quiet start."""

import logging
import sys

import pytest

from t5x_lite import quiet
from t5x_lite.cli import parser as cli
from tests.cli import assert_one_line_error, run_cli, train_command

# A flag of each command's own, that its --help must name.
OWN_FLAG = {"train": "--coordinator_address", "build-data": "--coordinator_address",
            "build-vocab": "--vocab_size",
            "supervise": "--max_restarts", "export-hf": "--max_shard_size",
            "import-hf": "--hf_dir", "eval": "--tasks", "infer": "--prompts_file",
            "plan": "--mfu", "scaling": "--budgets"}
NOISE = ("oneDNN custom operations are on", "Could not find cuda drivers",
         "Type handler registry", "Metadata file does not exist")


def _t5x_lite(*args: str):
    return run_cli([sys.executable, "-m", "t5x_lite", *args], timeout=300)


def test_every_command_has_a_flag_to_show():
    assert sorted(OWN_FLAG) == sorted(cli.COMMANDS)


@pytest.mark.parametrize("command", sorted(OWN_FLAG))
def test_command_help_shows_its_own_flags(command):
    result = _t5x_lite(command, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"usage: t5x_lite {command}" in result.stdout
    assert OWN_FLAG[command] in result.stdout
    others = set(OWN_FLAG.values()) - {OWN_FLAG[command]}  # build-data shares train's
    assert not [flag for flag in others if f"{flag} " in result.stdout]


@pytest.mark.parametrize("command", sorted(OWN_FLAG))
def test_unknown_flag_is_one_line(command):
    assert_one_line_error(_t5x_lite(command, "--no_such_flag=1"), command, "--no_such_flag")


def test_a_flag_of_another_command_is_refused():
    assert_one_line_error(_t5x_lite("build-vocab", "--gin_file=quickstart.gin"), "build-vocab",
                          "--gin_file")
    assert_one_line_error(_t5x_lite("train", "--num_processes=two"), "train",
                          "--num_processes", "invalid int value")


def test_help_lists_the_commands():
    result = _t5x_lite("--help")
    assert result.returncode == 0, result.stderr[-2000:]
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")]
    assert set(cli.COMMANDS) <= set(listed)


def test_no_command_shows_the_usage():
    result = _t5x_lite()
    assert result.returncode == 2
    assert "usage: t5x_lite" in result.stderr and "build-vocab" in result.stderr


# --- parsing, in process -----------------------------------------------------------------

def test_out_is_the_one_name_and_output_an_alias():
    for command in ("build-vocab", "infer", "plan"):
        assert cli.parse([command, "--out=a.jsonl"]).out == "a.jsonl"
        assert cli.parse([command, "--output=a.jsonl"]).out == "a.jsonl"
    assert cli.parse(["export-hf", "--out", "dir"]).out == "dir"


def test_absl_spellings_of_booleans_lists_and_repeats():
    assert cli.parse(["import-hf", "--scan_layers=false"]).scan_layers is False
    assert cli.parse(["import-hf", "--noscan_layers"]).scan_layers is False
    assert cli.parse(["import-hf"]).scan_layers is True
    assert cli.parse(["export-hf", "--overwrite"]).overwrite is True
    assert cli.parse(["eval", "--mesh_shape=2,2,1"]).mesh_shape == [2, 2, 1]
    assert cli.parse(["infer"]).mesh_shape == [-1, 1, 1]
    args = cli.parse(["infer", "--prompt=a", "--prompt=b", "--gin.X=1", "--gin_file=f.gin"])
    assert (args.prompt, args.gin_bindings, args.gin_file) == (["a", "b"], ["X = 1"], ["f.gin"])


def test_supervise_takes_the_command_after_the_separator():
    args = cli.parse(["supervise", "--max_restarts=2", "--", "t5x_lite", "train", "--help"])
    assert (args.max_restarts, args.child) == (2, ["t5x_lite", "train", "--help"])


def test_orbax_notices_are_filtered_and_other_warnings_kept():
    quiet.filter_orbax_notices()
    logger = logging.getLogger("absl")

    def passes(message, path="/site-packages/orbax/checkpoint/x.py", level=logging.WARNING):
        return logger.filter(logging.LogRecord("absl", level, path, 1, message, (), None))

    assert not passes('Type handler registry type "%s" overriding %s')
    assert not passes("Metadata file does not exist: %s")
    assert passes("Metadata file does not exist: %s", level=logging.ERROR)
    assert passes("Something else went wrong")
    assert passes("Type handler registry", path="/work/mine.py")


# --- gin errors and a quiet start ----------------------------------------------------------

@pytest.mark.parametrize("binding,fragment", [
    ("--gin.BATCH_SIZE=(", "BATCH_SIZE = ("),
    ("--gin.TASK_FEATURE_LENGTHS={'targets' 32}", "TASK_FEATURE_LENGTHS"),
    ("--gin.NoSuchConfigurable.x=1", "NoSuchConfigurable"),
])
def test_bad_gin_binding_is_one_line(tmp_path, binding, fragment):
    result = run_cli(train_command(tmp_path / "run", 2, binding))
    assert_one_line_error(result, "train", "bad gin binding", fragment)
    assert not (tmp_path / "run").exists()


def test_bad_gin_file_is_one_line(tmp_path):
    (tmp_path / "bad.gin").write_text("BATCH_SIZE = 8\nTRAIN_STEPS = = 3\n")
    result = run_cli(train_command(tmp_path / "run", 2, f"--gin_file={tmp_path / 'bad.gin'}"))
    assert_one_line_error(result, "train", "bad gin file", "bad.gin")
    assert not (tmp_path / "run").exists()


def test_train_and_restart_start_quietly(tmp_path):
    for attempt in ("train", "restore"):
        result = run_cli(train_command(tmp_path, 2))
        assert result.returncode == 0, result.stderr[-3000:]
        assert not [noise for noise in NOISE if noise in result.stderr], (attempt,
                                                                         result.stderr)
    assert "restored step 2" in result.stderr
