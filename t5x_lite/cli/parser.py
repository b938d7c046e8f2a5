"""The command line's parsers: `t5x_lite <command> [flags]`, one parser per command.

Bad flags end in one line, `t5x_lite <command>: error: ...`, and exit code 2. The gin
commands also take T5X's `--gin.KEY=VALUE`, rewritten to `--gin_bindings=KEY = VALUE`.
"""

import argparse
import sys

from t5x_lite.config import gin_config
from t5x_lite.errors import EXIT_CONFIG_ERROR

PROG = "t5x_lite"
GIN_COMMANDS = ("train", "build-data", "eval", "infer", "plan", "scaling")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default when it has one worth showing."""

    def _get_help_string(self, action):
        default = action.default
        if default is None or default is False or default == [] or default == argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class CommandParser(argparse.ArgumentParser):
    """A command's parser: an error is one line on stderr and exit code 2."""

    def error(self, message):
        self.exit(EXIT_CONFIG_ERROR, f"{self.prog}: error: {message} "
                                     f"(see {self.prog} --help)\n")


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value in ("true", "1", "yes")


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got "
                                         f"{text!r}") from None


def _add_bool(parser, name: str, default: bool, help: str) -> None:
    """`--NAME`, `--NAME=true|false` and `--noNAME`, as absl spelled booleans."""
    parser.add_argument(f"--{name}", type=_bool, nargs="?", const=True, default=default,
                        metavar="true|false", help=help)
    parser.add_argument(f"--no{name}", dest=name, action="store_false",
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)


# --- flags shared by several commands ---------------------------------------------------

def _gin_flags(parser) -> None:
    group = parser.add_argument_group(
        "gin", "The run's configuration; --gin.KEY=VALUE binds one value (repeatable).")
    group.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                       help="a gin file, by path or relative to the installed gin/ "
                            "(repeatable, parsed in order)")
    group.add_argument("--gin_bindings", action="append", default=[], metavar="BINDING",
                       help="a gin binding 'KEY = VALUE' (repeatable)")
    group.add_argument("--gin_search_paths", action="append", default=[], metavar="DIR",
                       help="another folder to look for gin files in (repeatable)")


def _checkpoint_flags(parser) -> None:
    parser.add_argument("--model_dir", metavar="DIR", help="the MODEL_DIR of a training run")
    parser.add_argument("--step", type=int, metavar="STEP",
                        help="the checkpoint step (default: the latest)")


def _mesh_shape_flag(parser) -> None:
    parser.add_argument("--mesh_shape", type=_int_list, default="-1,1,1",
                        metavar="DATA,FSDP,TENSOR",
                        help="the device mesh to restore and decode on; -1 takes the "
                             "remaining devices")


def _out_flag(parser, help: str, output_alias: bool = False) -> None:
    names = ("--out", "--output") if output_alias else ("--out",)
    parser.add_argument(*names, dest="out", metavar="PATH", help=help)


def _overwrite_flag(parser) -> None:
    _add_bool(parser, "overwrite", False, "replace a non-empty --out")


# --- each command's flags ---------------------------------------------------------------

def _train(parser) -> None:
    _gin_flags(parser)
    group = parser.add_argument_group(
        "multi-process", "How this process joins a multi-process run; each defaults to its "
        "$T5X_LITE_* variable (see t5x_lite/parallel/distributed.py).")
    group.add_argument("--distributed", choices=["auto", "explicit", "cluster", "off"],
                       help="how to join (default: $T5X_LITE_DISTRIBUTED, else auto)")
    group.add_argument("--coordinator_address", metavar="HOST:PORT",
                       help="process 0's address (default: $T5X_LITE_COORDINATOR_ADDRESS)")
    group.add_argument("--num_processes", type=int, metavar="N",
                       help="processes in the run (default: $T5X_LITE_NUM_PROCESSES)")
    group.add_argument("--process_id", type=int, metavar="ID", help="this process's index, 0 ... "
                       "num_processes-1 (default: $T5X_LITE_PROCESS_ID)")
    group.add_argument("--heartbeat_timeout_seconds", type=int, default=60, metavar="SECONDS",
                       help="a peer silent this long ends the run")
    group.add_argument("--shutdown_timeout_seconds", type=int, default=120, metavar="SECONDS",
                       help="at exit, wait at most this long for the other processes")


def _build_vocab(parser) -> None:
    parser.add_argument("--vocab_size", type=int, default=8192, metavar="N",
                        help="SentencePiece vocabulary size")
    _out_flag(parser, "also copy the model here (default: only the cache)", output_alias=True)


def _supervise(parser) -> None:
    parser.add_argument("--max_restarts", type=int, default=10, metavar="N",
                        help="restarts allowed after preemption, a hang or a crash")
    parser.add_argument("--grace_seconds", type=float, default=60.0, metavar="SECONDS",
                        help="after forwarding SIGTERM, wait this long before SIGKILL")
    parser.add_argument("--model_dir", metavar="DIR",
                        help="the run's MODEL_DIR, to follow its progress (default: the "
                             "command's --gin.MODEL_DIR)")
    parser.add_argument("--max_stalled", type=int, default=3, metavar="N",
                        help="stop after N attempts in a row that log no new step (0: never)")
    parser.epilog = ("COMMAND, after --, is the command to run, e.g. "
                     "-- t5x_lite train --gin_file=quickstart.gin --gin.MODEL_DIR=\"'/tmp/run'\"")


def _export_hf(parser) -> None:
    _checkpoint_flags(parser)
    _out_flag(parser, "the Hugging Face directory to write")
    parser.add_argument("--dtype", default="float32", metavar="DTYPE",
                        help="weight dtype: float32 or bfloat16")
    parser.add_argument("--max_shard_size", default="5GB", metavar="SIZE",
                        help="larger weights are split into files of at most this size")
    _overwrite_flag(parser)


def _import_hf(parser) -> None:
    parser.add_argument("--hf_dir", metavar="DIR",
                        help="a transformers Llama, T5 v1.1, Mixtral or Qwen3-MoE checkpoint "
                             "directory (local or gs://)")
    _out_flag(parser, "the t5x_lite model directory to write")
    _add_bool(parser, "scan_layers", True, "write the scanned (stacked) layout")
    _overwrite_flag(parser)


def _eval(parser) -> None:
    _gin_flags(parser)
    _checkpoint_flags(parser)
    parser.add_argument("--tasks", metavar="NAME", help="a seqio Task or Mixture")
    parser.add_argument("--num_examples", type=int, metavar="N",
                        help="at most this many examples per Task")
    _mesh_shape_flag(parser)


def _infer(parser) -> None:
    _gin_flags(parser)
    _checkpoint_flags(parser)
    parser.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                        help="a prompt (repeatable)")
    parser.add_argument("--prompts_file", metavar="PATH", help="prompts, one per line "
                        "(.txt) or JSON objects with an 'inputs' field (.jsonl)")
    _out_flag(parser, "the JSONL file to write", output_alias=True)
    parser.add_argument("--max_decode_len", type=int, default=128, metavar="N",
                        help="at most this many tokens per output")
    parser.add_argument("--batch_size", type=int, default=32, metavar="N",
                        help="prompts decoded together")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of the sampling (SamplingConfig in gin)")
    _mesh_shape_flag(parser)


def _plan(parser) -> None:
    _gin_flags(parser)
    parser.add_argument("--mesh", metavar="NAME|DATA,FSDP,TENSOR",
                        help="a mesh config in gin/meshes (v5p-128, h100x8, ...) or a shape "
                             "(default: the gin config's MESH_SHAPE)")
    parser.add_argument("--chip", metavar="CHIP",
                        help="v6e, v5e, v5p, v4, h200, h100 or a100 (default: from the mesh "
                             "name)")
    parser.add_argument("--mfu", type=float, default=0.4, metavar="FRACTION",
                        help="the model FLOPs utilization assumed for the step time")
    _out_flag(parser, "also write the report as JSON here", output_alias=True)


def _float_list(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of "
                                         "numbers, e.g. 1e11,3e11,1e12") from error


def _scaling(parser) -> None:
    parser.add_argument("action", nargs="?", choices=["sweep", "fit"],
                        help="sweep: train the IsoFLOP runs of the gin config's model family; "
                             "fit: the scaling laws of a sweep's finished runs")
    _gin_flags(parser)
    parser.add_argument("--sweep_dir", metavar="DIR", help="fit: the sweep directory to read")
    parser.add_argument("--bootstrap", type=int, default=200, metavar="N",
                        help="fit: resampled fits behind the 90%% intervals")
    parser.add_argument("--budgets", type=_float_list, metavar="C,C,...",
                        help="compute budgets in training FLOPs, e.g. 1e11,3e11,1e12")
    parser.add_argument("--per_budget", type=int, default=5, metavar="N",
                        help="model sizes per budget (SizeRule in gin sizes them)")
    parser.add_argument("--span", type=float, default=16.0, metavar="RATIO",
                        help="largest over smallest parameter count of a budget's sizes")
    _out_flag(parser, "sweep: the sweep directory (one run directory per size and budget); "
                      "fit: the JSON report (default: SWEEP_DIR/fit.json)")


# name: (one-line summary, flags)
COMMANDS = {
    "train": ("train a model from gin configs, resuming from MODEL_DIR's latest checkpoint",
              _train),
    "build-data": ("tokenize a run's Tasks into token stores ahead of training (same flags "
                   "as train)", _train),
    "build-vocab": ("train the SentencePiece vocabulary on the embedded corpus and cache it",
                    _build_vocab),
    "supervise": ("run a command, restarting it after preemption, a hang or a crash",
                  _supervise),
    "export-hf": ("write a checkpoint as a Hugging Face directory (Llama, T5, Mixtral or "
                  "Qwen3-MoE)",
                  _export_hf),
    "import-hf": ("turn a Hugging Face Llama, T5, Mixtral or Qwen3-MoE checkpoint into a "
                  "t5x_lite model",
                  _import_hf),
    "eval": ("evaluate a checkpoint on a seqio Task or Mixture", _eval),
    "infer": ("decode prompts with a checkpoint and write JSON lines", _infer),
    "plan": ("predict a config's memory, FLOPs and step time on a mesh of chips", _plan),
    "scaling": ("run an IsoFLOP scaling sweep of a config's model family, and fit its "
                "scaling laws", _scaling),
}
USAGES = {name: f"{PROG} {name} [flags]" for name in COMMANDS}
USAGES["supervise"] = f"{PROG} supervise [flags] -- COMMAND ..."
USAGES["scaling"] = f"{PROG} scaling sweep|fit [flags]"
USAGE = f"{PROG} <command> [flags]   ({PROG} <command> --help for its flags)"


def _command_list() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {summary}" for name, (summary, _) in COMMANDS.items()]
    return "commands:\n" + "\n".join(lines)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, CommandParser]]:
    """The top-level parser and, by name, each command's."""
    top = argparse.ArgumentParser(
        prog=PROG, usage=USAGE, epilog=_command_list(), allow_abbrev=False,
        description="Sharded decoder-only pretraining in JAX, configured with gin.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = top.add_subparsers(dest="command", metavar="<command>", required=True,
                                    parser_class=CommandParser, help=argparse.SUPPRESS)
    parsers = {}
    for name, (summary, add_flags) in COMMANDS.items():
        parsers[name] = subparsers.add_parser(
            name, prog=f"{PROG} {name}", usage=USAGES[name], description=summary[0].upper()
            + summary[1:] + ".", formatter_class=_HelpFormatter, allow_abbrev=False)
        add_flags(parsers[name])
    return top, parsers


def _split(name: str, argv: list[str]) -> tuple[list[str], list[str]]:
    """The arguments for the parser, and the command that `supervise ... --` runs."""
    if name == "supervise" and "--" in argv:
        return argv[:argv.index("--")], argv[argv.index("--") + 1:]
    if name in GIN_COMMANDS:
        return gin_config.rewrite_gin_args(argv), []
    return argv, []


def parse(argv: list[str]) -> argparse.Namespace:
    """Parses the arguments after the program name; exits 0 on --help, 2 on bad input."""
    top, parsers = build_parser()
    if not argv:
        top.print_help(sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    name = argv[0]
    if name not in COMMANDS and name not in ("-h", "--help"):
        top.error(f"unknown command {name!r}; the commands are {', '.join(COMMANDS)}")
    argv, child = _split(name, argv)
    args, unknown = top.parse_known_args(argv)
    if unknown:
        hint = "; put the command to run after --" if name == "supervise" else ""
        parsers[name].error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    if name == "supervise":
        args.child = child
    return args
