"""Orbax checkpoints of the train state plus a JSON record of the run.

Each step directory holds two items: `state` (step, params, optimizer state,
restored onto any mesh through the target shardings) and `meta` (data
position, layer layout, model config, operative gin config).
"""

import dataclasses
import functools
import sys

import gin
import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from t5x_lite import storage
from t5x_lite.resilience.divergence import init_health
from t5x_lite.errors import ConfigError


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Save every `save_every` steps; keep the last `keep` plus every `keep_every`-th."""

    save_every: int = 1000
    keep: int = 3
    keep_every: int | None = None
    async_save: bool = True


def _shapes_by_path(tree) -> dict[str, tuple]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in flat}


def check_shapes(saved_tree, target_tree, where: str) -> None:
    """Raises ConfigError naming the first array whose shape or presence differs."""
    saved, target = _shapes_by_path(saved_tree), _shapes_by_path(target_tree)
    for key in sorted(set(saved) | set(target)):
        if key not in saved or key not in target:
            side = "model" if key not in saved else "checkpoint"
            raise ConfigError(
                f"checkpoint {where} does not match the model: {key} is missing from the {side}; "
                "use the model config the checkpoint was trained with.")
        if saved[key] != target[key]:
            raise ConfigError(
                f"checkpoint {where} does not match the model: {key} has shape {saved[key]} "
                f"in the checkpoint but {target[key]} in the model; use the model config the "
                "checkpoint was trained with.")


def with_shardings(abstract_tree, shardings):
    return jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(
        leaf.shape, leaf.dtype, sharding=sharding), abstract_tree, shardings)


@dataclasses.dataclass
class KeepRollbackTarget(ocp.checkpoint_managers.PreservationPolicy):
    """Preserves the newest checkpoint more than `margin` steps older than the newest one,
    and every newer one (each becomes that target later), so a rollback past a slowly
    building divergence always has a checkpoint to land on."""

    margin: int

    def should_preserve(self, checkpoints, *, context) -> list[bool]:
        steps = [checkpoint.step for checkpoint in checkpoints]
        limit = max(steps, default=0) - self.margin
        target = max((step for step in steps if step < limit), default=min(steps, default=0))
        return [step >= target for step in steps]


def _preservation_policy(cfg: CheckpointConfig, rollback_margin: int | None):
    policies = [ocp.checkpoint_managers.LatestN(cfg.keep)]
    if cfg.keep_every:
        policies.append(ocp.checkpoint_managers.EveryNSteps(cfg.keep_every))
    if rollback_margin is not None:
        policies.append(KeepRollbackTarget(rollback_margin))
    return ocp.checkpoint_managers.AnyPreservationPolicy(policies)


@functools.cache
def _write_whole_arrays_in_one_process() -> None:
    """In a single process, orbax's replica-parallel writes (each replica writing a slice)
    only add slicing ops, and their compilation on the first save, to the blocking part
    of every save: there, each array is written whole."""
    if jax.process_count() == 1:
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


class Checkpointer:
    """The run's checkpoints in `<model_dir>/checkpoints`: the last `keep`, every
    `keep_every`-th, and the rollback target of `rollback_margin` (if given)."""

    def __init__(self, model_dir: storage.PathLike, cfg: CheckpointConfig,
                 rollback_margin: int | None = None):
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=1, enable_async_checkpointing=cfg.async_save,
            preservation_policy=_preservation_policy(cfg, rollback_margin),
            cleanup_tmp_directories=True)
        self.save_every = cfg.save_every
        self.directory = storage.join(model_dir, "checkpoints")
        _write_whole_arrays_in_one_process()
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(str(self.directory), options=options,
                                             item_handlers=handlers)

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def due(self, step: int, force: bool = False) -> bool:
        return force or step % self.save_every == 0

    def save(self, step: int, state, meta: dict, force: bool = False) -> bool:
        """Saves every `save_every` steps, or now with `force`; True if a save started."""
        if not self.due(step, force):
            return False
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  meta=ocp.args.JsonSave(meta))
        return self.manager.save(step, args=args, force=force)

    def restore(self, step: int, abstract_state, shardings):
        """(state, meta) of `step`, placed with `shardings`. Divergence statistics saved in
        another layout (by an older version) are not restored: they start afresh."""
        saved = self.manager.item_metadata(step)["state"]
        saved = getattr(saved, "tree", saved)
        check_shapes(saved["params"], abstract_state["params"], f"{self.directory}/{step}")
        target = with_shardings(abstract_state, shardings)
        fresh_health = set(_shapes_by_path(saved.get("health", {}))) != set(
            _shapes_by_path(abstract_state["health"]))
        if fresh_health:  # restored as saved, then replaced
            replicated = jax.tree.leaves(shardings["health"])[0]
            target["health"] = jax.tree.map(
                lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=replicated),
                saved["health"])
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                  meta=ocp.args.JsonRestore())
        restored = self.manager.restore(step, args=args)
        state = restored["state"]
        if fresh_health:
            print(f"checkpoint step {step}: its divergence statistics have an older layout; "
                  "they start afresh", file=sys.stderr)
            state = {**state, "health": jax.device_put(init_health(), shardings["health"])}
        return state, restored["meta"]

    def restore_latest(self, abstract_state, shardings, before: int | None = None):
        """(step, state, meta) of the newest readable checkpoint, or None if there is none.

        With `before`, the newest readable one before that step, else the oldest readable one.
        An unreadable step (truncated or corrupted files) is logged, moved aside to
        `<step>.corrupt` and the next candidate tried; a shape mismatch is a config error.
        """
        newest_first = sorted(self.manager.all_steps(), reverse=True)
        if before is not None:
            newest_first = ([s for s in newest_first if s < before]
                            + sorted(s for s in newest_first if s >= before))
        for step in newest_first:
            try:
                return (step, *self.restore(step, abstract_state, shardings))
            except ConfigError:
                raise
            except Exception as error:  # noqa: BLE001  (any read failure means "unreadable")
                self._set_aside(step, error)
        return None

    def _set_aside(self, step: int, error: Exception) -> None:
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        print(f"checkpoint step {step} is unreadable ({reason}); moved to "
              f"{step}.corrupt, trying an older one", file=sys.stderr)
        if jax.process_index() == 0:
            storage.set_aside(self.directory / str(step), f"{step}.corrupt")
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _resolve_initial(location: storage.PathLike) -> tuple[epath.Path, int]:
    """(checkpoints directory, step) for a model dir, its checkpoints dir or a step dir."""
    path = storage.path(location)
    if not path.is_dir():
        raise ConfigError(f"INITIAL_CHECKPOINT_PATH={path} does not exist; point it at a "
                          "model dir, its checkpoints/ dir or one step directory.")
    if path.name.isdigit():
        return path.parent, int(path.name)
    directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    steps = ocp.utils.checkpoint_steps(str(directory))
    if not steps:
        raise ConfigError(f"INITIAL_CHECKPOINT_PATH={path} holds no checkpoint steps.")
    return directory, max(steps)


def restore_params(path: storage.PathLike, abstract_params, shardings):
    """Only the params of the checkpoint at `path` (the optimizer starts fresh)."""
    directory, step = _resolve_initial(path)
    state_dir = str(directory / str(step) / "state")
    checkpointer = ocp.PyTreeCheckpointer()
    saved = checkpointer.metadata(state_dir).item_metadata.tree
    check_shapes(saved["params"], abstract_params, state_dir)
    target = {"params": with_shardings(abstract_params, shardings)}
    restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
    return restored["params"]
