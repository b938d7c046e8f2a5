"""The run-directory layer: atomic writes, JSON-lines appends, set-aside, the MODEL_DIR check."""

import os

import jax
import pytest

from t5x_lite import storage
from t5x_lite.errors import ConfigError


def test_path_is_absolute_for_local_paths_and_kept_for_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(storage.path("run")) == str(tmp_path / "run")
    assert str(storage.join("run", "checkpoints", "3")) == str(tmp_path / "run/checkpoints/3")
    assert storage.is_uri("gs://bucket/run") and not storage.is_uri("/tmp/run")


def test_write_atomic_replaces_the_whole_file(tmp_path):
    target = tmp_path / "deep" / "config.gin"
    storage.write_atomic(target, "old\n")
    storage.write_atomic(target, b"new\n")
    assert target.read_bytes() == b"new\n"
    assert os.listdir(target.parent) == ["config.gin"]


def test_write_atomic_leaves_no_partial_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "out.jsonl"
    target.write_text("previous\n")
    path_type = type(storage.path(target))
    write_text = path_type.write_text

    def fail_midway(self, text, *args, **kwargs):
        write_text(self, text[: len(text) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(path_type, "write_text", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        storage.write_atomic(target, "a line that never lands\n")
    assert target.read_text() == "previous\n"
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_appender_appends_across_reopenings(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    storage.JsonlAppender(path).append({"step": 1})
    appender = storage.JsonlAppender(path)
    appender.append({"step": 2}, {"step": 3, "loss": None})
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n{"step": 3, "loss": null}\n'
    assert [r["step"] for r in storage.read_jsonl(path)] == [1, 2, 3]


def test_appender_writes_nothing_on_other_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    path = tmp_path / "recovery.jsonl"
    storage.JsonlAppender(path).append({"step": 1})
    assert not path.exists()


def test_read_jsonl_skips_a_line_cut_short_by_a_crash(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "lo')
    storage.JsonlAppender(path).append({"step": 3})  # the restarted run goes on
    assert [r["step"] for r in storage.read_jsonl(path)] == [1, 3]


def test_read_jsonl_of_an_absent_file_is_empty(tmp_path):
    assert storage.read_jsonl(tmp_path / "nothing.jsonl") == []


def test_set_aside_moves_a_directory(tmp_path):
    step = tmp_path / "checkpoints" / "7"
    (step / "state").mkdir(parents=True)
    (step / "state" / "data").write_text("x")
    moved = storage.set_aside(step, "7.corrupt")
    assert not step.exists()
    assert str(moved) == str(tmp_path / "checkpoints" / "7.corrupt")
    assert (tmp_path / "checkpoints" / "7.corrupt" / "state" / "data").read_text() == "x"


def test_check_model_dir_accepts_new_and_existing_directories(tmp_path):
    assert str(storage.check_model_dir(tmp_path)) == str(tmp_path)
    assert str(storage.check_model_dir(tmp_path / "a" / "b")) == str(tmp_path / "a" / "b")


def test_check_model_dir_refuses_a_file_in_its_place_or_above_it(tmp_path):
    file = tmp_path / "taken"
    file.write_text("")
    with pytest.raises(ConfigError, match=f"MODEL_DIR={file} is a file, not a directory"):
        storage.check_model_dir(file)
    with pytest.raises(ConfigError, match=f"is under {file}, which is a file"):
        storage.check_model_dir(file / "run")
