"""`t5x_lite plan`: will a gin config fit a mesh of chips, and how fast would it train?

The real train step is compiled ahead of time for CPU devices standing in for the
chips (one per chip), from an abstract state, then analysed (step_analysis): memory
per device against the chip's HBM, FLOPs, communication, and a step time at an
assumed MFU. A config that cannot fit is refused with one line and exit code 2.
"""

import ast
import dataclasses
import json
import math
import os
import re

import jax

from t5x_lite import storage
from t5x_lite.analysis import aot, plan_report, step_analysis
from t5x_lite.observe import chips
from t5x_lite.config import gin_config
from t5x_lite.parallel import partitioning
from t5x_lite.errors import ConfigError
from t5x_lite.train.setup import TrainSetup

_SHAPE_ARGUMENT = re.compile(r"^\s*\d+\s*(,\s*\d+\s*){2,3}$")


@dataclasses.dataclass(frozen=True)
class MeshChoice:
    """A mesh to plan for: within a slice (`mesh_shape`) and across slices (`dcn_mesh_shape`)."""

    name: str
    mesh_shape: tuple[int, ...]
    dcn_mesh_shape: tuple[int, ...] | None
    num_devices: int

    @property
    def full_shape(self) -> tuple[int, ...]:
        """(data, fsdp, tensor[, expert]) over all devices: each axis is slice axis x DCN
        axis (an axis the DCN shape leaves out is 1 across slices)."""
        dcn = tuple(self.dcn_mesh_shape or ())
        dcn += (1,) * (len(self.mesh_shape) - len(dcn))
        return tuple(ici * across for ici, across in zip(self.mesh_shape, dcn))


def _mesh_file(name: str) -> str:
    if os.path.isfile(name):
        return name
    path = os.path.join(gin_config.installed_gin_dir(), "meshes", f"{name.removesuffix('.gin')}.gin")
    if not os.path.isfile(path):
        known = sorted(f[:-4] for f in os.listdir(os.path.dirname(path)) if f.endswith(".gin"))
        raise ConfigError(f"--mesh={name}: no such mesh config; use one of {known} or a "
                          f"shape like 1,8,1.")
    return path


def _macro(text: str, name: str, path: str):
    match = re.search(rf"^{name}\s*=\s*(.+)$", text, re.MULTILINE)
    if not match:
        raise ConfigError(f"{path} binds no {name}.")
    return ast.literal_eval(match.group(1).strip())


def _from_mesh_file(name: str) -> MeshChoice:
    path = _mesh_file(name)
    with open(path) as f:
        text = f.read()
    devices = re.search(r"^#\s*devices:\s*(\d+)", text, re.MULTILINE)
    if not devices:
        raise ConfigError(f"{path} has no '# devices: N' line.")
    dcn = _macro(text, "DCN_MESH_SHAPE", path)
    num_devices = int(devices.group(1))
    per_slice = num_devices // math.prod(dcn or (1,))
    ici = partitioning.resolve_mesh_shape(_macro(text, "MESH_SHAPE", path), per_slice)
    label = os.path.basename(path).removesuffix(".gin")
    return MeshChoice(label, ici, tuple(dcn) if dcn else None, num_devices)


def _from_shape(mesh_shape, dcn_mesh_shape, label: str) -> MeshChoice:
    shapes = [tuple(mesh_shape), tuple(dcn_mesh_shape or ())]
    if any(d < 1 for shape in shapes for d in shape):
        raise ConfigError(f"{label}: the plan needs every mesh axis given (no -1); pass "
                          f"--mesh=NAME (a gin/meshes config) or --mesh=DATA,FSDP,TENSOR"
                          f"[,EXPERT].")
    num_devices = math.prod(shapes[0]) * math.prod(shapes[1] or (1,))
    return MeshChoice(label, shapes[0], shapes[1] or None, num_devices)


def _gin_mesh_label(gin_files: list[str], mesh_shape) -> str:
    """The mesh config among the gin files (`meshes/v5p-128.gin` -> v5p-128), else the shape."""
    for path in reversed(gin_files):
        if os.path.basename(os.path.dirname(path)) == "meshes":
            return os.path.basename(path).removesuffix(".gin")
    return f"MESH_SHAPE={tuple(mesh_shape)}"


def resolve_mesh(mesh_arg: str | None, bindings: dict, gin_files: list[str] = ()) -> MeshChoice:
    """--mesh as a mesh config name or path, a shape `1,8,1` (or `1,8,1,4` with an expert
    axis), or else the gin config's mesh."""
    if mesh_arg is None:
        return _from_shape(bindings["mesh_shape"], bindings["dcn_mesh_shape"],
                           _gin_mesh_label(gin_files, bindings["mesh_shape"]))
    if _SHAPE_ARGUMENT.match(mesh_arg):
        shape = tuple(int(d) for d in mesh_arg.split(","))
        return _from_shape(shape, None, "x".join(map(str, shape)))
    return _from_mesh_file(mesh_arg)


def resolve_chip(chip_arg: str | None, mesh: MeshChoice) -> chips.Chip:
    if chip_arg:
        return chips.by_name(chip_arg)
    chip = chips.from_mesh_name(mesh.name)
    if chip is None:
        raise ConfigError(f"cannot tell the chip from mesh {mesh.name!r}; pass --chip= one of "
                          f"{[c.name for c in chips.CHIPS]}.")
    return chip


def simulate_devices(num_devices: int) -> None:
    """Gives jax `num_devices` CPU devices, unless its backend already started with them."""
    jax.config.update("jax_platforms", "cpu")
    try:
        jax.config.update("jax_num_cpu_devices", num_devices)
    except RuntimeError:
        pass  # jax already started: fine if it has these devices
    devices = jax.devices()
    if len(devices) != num_devices or devices[0].platform != "cpu":
        raise ConfigError(f"could not simulate {num_devices} CPU devices (jax already started "
                          f"with {len(devices)} {devices[0].platform}); run the plan in a "
                          f"fresh process.")


def _refuse_if_state_cannot_fit(setup: TrainSetup, chip: chips.Chip, config_name: str,
                                mesh: MeshChoice) -> None:
    """Refuses before compiling when params, optimizer state and one float32 gradient
    per parameter (the least any train step holds) exceed the chip's memory."""
    state = aot.state_bytes(setup)
    floor = state["params"] * 2 + state["optimizer"]
    if floor > chip.hbm_bytes:
        raise ConfigError(plan_report.refusal_line(
            config_name, mesh.name, chip, floor, True, setup.cfg))


def plan(gin_files: list[str], mesh_arg: str | None, chip_arg: str | None,
         mfu: float) -> dict:
    """The plan report for the gin config the caller parsed (with `aot.PLACEHOLDER_MACROS`
    bound where it leaves them unset); ConfigError when it cannot fit."""
    if not 0 < mfu <= 1:
        raise ConfigError(f"--mfu={mfu}: give the assumed MFU as a fraction in (0, 1].")
    config_name = " + ".join(gin_files) or "the gin bindings"
    bindings = aot.train_bindings()
    mesh_choice = resolve_mesh(mesh_arg, bindings, gin_files)
    chip = resolve_chip(chip_arg, mesh_choice)
    simulate_devices(mesh_choice.num_devices)
    setup = aot.build_setup(bindings, partitioning.create_mesh(mesh_choice.full_shape))
    _refuse_if_state_cannot_fit(setup, chip, config_name, mesh_choice)
    analysis = step_analysis.analyze(setup, aot.compile_train_step(setup))
    report = plan_report.build(config_name, setup, analysis, mesh_choice, chip, mfu)
    if not report["memory_per_device"]["fits"]:
        raise ConfigError(plan_report.refusal_line(
            config_name, mesh_choice.name, chip, analysis.total_bytes, False,
            setup.cfg))
    return report


def plan_command(gin_files: list[str], mesh_arg: str | None, chip_arg: str | None,
                 mfu: float, output: str | None) -> None:
    """Prints the plan; with `output`, also writes it as JSON (only when it succeeds)."""
    if output and not storage.path(output).parent.is_dir():
        raise ConfigError(f"--out={output}: its folder does not exist.")
    report = plan(gin_files, mesh_arg, chip_arg, mfu)
    print(plan_report.format_text(report))
    if output:
        storage.write_atomic(output, json.dumps(report, indent=2))
