"""Command line: `t5x_lite <command> [--gin_file=...] [--gin.KEY=VALUE ...]`.

Commands: train, build-vocab, supervise, export-hf, import-hf, eval, infer, plan.
"""

import os
import sys

from absl import app, flags, logging

from t5x_lite import gin_config
from t5x_lite.errors import EXIT_CONFIG_ERROR, EXIT_DIVERGED, EXIT_PREEMPTED, ConfigError
from t5x_lite.preemption import Preempted
from t5x_lite.recovery import Diverged

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin files, by path or relative to the installed gin/.")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings; `--gin.KEY=VALUE` is a shorthand.")
flags.DEFINE_multi_string("gin_search_paths", [], "Extra folders to look for gin files in.")
flags.DEFINE_integer("vocab_size", 8192, "build-vocab: SentencePiece vocabulary size.")
flags.DEFINE_string("output", None, "build-vocab: where to write the model (default: cache); "
                    "infer: the JSONL file to write; plan: also write the report as JSON here.")
flags.DEFINE_enum("distributed", None, ["auto", "explicit", "cluster", "off"],
                  "train: how to join a multi-process run (default: $T5X_LITE_DISTRIBUTED, "
                  "else auto); see t5x_lite/distributed.py.")
flags.DEFINE_string("coordinator_address", None, "train: host:port of process 0 for a "
                    "multi-process run (default: $T5X_LITE_COORDINATOR_ADDRESS).")
flags.DEFINE_integer("num_processes", None, "train: number of processes in the run "
                     "(default: $T5X_LITE_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None, "train: this process's index, 0 ... num_processes-1 "
                     "(default: $T5X_LITE_PROCESS_ID).")
flags.DEFINE_integer("heartbeat_timeout_seconds", 60, "train: a peer silent this long ends "
                     "the multi-process run.")
flags.DEFINE_integer("shutdown_timeout_seconds", 120, "train: at exit, wait at most this "
                     "long for the other processes.")
flags.DEFINE_integer("max_restarts", 10, "supervise: restarts allowed after preemption, "
                     "a hang or a crash.")
flags.DEFINE_float("grace_seconds", 60.0, "supervise: wait this long after forwarding "
                   "SIGTERM before SIGKILL.")
flags.DEFINE_string("model_dir", None, "export-hf, eval, infer: the MODEL_DIR of a training run.")
flags.DEFINE_integer("step", None, "export-hf, eval, infer: the checkpoint step (default: the "
                     "latest).")
flags.DEFINE_string("tasks", None, "eval: a seqio Task or Mixture name.")
flags.DEFINE_integer("num_examples", None, "eval: at most this many examples per Task.")
flags.DEFINE_multi_string("prompt", [], "infer: a prompt (repeatable).")
flags.DEFINE_string("prompts_file", None, "infer: prompts, one per line (.txt) or JSON objects "
                    "with an 'inputs' field (.jsonl).")
flags.DEFINE_integer("max_decode_len", 128, "infer: at most this many tokens per output.")
flags.DEFINE_integer("batch_size", 32, "infer: prompts decoded together.")
flags.DEFINE_integer("seed", 0, "infer: seed of the sampling (SamplingConfig in gin).")
flags.DEFINE_list("mesh_shape", ["-1", "1", "1"], "eval, infer: the (data, fsdp, tensor) mesh.")
flags.DEFINE_string("out", None, "export-hf, import-hf: the directory to write.")
flags.DEFINE_string("dtype", "float32", "export-hf: weight dtype, float32 or bfloat16.")
flags.DEFINE_string("max_shard_size", "5GB", "export-hf: larger weights are split into "
                    "files of at most this size, with an index.")
flags.DEFINE_bool("overwrite", False, "export-hf, import-hf: replace a non-empty --out.")
flags.DEFINE_string("hf_dir", None, "import-hf: a local transformers Llama checkpoint.")
flags.DEFINE_bool("scan_layers", True, "import-hf: write the scanned (stacked) layout.")
flags.DEFINE_string("mesh", None, "plan: a mesh config in gin/meshes (v5p-128, h100x8, ...) or "
                    "a shape DATA,FSDP,TENSOR (default: the gin config's MESH_SHAPE).")
flags.DEFINE_string("chip", None, "plan: v6e, v5e, v5p, v4, h200, h100 or a100 (default: "
                    "from the mesh name).")
flags.DEFINE_float("mfu", 0.4, "plan: the model FLOPs utilization assumed for the step time.")

USAGE = ("usage: t5x_lite {train,build-vocab,export-hf,import-hf,eval,infer,plan} [flags] | "
         "t5x_lite supervise [flags] -- COMMAND"
         "   (t5x_lite <command> --help for flags)")


def register_configurables() -> None:
    """Imports every module that defines gin configurables, so bindings resolve."""
    # `data` registers the built-in seqio Tasks and Mixtures as it loads.
    from t5x_lite import (  # noqa: F401
        checkpointing,
        data,
        decoding,
        evaluation,
        input_pipeline,
        optim,
        partitioning,
        trainer,
    )
    from t5x_lite.models import config  # noqa: F401


def _initialize_distributed() -> None:
    """Joins a multi-process run when the flags or the environment describe one."""
    from t5x_lite import distributed
    distributed.initialize(distributed.Settings(
        mode=FLAGS.distributed, coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
        heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_seconds,
        shutdown_timeout_seconds=FLAGS.shutdown_timeout_seconds), os.environ)


def _train() -> None:
    _initialize_distributed()
    register_configurables()
    gin_config.parse(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths)
    gin_config.check_required_macros()
    from t5x_lite import trainer
    trainer.train()


def _build_vocab() -> None:
    from t5x_lite import vocabularies
    vocabularies.build_vocab_command(FLAGS.vocab_size, FLAGS.output)


def _supervise(command: list[str]) -> None:
    from t5x_lite.supervisor import Supervisor
    if not command:
        raise ConfigError("supervise needs a command: t5x_lite supervise -- t5x_lite train ...")
    sys.exit(Supervisor(command, FLAGS.max_restarts, FLAGS.grace_seconds).run())


def _export_hf() -> None:
    from t5x_lite.hf import export
    export.export_command(FLAGS.model_dir, FLAGS.out, FLAGS.step, FLAGS.dtype,
                          FLAGS.max_shard_size, FLAGS.overwrite)


def _import_hf() -> None:
    from t5x_lite.hf import import_
    import_.import_command(FLAGS.hf_dir, FLAGS.out, FLAGS.scan_layers, FLAGS.overwrite)


def _parse_gin() -> None:
    register_configurables()
    gin_config.parse(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths)


def _eval() -> None:
    _parse_gin()
    from t5x_lite import inference
    inference.eval_command(FLAGS.model_dir, FLAGS.step, FLAGS.tasks, FLAGS.num_examples,
                           [int(n) for n in FLAGS.mesh_shape])


def _infer() -> None:
    _parse_gin()
    from t5x_lite import inference
    inference.infer_command(FLAGS.model_dir, FLAGS.step, FLAGS.prompt, FLAGS.prompts_file,
                            FLAGS.output, FLAGS.max_decode_len, FLAGS.batch_size, FLAGS.seed,
                            [int(n) for n in FLAGS.mesh_shape])


def _plan() -> None:
    _parse_gin()
    from t5x_lite import plan
    plan.plan_command(FLAGS.gin_file, FLAGS.mesh, FLAGS.chip, FLAGS.mfu, FLAGS.output)


COMMANDS = {"train": _train, "build-vocab": _build_vocab, "supervise": _supervise,
            "export-hf": _export_hf, "import-hf": _import_hf, "eval": _eval, "infer": _infer,
            "plan": _plan}


def _main(argv: list[str]) -> None:
    command = argv[1] if len(argv) > 1 else None
    takes_command = command == "supervise"
    if command not in COMMANDS or (len(argv) > 2 and not takes_command):
        print(USAGE, file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    logging.set_verbosity(logging.WARNING)
    try:
        COMMANDS[command](*([argv[2:]] if takes_command else []))
    except Diverged as diverged:
        print(f"t5x_lite {command}: {str(diverged).splitlines()[0]}; exiting with code "
              f"{EXIT_DIVERGED}", file=sys.stderr)
        sys.exit(EXIT_DIVERGED)
    except Preempted as preempted:
        print(f"t5x_lite {command}: {preempted}; exiting with code {EXIT_PREEMPTED}",
              file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except ConfigError as error:
        # Gin appends "In call to configurable ..." lines; the first line is the message.
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"t5x_lite {command}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)


def run() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(_main, argv=gin_config.rewrite_gin_args(sys.argv))


if __name__ == "__main__":
    run()
