"""Per-device memory of params and optimizer state under FSDP, on 8 host devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python bench/suite_memory.py \
        [--gin_file models/decoder/small.gin] [--out FILE.json]

Compiles the train step of the small model (every parameter has an `embed` dimension
that 8 divides) on a (data 8) mesh and on an (fsdp 8) mesh, and reads the bytes one
device holds two ways: from the shardings' shard shapes, and from the compiled step's
memory analysis (its arguments: params, optimizer state, batch, health counters).
"""

import harness
import markdown

TITLE = "Memory per device under FSDP (8 host devices)"
DEVICES = 8
MESHES = {"fsdp=1": (8, 1, 1), "fsdp=8": (1, 8, 1)}
BINDINGS = ["TASK_FEATURE_LENGTHS = {'targets': 256}", "BATCH_SIZE = 16"]
GOAL = 0.05  # |fsdp=8 / (fsdp=1 / 8) - 1|


def add_arguments(parser) -> None:
    parser.add_argument("--gin_file", default="models/decoder/small.gin")


def _measure_mesh(gin_file: str, mesh_shape: tuple) -> dict:
    import jax

    from t5x_lite.analysis import aot, step_analysis
    if len(jax.devices()) < 8:
        raise harness.BenchError("needs 8 host devices: set XLA_FLAGS="
                                 "--xla_force_host_platform_device_count=8")
    setup = harness.planned_setup([gin_file, "runs/pretrain.gin"], BINDINGS, mesh_shape)
    analysis = step_analysis.analyze(setup, aot.compile_train_step(setup))
    return {"mesh_shape": list(mesh_shape), "params_bytes": analysis.params_bytes,
            "optimizer_bytes": analysis.optimizer_bytes,
            "argument_bytes": analysis.argument_bytes, "temp_bytes": analysis.temp_bytes,
            "total_bytes": analysis.total_bytes}


def _ratio(by_mesh: dict, field: str) -> float:
    """fsdp=8 bytes over an eighth of fsdp=1 bytes (1.0: perfect sharding)."""
    return by_mesh["fsdp=8"][field] / (by_mesh["fsdp=1"][field] / 8)


def measure(args) -> dict:
    by_mesh = {name: _measure_mesh(args.gin_file, shape) for name, shape in MESHES.items()}
    state = {name: m["params_bytes"] + m["optimizer_bytes"] for name, m in by_mesh.items()}
    state_ratio = state["fsdp=8"] / (state["fsdp=1"] / 8)
    arguments_ratio = _ratio(by_mesh, "argument_bytes")
    return {"gin_file": args.gin_file, "bindings": BINDINGS, "meshes": by_mesh,
            "versions": harness.versions("flax"),
            "ratios": {"state": state_ratio, "arguments": arguments_ratio,
                       "temps_fsdp8_over_fsdp1": by_mesh["fsdp=8"]["temp_bytes"]
                       / by_mesh["fsdp=1"]["temp_bytes"]},
            "targets": [
                harness.target("params + optimizer, fsdp=8 / (fsdp=1 / 8), shard shapes",
                               round(state_ratio, 4), f"within {GOAL:.0%} of 1",
                               abs(state_ratio - 1) <= GOAL),
                harness.target("compiled arguments, fsdp=8 / (fsdp=1 / 8)",
                               round(arguments_ratio, 4), f"within {GOAL:.0%} of 1",
                               abs(arguments_ratio - 1) <= GOAL)]}


COLUMNS = ("mesh (data, fsdp, tensor)", "params MB", "optimizer MB", "params + optimizer MB",
           "compiled arguments MB", "compiled temporaries MB", "compiled total MB")


DEFINITIONS = """\
Per device, MB = 1e6 bytes. Params and optimizer state come from the shardings' shard
shapes (`t5x_lite.analysis.aot.state_bytes`); the compiled figures are XLA's buffer assignment of
the CPU compile (`memory_analysis()`): arguments are the donated state plus the batch,
temporaries are activations, gradients and workspace, total is arguments + outputs -
aliased + temporaries. Temporaries shrink by little more than the gradients' share: both
meshes split the batch 8 ways, so activations per device are alike, and FSDP adds the
gathered weights of the layer at work."""


def _mb(value: float) -> str:
    return f"{value / 1e6:,.2f}"


def section(result: dict) -> str:
    rows = [(f"{name} {tuple(m['mesh_shape'])}", _mb(m["params_bytes"]),
             _mb(m["optimizer_bytes"]), _mb(m["params_bytes"] + m["optimizer_bytes"]),
             _mb(m["argument_bytes"]), _mb(m["temp_bytes"]), _mb(m["total_bytes"]))
            for name, m in result["meshes"].items()]
    ratios = result["ratios"]
    lines = [
        markdown.provenance(result, f"jax {result['versions']['jax']}."), "",
        (f"Model: `{result['gin_file']}` with `runs/pretrain.gin`, "
         f"{', '.join(f'`{b}`' for b in result['bindings'])}; AdamW."), "",
        markdown.table(COLUMNS, rows), "",
        (f"fsdp=8 over an eighth of fsdp=1: params + optimizer {ratios['state']:.4f}, "
         f"compiled arguments {ratios['arguments']:.4f}. Temporaries, fsdp=8 over fsdp=1: "
         f"{ratios['temps_fsdp8_over_fsdp1']:.2f}."), "",
        markdown.targets_line(result["targets"]), "",
        DEFINITIONS,
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    harness.suite_main(__file__, TITLE, add_arguments, measure)
