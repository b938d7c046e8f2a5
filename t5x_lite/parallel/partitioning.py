"""Device mesh, logical axis rules and shardings for pytrees.

Parameters and activations carry logical axis names (`batch`, `embed`, ...).
Two rule tables, one for parameters and one for activations, map them to the
mesh axes `data`, `fsdp` and `tensor` (and `expert`, where a mesh shape has a fourth
entry), so FSDP, tensor or expert parallelism is a gin edit. A mesh axis that does not
divide a dimension, or is not in the mesh, is dropped for that array (the dimension is
replicated instead).
"""

import contextlib
import contextvars
import functools
import math
from collections.abc import Sequence

import gin
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from t5x_lite.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
EXPERT_AXIS = "expert"  # The optional fourth mesh axis: experts, and the batch with them.

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

DEFAULT_PARAM_RULES: Rules = (
    ("layers", None),
    ("experts", EXPERT_AXIS),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
)

DEFAULT_ACTIVATION_RULES: Rules = (
    ("batch", ("data", "fsdp", EXPERT_AXIS)),
    ("length", None),
    ("experts", EXPERT_AXIS),
    ("embed", None),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
)


@gin.configurable
def axis_rules(param_rules: Rules = DEFAULT_PARAM_RULES,
               activation_rules: Rules = DEFAULT_ACTIVATION_RULES) -> tuple[Rules, Rules]:
    """The (parameter, activation) rule tables; bound in gin."""
    return tuple(param_rules), tuple(activation_rules)


def mesh_axes(num_axes: int) -> tuple[str, ...]:
    """The axis names of a mesh shape of `num_axes` entries: 3, or 4 with `expert`."""
    if num_axes not in (len(MESH_AXES), len(MESH_AXES) + 1):
        raise ConfigError(f"a mesh shape has {num_axes} entries: give 3 (data, fsdp, tensor) "
                          f"or 4 (data, fsdp, tensor, {EXPERT_AXIS}).")
    return (*MESH_AXES, EXPERT_AXIS)[:num_axes]


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Replaces a single -1 in `mesh_shape` by the devices left over."""
    if len(mesh_shape) not in (len(MESH_AXES), len(MESH_AXES) + 1):
        raise ConfigError(
            f"MESH_SHAPE={tuple(mesh_shape)} must have 3 entries (data, fsdp, tensor) or 4 "
            f"(data, fsdp, tensor, {EXPERT_AXIS}).")
    if list(mesh_shape).count(-1) > 1:
        raise ConfigError(f"MESH_SHAPE={tuple(mesh_shape)} may hold at most one -1.")
    known = math.prod(d for d in mesh_shape if d != -1)
    shape = tuple(num_devices // known if d == -1 else d for d in mesh_shape)
    if math.prod(shape) != num_devices or known <= 0:
        raise ConfigError(
            f"MESH_SHAPE={tuple(mesh_shape)} does not fit {num_devices} devices; "
            f"make the product equal {num_devices} or use -1 for one axis."
        )
    return shape


def create_mesh(mesh_shape: Sequence[int], devices=None,
                dcn_mesh_shape: Sequence[int] | None = None) -> Mesh:
    """A (data, fsdp, tensor[, expert]) mesh over all (or the given) devices.

    With `dcn_mesh_shape` (not all 1s), `mesh_shape` is the mesh within one slice
    (a TPU slice; one process's devices where the devices are not in several slices)
    and `dcn_mesh_shape` lays the slices out; each mesh axis is their product.
    """
    devices = jax.devices() if devices is None else devices
    if dcn_mesh_shape is None or all(d == 1 for d in dcn_mesh_shape):
        shape = resolve_mesh_shape(mesh_shape, len(devices))
        return Mesh(np.asarray(devices).reshape(shape), mesh_axes(len(shape)))
    grid = _hybrid_device_grid(mesh_shape, dcn_mesh_shape, devices)
    return Mesh(grid, mesh_axes(grid.ndim))


def _hybrid_device_grid(mesh_shape, dcn_mesh_shape, devices) -> np.ndarray:
    """Devices laid out as slices (over DCN) of per-slice meshes (over ICI)."""
    dcn = tuple(dcn_mesh_shape)
    if len(dcn) == len(MESH_AXES) and len(mesh_shape) == len(MESH_AXES) + 1:
        dcn += (1,)  # a 3-entry DCN shape leaves the expert axis within slices
    if len(dcn) != len(mesh_shape) or min(dcn) < 1:
        raise ConfigError(f"DCN_MESH_SHAPE={tuple(dcn_mesh_shape)} must be positive entries, "
                          f"one per MESH_SHAPE entry (data, fsdp, tensor[, {EXPERT_AXIS}]).")
    slices = {getattr(d, "slice_index", None) for d in devices}
    by_slice = None not in slices and len(slices) > 1
    granules = slices if by_slice else {d.process_index for d in devices}
    if len(granules) != math.prod(dcn):
        unit = "slices" if by_slice else "processes (and no devices in several slices)"
        raise ConfigError(f"DCN_MESH_SHAPE={dcn} needs {math.prod(dcn)} slices, but the run "
                          f"has {len(granules)} {unit}; run one process per slice or node, "
                          f"or set DCN_MESH_SHAPE=(1, 1, 1).")
    ici = resolve_mesh_shape(mesh_shape, len(devices) // len(granules))
    try:
        return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                                    process_is_granule=not by_slice)
    except (ValueError, AssertionError, NotImplementedError) as error:
        raise ConfigError(f"MESH_SHAPE={ici} with DCN_MESH_SHAPE={dcn}: "
                          f"{str(error).splitlines()[0]}") from error


def _mesh_axes_for(name: str | None, rules: Rules) -> tuple[str, ...]:
    for logical, mesh_axes in rules:
        if logical == name:
            if mesh_axes is None:
                return ()
            return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
    return ()


def logical_axis_sizes(name: str, mesh: Mesh, rules: Rules) -> dict[str, int]:
    """The mesh axes that `rules` split logical axis `name` over, with their sizes (with a
    DCN mesh, each size is the product over slices)."""
    return {axis: mesh.shape[axis] for axis in _mesh_axes_for(name, rules) if axis in mesh.shape}


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int],
                    mesh: Mesh, rules: Rules) -> PartitionSpec:
    """PartitionSpec for an array of `shape` whose dims carry `logical_axes`."""
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, dim in zip(logical_axes, shape):
        kept = []
        for axis in _mesh_axes_for(name, rules):
            if axis not in mesh.shape:
                continue
            size = math.prod(mesh.shape[a] for a in kept + [axis])
            if axis not in used and dim % size == 0:
                kept.append(axis)
        used.update(kept)
        spec.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
    return PartitionSpec(*spec)


def named_sharding(logical_axes, shape, mesh: Mesh, rules: Rules) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, shape, mesh, rules))


def tree_shardings(logical_tree, abstract_tree, mesh: Mesh, rules: Rules):
    """NamedShardings for `abstract_tree`, whose leaves' axes are in `logical_tree`."""
    return jax.tree.map(
        lambda axes, leaf: named_sharding(axes, leaf.shape, mesh, rules),
        logical_tree, abstract_tree, is_leaf=lambda x: isinstance(x, tuple),
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


_ACTIVATION_CONTEXT: contextvars.ContextVar = contextvars.ContextVar("activation_sharding",
                                                                      default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules):
    """Within this context, `constrain` pins activations to the mesh."""
    token = _ACTIVATION_CONTEXT.set((mesh, rules))
    try:
        yield
    finally:
        _ACTIVATION_CONTEXT.reset(token)


def map_batch_shards(fn, batched: tuple, shared: tuple, shared_axis: str | None = None):
    """`fn(*batched, *shared, mesh_axis=...)` on each device's share of the batch: the
    `batched` arrays (and `fn`'s outputs) split along their first axis as activation rules
    split `batch`. The `shared` arrays are whole on every device (gathered first where
    sharded), or, with `shared_axis` a logical axis, split along their first axis over the
    one mesh axis that the rules give it; `mesh_axis` names that axis for `fn`'s
    collectives (None where it is absent or of size 1). For work that must stay local to a
    device's rows, such as sorting tokens by expert. Outside `activation_sharding`, `fn`
    on the whole arrays."""
    context = _ACTIVATION_CONTEXT.get()
    if context is None:
        return fn(*batched, *shared, mesh_axis=None)
    mesh, rules = context
    rows_spec = PartitionSpec(logical_to_spec(("batch",), batched[0].shape[:1], mesh, rules)[0])
    mesh_axis = None
    if shared_axis is not None:
        split = logical_to_spec((shared_axis,), shared[0].shape[:1], mesh, rules)[0]
        if isinstance(split, str) and mesh.shape[split] > 1:
            mesh_axis = split
    in_specs = (rows_spec,) * len(batched) + (PartitionSpec(mesh_axis),) * len(shared)
    return jax.shard_map(functools.partial(fn, mesh_axis=mesh_axis), mesh=mesh,
                         in_specs=in_specs, out_specs=rows_spec,
                         check_vma=False)(*batched, *shared)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint on an activation; a no-op outside `activation_sharding`."""
    context = _ACTIVATION_CONTEXT.get()
    if context is None:
        return x
    mesh, rules = context
    return jax.lax.with_sharding_constraint(x, named_sharding(logical_axes, x.shape, mesh, rules))
