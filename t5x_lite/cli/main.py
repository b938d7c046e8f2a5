"""Command line: `t5x_lite <command> [flags]`; the flags of each are in t5x_lite/cli/parser.py.

Commands: train, build-data, build-vocab, supervise, export-hf, import-hf, eval, infer, plan,
scaling.
"""

import argparse
import os
import sys

from absl import app, flags, logging

from t5x_lite import quiet
from t5x_lite.cli import parser as cli
from t5x_lite.config import gin_config
from t5x_lite.config.configurables import register_configurables
from t5x_lite.errors import EXIT_CONFIG_ERROR, EXIT_DIVERGED, EXIT_PREEMPTED, ConfigError


def _initialize_distributed(args) -> None:
    """Joins a multi-process run when the flags or the environment describe one."""
    from t5x_lite.parallel import distributed
    distributed.initialize(distributed.Settings(
        mode=args.distributed, coordinator_address=args.coordinator_address,
        num_processes=args.num_processes, process_id=args.process_id,
        heartbeat_timeout_seconds=args.heartbeat_timeout_seconds,
        shutdown_timeout_seconds=args.shutdown_timeout_seconds), os.environ)


def _parse_gin(args) -> None:
    register_configurables()
    gin_config.parse(args.gin_file, args.gin_bindings, args.gin_search_paths)


def _train(args) -> None:
    _initialize_distributed(args)
    _parse_gin(args)
    gin_config.check_required_macros()
    from t5x_lite.train import trainer
    trainer.train()


def _build_vocab(args) -> None:
    from t5x_lite.pipeline import vocabularies
    vocabularies.build_vocab_command(args.vocab_size, args.out)


def _supervise(args) -> None:
    from t5x_lite.resilience.supervisor import Supervisor
    if not args.child:
        raise ConfigError("supervise needs a command: t5x_lite supervise -- t5x_lite train ...")
    sys.exit(Supervisor(args.child, args.max_restarts, args.grace_seconds, args.model_dir,
                        args.max_stalled).run())


def _export_hf(args) -> None:
    from t5x_lite.hf import export
    export.export_command(args.model_dir, args.out, args.step, args.dtype,
                          args.max_shard_size, args.overwrite)


def _import_hf(args) -> None:
    from t5x_lite.hf import import_
    import_.import_command(args.hf_dir, args.out, args.scan_layers, args.overwrite)


def _eval(args) -> None:
    _parse_gin(args)
    from t5x_lite.inference import runner as inference
    inference.eval_command(args.model_dir, args.step, args.tasks, args.num_examples,
                           args.mesh_shape)


def _infer(args) -> None:
    _parse_gin(args)
    from t5x_lite.inference import runner as inference
    inference.infer_command(args.model_dir, args.step, args.prompt, args.prompts_file,
                            args.out, args.max_decode_len, args.batch_size, args.seed,
                            args.mesh_shape)


def _build_data(args) -> None:
    _initialize_distributed(args)
    _parse_gin(args)
    from t5x_lite.pipeline import input_pipeline
    input_pipeline.build_data_command(input_pipeline.DataConfig())


def _plan(args) -> None:
    _parse_gin(args)
    from t5x_lite.analysis import aot, plan
    gin_config.bind_unset_macros(aot.PLACEHOLDER_MACROS)
    plan.plan_command(args.gin_file, args.mesh, args.chip, args.mfu, args.out)


def _scaling(args) -> None:
    from t5x_lite.scaling import command
    if args.action == "fit" and args.sweep_dir:
        command.fit_command(args.sweep_dir, args.out, args.bootstrap)
        return
    if args.action != "sweep" or not args.budgets or not args.out:
        raise ConfigError("give the action and its flags: t5x_lite scaling sweep --gin_file=... "
                          "--budgets=1e11,3e11,1e12 --out=DIR, or t5x_lite scaling fit "
                          "--sweep_dir=DIR")
    _parse_gin(args)
    command.sweep_command(args.gin_file, args.gin_bindings, args.budgets, args.out,
                          args.per_budget, args.span)


COMMANDS = {"train": _train, "build-data": _build_data, "build-vocab": _build_vocab, "supervise": _supervise,
            "export-hf": _export_hf, "import-hf": _import_hf, "eval": _eval, "infer": _infer,
            "plan": _plan, "scaling": _scaling}


COMPILING_COMMANDS = ("train", "eval", "infer")


def _exit_with(command: str, message: str, code: int) -> None:
    print(f"t5x_lite {command}: {message}", file=sys.stderr)
    sys.exit(code)


def _main(args: argparse.Namespace) -> None:
    logging.set_verbosity(logging.WARNING)
    if args.command != "supervise":  # the supervisor only watches; its child starts quietly
        quiet.quiet_start()
    if args.command in COMPILING_COMMANDS:
        from t5x_lite.config import compilation_cache
        compilation_cache.enable()
    from t5x_lite.resilience.preemption import Preempted
    from t5x_lite.resilience.recovery import Diverged
    try:
        COMMANDS[args.command](args)
    except Diverged as diverged:
        _exit_with(args.command, f"{str(diverged).splitlines()[0]}; exiting with code "
                   f"{EXIT_DIVERGED}", EXIT_DIVERGED)
    except Preempted as preempted:
        _exit_with(args.command, f"{preempted}; exiting with code {EXIT_PREEMPTED}",
                   EXIT_PREEMPTED)
    except ConfigError as error:
        # Gin appends "In call to configurable ..." lines; the first line is the message.
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        _exit_with(args.command, f"error: {message}", EXIT_CONFIG_ERROR)


def _parse_args(argv: list[str]) -> argparse.Namespace:
    flags.FLAGS(argv[:1])  # absl's own flags keep their defaults; the CLI is argparse's
    return cli.parse(argv[1:])


def run() -> None:
    quiet.set_tensorflow_log_level()
    app.run(_main, argv=sys.argv, flags_parser=_parse_args)


if __name__ == "__main__":
    run()
