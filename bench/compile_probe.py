"""Lower and compile one train step in this fresh process; print the times as JSON.

    python bench/compile_probe.py --num_layers 32 [--no_scan] [--gin_file models/decoder/small.gin]

The persistent compilation cache is switched off, so nothing is reused between runs.
"""

import argparse
import json

import harness
import jax

from t5x_lite.analysis import aot

BINDINGS = ["TASK_FEATURE_LENGTHS = {'targets': 256}", "BATCH_SIZE = 8"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_layers", type=int, required=True)
    parser.add_argument("--no_scan", action="store_true")
    parser.add_argument("--gin_file", default="models/decoder/small.gin")
    args = parser.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)
    bindings = [*BINDINGS, f"DecoderConfig.num_layers = {args.num_layers}",
                f"DecoderConfig.scan_layers = {not args.no_scan}"]
    setup = harness.planned_setup([args.gin_file, "runs/pretrain.gin"], bindings, (1, 1, 1))
    step = aot.compile_train_step(setup)
    print(json.dumps({"num_layers": args.num_layers, "scan_layers": not args.no_scan,
                      "lower_seconds": step.lower_seconds,
                      "compile_seconds": step.compile_seconds}))


if __name__ == "__main__":
    main()
