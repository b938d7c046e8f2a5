"""A large corpus of files: building its token store, and resuming a run on it at any
data position, on token stores and on the seqio (skip) stream, side by side.

    python bench/suite_corpus.py [--corpus_mb 1024] [--files 16] \
        [--store_positions 0,1000,10000,100000,1000000] [--skip_positions 0,1000,10000] \
        [--out bench/results/corpus.json]

1. Writes `files` text files of generated words, `corpus_mb` MB in all (`corpus_task`,
   byte vocabulary: a token a byte).
2. Builds the store with `t5x_lite build-data`, in one process, then in two processes
   that share the parts out, each into an empty store directory: tokens/s.
3. Trains one step of the quickstart model on the corpus, then for each data position P
   resumes a copy of that run whose checkpoint says it is at P, for one more step: the
   wall time of the whole command, process start to exit (imports, restore, reaching P,
   compilation, the step, the last save), after one uncounted warm-up resume.
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

import harness
import markdown
from harness import BenchError

TITLE = "A large corpus: store build and resume from process start (CPU)"
DEVICES = 1
FLAT_GOAL = 1.2  # resume at the furthest position / at position 0, on token stores
_WORDS = 4096


def add_arguments(parser) -> None:
    parser.add_argument("--corpus_mb", type=int, default=1024)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--store_positions", default="0,1000,10000,100000,1000000")
    parser.add_argument("--skip_positions", default="0,1000,10000")


def write_corpus(directory: pathlib.Path, megabytes: int, files: int) -> int:
    """`files` files of lines of words drawn by a Zipf-like law; returns the bytes written."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 10, _WORDS)
    words = ["".join(chr(97 + c) for c in rng.integers(0, 26, n)) for n in lengths]
    weights = 1.0 / np.arange(1, _WORDS + 1)
    weights /= weights.sum()
    per_file, written = megabytes * 2**20 // files, 0
    for index in range(files):
        with open(directory / f"shard-{index:03d}.txt", "w") as out:
            size = 0
            while size < per_file:
                drawn = rng.choice(_WORDS, size=200_000, p=weights)
                lines = [" ".join(words[w] for w in drawn[i:i + 12])
                         for i in range(0, len(drawn), 12)]
                text = "\n".join(lines) + "\n"
                out.write(text)
                size += len(text)
        written += size
    return written


def _corpus_flags(corpus: pathlib.Path, stores: pathlib.Path) -> list[str]:
    return ["--gin_file=quickstart.gin", "--gin.MIXTURE_OR_TASK_NAME=@corpus_task()",
            f"--gin.corpus_task.train_files=['{corpus}/shard-*.txt']",
            f"--gin.DataConfig.store_dir='{stores}'"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build(corpus: pathlib.Path, stores: pathlib.Path, processes: int, logs: pathlib.Path) -> dict:
    """`build-data` in `processes` processes; seconds and tokens/s of the train store."""
    command = [harness.t5x_lite_cli(), "build-data", *_corpus_flags(corpus, stores)]
    if processes > 1:
        port = _free_port()
        command += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}"]
    env = {**os.environ, **harness.host_devices_env(1)}
    start = time.perf_counter()
    children = [subprocess.Popen(
        command + ([f"--process_id={index}"] if processes > 1 else []),
        stdout=open(logs / f"build-{processes}-{index}.log", "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT, env=env, cwd=harness.REPO) for index in range(processes)]
    if any(child.wait() for child in children):
        raise BenchError(f"build-data in {processes} processes failed [logs: {logs}]")
    seconds = time.perf_counter() - start
    manifest = json.loads(next(stores.glob("corpus/train/*/manifest.json")).read_text())
    tokens = manifest["features"]["targets"]["tokens"]
    return {"processes": processes, "seconds": seconds, "tokens": tokens,
            "tokens_per_second": tokens / seconds, "parts": len(manifest["parts"])}


def resume_seconds(corpus: pathlib.Path, stores: pathlib.Path, stream: str,
                   positions: list[int], work: pathlib.Path) -> dict[int, float]:
    """Process start to exit of a one-step resume at each data position."""
    flags = [*_corpus_flags(corpus, stores), f"--gin.DataConfig.stream='{stream}'",
             "--gin.train.eval_every=None"]
    env = {**os.environ, **harness.host_devices_env(DEVICES)}
    base = work / f"base-{stream}"
    harness.run_child("first step", [harness.t5x_lite_cli(), "train", *flags,
                                     f"--gin.MODEL_DIR='{base}'", "--gin.TRAIN_STEPS=1"],
                      env, work / f"train-{stream}-base.log")
    seconds = {}
    for position in [positions[0], *positions]:  # the first, a warm-up, is not counted
        run = work / f"{stream}-{position}"
        shutil.copytree(base, run)
        meta_file = run / "checkpoints/1/meta/metadata"
        meta = json.loads(meta_file.read_text())
        meta["data_position"] = position
        if "data_rows" in meta:
            meta["data_rows"] = position * meta["data"]["global_batch_size"]
        meta_file.write_text(json.dumps(meta))
        argv = [harness.t5x_lite_cli(), "train", *flags, f"--gin.MODEL_DIR='{run}'",
                "--gin.TRAIN_STEPS=2"]
        seconds[position] = harness.run_child(f"resume at {position}", argv, env,
                                              work / f"train-{stream}-{position}.log")["wall_s"]
        shutil.rmtree(run)
    return seconds


def _positions(text: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",")]
    except ValueError:
        raise BenchError(f"positions must be comma-separated integers, not {text!r}") from None


def measure(args) -> dict:
    logs = args.out.parent
    with tempfile.TemporaryDirectory() as scratch:
        work = pathlib.Path(scratch)
        corpus = work / "corpus"
        corpus.mkdir()
        start = time.perf_counter()
        corpus_bytes = write_corpus(corpus, args.corpus_mb, args.files)
        written_s = time.perf_counter() - start
        builds = [build(corpus, work / f"stores-{n}", n, logs) for n in (1, 2)]
        shutil.rmtree(work / "stores-2")
        stores = work / "stores-1"
        resumes = {"store": resume_seconds(corpus, stores, "store",
                                           _positions(args.store_positions), work),
                   "skip": resume_seconds(corpus, stores, "skip",
                                          _positions(args.skip_positions), work)}
    store = resumes["store"]
    flat = store[max(store)] / store[min(store)]
    return {"versions": harness.versions("tensorflow", "seqio"),
            "corpus": {"bytes": corpus_bytes, "files": args.files, "written_s": written_s},
            "builds": builds,
            "resume_s": {stream: {str(p): s for p, s in figures.items()}
                         for stream, figures in resumes.items()},
            "targets": [harness.target(
                f"1-step resume at data position {max(store):,} / at {min(store):,} "
                "(token stores, process start to exit)", round(flat, 2), f"<= {FLAT_GOAL:g}",
                flat <= FLAT_GOAL)]}


def section(result: dict) -> str:
    corpus = result["corpus"]
    versions = result["versions"]
    builds = [(build["processes"], f"{build['tokens']:,}", build["parts"],
               markdown.number(build["seconds"], 1), f"{build['tokens_per_second']:,.0f}")
              for build in result["builds"]]
    resumes = [(stream, f"{int(position):,}", markdown.number(seconds, 1))
               for stream, figures in result["resume_s"].items()
               for position, seconds in figures.items()]
    return "\n".join([
        markdown.provenance(result, f"jax {versions['jax']}, tensorflow "
                                    f"{versions['tensorflow']}, seqio {versions['seqio']}."),
        "", f"A corpus of {corpus['files']} generated text files, {corpus['bytes'] / 2**20:,.0f}"
            " MiB (`corpus_task`, byte vocabulary: a token a byte); quickstart model, batch "
            "16 x 128.", "",
        markdown.table(("build-data processes", "tokens", "parts", "seconds", "tokens/s"),
                       builds, align="rrrrr"), "",
        markdown.table(("stream", "data position", "1-step resume, s"), resumes, align="lrr"),
        "", markdown.targets_line(result["targets"]), "",
        "- 1-step resume: a copy of a one-step run whose checkpoint is set to data position P,"
        " trained one more step by `t5x_lite train`; wall time from process start to exit "
        "(imports, opening the store, restore, reaching P, compilation, the step, the save).",
        "- skip: the seqio pipeline replayed from the start to P, as every resume did before "
        "token stores.",
        "- Both streams run with the persistent compilation cache filled by the uncounted "
        "warm-up resume, as a rerun of a config does by default.",
        "- build-data processes: two processes on the 2 cores share the 16 parts (one a "
        "file); the store they write is the one a single process writes.",
    ]) + "\n"


if __name__ == "__main__":
    sys.exit(harness.suite_main(__file__, TITLE, add_arguments, measure))
