"""Runs, data and exports on Cloud Storage (`gs://`), against an emulator on 127.0.0.1.

The clients are the ones that talk to the real service (gcsfs, google-cloud-storage,
tensorstore), pointed at the emulator by their own settings. A run on `gs://` resumes
after SIGKILL, SIGTERM and a corrupted checkpoint with the losses of an uninterrupted
local run and leaves nothing on local disk; two processes write one run that one
process continues; records survive a kill; Hugging Face checkpoints go both ways; bad
locations end in one line before anything is written.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from t5x_lite import storage
from t5x_lite.errors import ConfigError
from t5x_lite.resilience import supervisor
from t5x_lite.storage import jsonl
from tests import gcs_emulator
from tests.cli import assert_one_line_error, cli_env, losses_by_step, train_command

pytestmark = pytest.mark.skipif(gcs_emulator.binary() is None,
                                reason="no Cloud Storage emulator binary for this platform")

STEPS = 12
# Saves every 4 steps; the data stream is the same for 1 and 2 processes.
FLAGS = ("--gin.CheckpointConfig.save_every=4", "--gin.DataConfig.num_data_shards=2")
LAUNCHER = os.path.join(os.path.dirname(os.path.dirname(__file__)), "launch", "local.py")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    server = gcs_emulator.Emulator(tmp_path_factory.mktemp("emulator") / "server.log")
    saved = dict(os.environ)
    os.environ.update(gcs_emulator.client_env(server.url))
    yield server
    os.environ.clear()
    os.environ.update(saved)
    server.stop()


@pytest.fixture
def bucket(emulator, request) -> str:
    """A new, empty bucket for each test."""
    name = request.node.name.lower().replace("_", "-").replace("[", "-").strip("]-")[:50]
    return emulator.create_bucket(f"{name}-{time.time_ns() % 10**6}")


def _env(emulator, num_devices: int = 2) -> dict:
    return {**cli_env(num_devices), **gcs_emulator.client_env(emulator.url)}


def _run(emulator, args, cwd, num_devices: int = 2, timeout: int = 600):
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd,
                          env=_env(emulator, num_devices), timeout=timeout)


def _assert_matches(resumed: dict, reference: dict) -> None:
    assert sorted(resumed) == sorted(reference) == list(range(1, max(reference) + 1))
    for step, losses in resumed.items():
        assert all(loss == reference[step][0] for loss in losses), (step, losses, reference[step])


def _objects(location) -> list[str]:
    root = storage.path(location)
    return [str(file.relative_to(root)) for file in storage.files_under(root)]


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory) -> dict:
    """Losses of an uninterrupted run on local disk."""
    model_dir = tmp_path_factory.mktemp("local_reference")
    result = subprocess.run(train_command(model_dir, STEPS, *FLAGS), capture_output=True,
                            text=True, env=cli_env(2), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return losses_by_step(model_dir)


def test_a_run_on_gcs_killed_and_restarted_matches_a_local_run(emulator, bucket, tmp_path,
                                                                local_reference):
    model_dir = f"{bucket}/run"
    process = subprocess.Popen(train_command(model_dir, STEPS, *FLAGS), cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=_env(emulator))
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        saved = storage.join(model_dir, "checkpoints", "4", "commit_success.txt").exists()
        if saved and max(losses_by_step(model_dir), default=0) >= 6:
            break
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()

    records = [r["step"] for r in storage.read_jsonl(f"{model_dir}/metrics.jsonl") if "loss" in r]
    assert records == list(range(1, len(records) + 1)) and len(records) >= 6  # none twice
    result = _run(emulator, train_command(model_dir, STEPS, *FLAGS), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "restored step" in result.stderr
    _assert_matches(losses_by_step(model_dir), local_reference)
    assert os.listdir(tmp_path) == []  # nothing landed on local disk
    written = _objects(model_dir)
    assert {"config.gin", f"checkpoints/{STEPS}/commit_success.txt"} <= set(written)
    assert any(name.startswith("tensorboard/events.out.tfevents") for name in written)
    assert any(name.startswith("goodput.jsonl.parts/") for name in written)
    assert supervisor.logged_step(model_dir) == STEPS  # what `supervise` follows


def _saved_steps(model_dir) -> list[int]:
    return sorted(int(p.name) for p in storage.join(model_dir, "checkpoints").iterdir()
                  if p.name.isdigit())


def test_sigterm_then_a_corrupted_checkpoint_on_gcs(emulator, bucket, tmp_path, local_reference):
    model_dir = f"{bucket}/run"
    preempt = ["--gin.FaultInjector.signal_at_step=5", "--gin.FaultInjector.signal_name='SIGTERM'",
               "--gin.ProfileConfig.first_step=3", "--gin.ProfileConfig.num_steps=1"]
    result = _run(emulator, train_command(model_dir, STEPS, *FLAGS, *preempt), tmp_path)
    assert result.returncode == 75, result.stderr[-3000:]
    stopped_at = max(losses_by_step(model_dir))
    assert _saved_steps(model_dir) == [4, stopped_at] and 5 <= stopped_at < 8  # off-interval
    assert any(name.endswith(".xplane.pb") for name in _objects(f"{model_dir}/profile"))

    corrupt_then_die = ["--gin.FaultInjector.corrupt_checkpoint_at_step=8",
                        "--gin.FaultInjector.signal_at_step=8"]
    result = _run(emulator, train_command(model_dir, STEPS, *FLAGS, *corrupt_then_die),
                  tmp_path)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert f"restored step {stopped_at}" in result.stderr

    result = _run(emulator, train_command(model_dir, STEPS, *FLAGS), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checkpoint step 8 is unreadable" in result.stderr
    assert f"restored step {stopped_at}" in result.stderr
    assert storage.join(model_dir, "checkpoints", "8.corrupt", "commit_success.txt").exists()
    _assert_matches(losses_by_step(model_dir), local_reference)
    assert os.listdir(tmp_path) == []


def test_two_processes_write_one_gcs_run_that_one_process_continues(emulator, bucket, tmp_path,
                                                                   local_reference):
    model_dir = f"{bucket}/run"
    layout = ["--gin.MESH_SHAPE=(1, 1, 1)", "--gin.DCN_MESH_SHAPE=(2, 1, 1)"]
    launch = [sys.executable, LAUNCHER, "--num_processes=2", "--devices_per_process=1",
              f"--log_dir={tmp_path / 'logs'}", "--"]
    result = _run(emulator, [*launch, *train_command(model_dir, 8, *FLAGS, *layout)], tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert _saved_steps(model_dir) == [4, 8]

    result = _run(emulator, train_command(model_dir, STEPS, *FLAGS), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "restored step 8" in result.stderr
    losses = losses_by_step(model_dir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([losses[step][-1] for step in range(1, STEPS + 1)],
                               [local_reference[step][0] for step in range(1, STEPS + 1)],
                               rtol=1e-5)


def test_a_text_file_on_gcs_feeds_the_batches_of_the_local_file(emulator, bucket, tmp_path):
    from t5x_lite.data import text_file_task
    from t5x_lite.pipeline import input_pipeline
    from tests.helpers import assert_same_batches, take
    from tests.test_data import _config
    text = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(400))
    (tmp_path / "corpus.txt").write_text(text)
    storage.write_atomic(f"{bucket}/data/corpus.txt", text)
    batches = {}
    for where, file in (("local", str(tmp_path / "corpus.txt")),
                        ("gcs", f"{bucket}/data/corpus.txt")):
        cfg = _config(text_file_task(files=[file], name=f"test_text_{where}"), pack=True)
        batches[where] = take(input_pipeline.train_batches(cfg, 0, 0, 1), 4)
    assert_same_batches(batches["gcs"], batches["local"])


def test_token_stores_on_gcs_give_the_batches_of_local_ones(emulator, bucket, tmp_path):
    import dataclasses
    from t5x_lite.data import text_file_task
    from t5x_lite.pipeline import input_pipeline
    from tests.helpers import assert_same_batches, take
    from tests.test_token_store import _config, _lines
    (tmp_path / "corpus.txt").write_text(_lines("line", 300))
    local = _config(text_file_task(files=[str(tmp_path / "corpus.txt")], name="gcs_store"),
                    tmp_path / "stores")
    remote = dataclasses.replace(local, store_dir=f"{bucket}/stores")
    for position in (0, 10**9):
        assert_same_batches(take(input_pipeline.train_batches(remote, position, 0, 1), 2),
                            take(input_pipeline.train_batches(local, position, 0, 1), 2))
    manifests = [name for name in _objects(f"{bucket}/stores") if name.endswith("manifest.json")]
    assert len(manifests) == 2 and sum(name.endswith("/part-00000/manifest.json")
                                       for name in manifests) == 1  # the store's and its part's
    assert not list((tmp_path / "stores").glob("*/train/*/.partial*"))


def test_a_missing_bucket_or_an_unsupported_scheme_ends_in_one_line(emulator, bucket, tmp_path):
    for model_dir, fragments in ((f"{bucket}-missing/run", ["does not exist"]),
                                 ("s3://bucket/run", ["s3:// is not supported"])):
        result = _run(emulator, train_command(model_dir, 2), tmp_path)
        assert_one_line_error(result, "train", model_dir, *fragments)
    assert not storage.path(f"{bucket}-missing").exists()  # gcsfs did not create it
    out = f"{bucket}-missing/export"
    result = _run(emulator, [sys.executable, "-m", "t5x_lite", "export-hf",
                             f"--model_dir={tmp_path}", f"--out={out}"], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert os.listdir(tmp_path) == []


# --- the storage layer in one process ------------------------------------------------------
def test_records_are_one_object_per_append_merged_without_loss_or_repeats(emulator, bucket,
                                                                          monkeypatch):
    monkeypatch.setattr(jsonl, "MERGE_EVERY", 4)
    location = f"{bucket}/run/metrics.jsonl"
    appender = storage.JsonlAppender(location)
    for step in range(1, 11):
        appender.append({"step": step})
    parts = storage.path(f"{location}.parts")
    names = sorted(p.name for p in parts.iterdir())
    assert len(names) == 3 and names[0].endswith(".merged.jsonl")  # 8 merged, then 2 parts
    assert [r["step"] for r in storage.read_jsonl(location)] == list(range(1, 11))

    # A merge cut short after writing its object, before removing what it merged:
    merged_parts = jsonl._current_parts(parts)  # noqa: SLF001
    storage.write_atomic(parts / f"{jsonl._key(merged_parts[-1])}{jsonl.MERGED_SUFFIX}",
                         "".join(p.read_text() for p in merged_parts))
    assert [r["step"] for r in storage.read_jsonl(location)] == list(range(1, 11))
    storage.JsonlAppender(location).append({"step": 11})  # a restarted writer
    assert [r["step"] for r in storage.read_jsonl(location)] == list(range(1, 12))


def test_set_aside_and_publish_keep_markers_last_in_and_first_out(emulator, bucket):
    step = storage.path(f"{bucket}/checkpoints/8")
    for name in ("state/array", "commit_success.txt", "meta/metadata"):
        storage.write_atomic(step / name, name)
    moved = storage.set_aside(step, "8.corrupt")
    assert not step.exists()
    assert _objects(moved) == ["commit_success.txt", "meta/metadata", "state/array"]

    copied = []
    original = storage.paths.copy_file
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(storage.paths, "copy_file",
                      lambda source, destination: copied.append(source.name)
                      or original(source, destination))
        storage.copy_tree(moved, f"{bucket}/published")
    assert copied[-1] == "commit_success.txt"
    with storage.local_copy(f"{bucket}/published") as local:
        downloaded = sorted(os.path.relpath(os.path.join(root, name), local)
                            for root, _, names in os.walk(local) for name in names)
    assert downloaded == _objects(moved) and not os.path.exists(local)


def test_unsupported_schemes_and_missing_buckets_are_config_errors(emulator, bucket):
    with pytest.raises(ConfigError, match=r"s3://b/run: s3:// is not supported \(orbax"):
        storage.path("s3://b/run")
    with pytest.raises(ConfigError, match="does not exist; create it"):
        storage.check_model_dir(f"{bucket}-absent/run")
    assert str(storage.check_model_dir(f"{bucket}/run")) == f"{bucket}/run"
    assert _objects(bucket) == []  # the write check removed its probe


def test_gin_files_and_their_includes_are_read_from_gcs(emulator, bucket):
    import gin
    from t5x_lite.config import gin_config
    storage.write_atomic(f"{bucket}/configs/sizes.gin", "TRAIN_STEPS = 7\n")
    storage.write_atomic(f"{bucket}/configs/run.gin",
                         f"include '{bucket}/configs/sizes.gin'\nMODEL_DIR = 'x'\n")
    gin.clear_config()
    try:
        gin_config.parse([f"{bucket}/configs/run.gin"], [])
        assert gin.query_parameter("%TRAIN_STEPS") == 7
        with pytest.raises(ConfigError, match="gin file not found"):
            gin_config.parse([f"{bucket}/configs/absent.gin"], [])
    finally:
        gin.clear_config()


def test_a_publish_that_fails_midway_leaves_nothing_in_the_bucket(emulator, bucket,
                                                                  monkeypatch):
    from t5x_lite.hf import output_dir
    original, copied = storage.paths.copy_file, []

    def fail_on_the_second(source, destination):
        if copied:
            raise OSError("connection reset")
        copied.append(source.name)
        original(source, destination)

    monkeypatch.setattr(storage.paths, "copy_file", fail_on_the_second)
    with pytest.raises(OSError, match="connection reset"):
        with output_dir.atomic_directory(f"{bucket}/export", overwrite=False) as partial:
            for name in ("config.json", "model.safetensors", "tokenizer.json"):
                (storage.path(partial) / name).write_text(name)
    assert copied == ["model.safetensors"] and not storage.path(f"{bucket}/export").exists()


def test_hf_import_and_export_through_gcs(emulator, bucket, tmp_path):
    from tests import test_hf
    original = test_hf.random_llama(tmp_path / "llama", tie=False, seed=3)
    storage.copy_tree(tmp_path / "llama", f"{bucket}/llama")
    from t5x_lite.hf import export, import_
    cfg = import_.import_checkpoint(f"{bucket}/llama", f"{bucket}/imported", scan_layers=True)
    params = test_hf.restore_host_params(f"{bucket}/imported", cfg)  # INITIAL_CHECKPOINT_PATH
    test_hf.assert_logits_match(cfg, params, original)

    export.export(f"{bucket}/imported", f"{bucket}/exported")
    assert "config.json" in _objects(f"{bucket}/exported")
    with storage.local_copy(f"{bucket}/exported") as local:
        again = test_hf.load_hf(local)
        tokens = test_hf.random_tokens(2, 24, 300, seed=1)
        assert np.abs(test_hf.hf_logits(again, tokens)
                      - test_hf.hf_logits(original, tokens)).max() <= 1e-5
