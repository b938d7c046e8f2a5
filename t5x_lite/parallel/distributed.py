"""When and how a run joins a multi-process job (`jax.distributed.initialize`).

`resolve(settings, env)` is a pure function from the command-line flags and the
environment to the keyword arguments of `jax.distributed.initialize`, or None for a
single-process run. Modes (`--distributed`, else `T5X_LITE_DISTRIBUTED`, else auto):

- `explicit`: coordinator address, process count and process id from the flags,
  each falling back to `T5X_LITE_COORDINATOR_ADDRESS`, `T5X_LITE_NUM_PROCESSES`,
  `T5X_LITE_PROCESS_ID`; all three are required.
- `cluster`: `jax.distributed.initialize()` finds them itself (TPU VMs, GKE TPU
  pods, Slurm, Open MPI, Kubernetes with `jax[k8s]`).
- `auto` (default): `explicit` when any of the three is given; else `cluster` when
  the environment shows a multi-process job (`detect_cluster`); else one process.
- `off`: one process, whatever the environment says.

Every mode sets the heartbeat and shutdown timeouts, so a lost peer ends the job
instead of hanging it, and a finished process does not wait forever for the others.
"""

import dataclasses
from collections.abc import Mapping

from t5x_lite.errors import ConfigError

ENV_MODE = "T5X_LITE_DISTRIBUTED"
ENV_COORDINATOR_ADDRESS = "T5X_LITE_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "T5X_LITE_NUM_PROCESSES"
ENV_PROCESS_ID = "T5X_LITE_PROCESS_ID"
MODES = ("auto", "explicit", "cluster", "off")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the command line says; None means "not given"."""

    mode: str | None = None
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    initialization_timeout_seconds: int = 600
    heartbeat_timeout_seconds: int = 60
    shutdown_timeout_seconds: int = 120


def detect_cluster(env: Mapping[str, str]) -> str | None:
    """The multi-process job the environment describes, if any: a name for messages."""
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    if _int(env, "SLURM_STEP_NUM_TASKS") > 1:  # Set by srun, not in the batch script.
        return "Slurm"
    if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        return "multi-host TPU (TPU_WORKER_HOSTNAMES)"
    if _int(env, "OMPI_COMM_WORLD_SIZE") > 1:
        return "Open MPI"
    return None


def resolve(settings: Settings, env: Mapping[str, str]) -> dict | None:
    """Keyword arguments for `jax.distributed.initialize`, or None for one process."""
    mode = settings.mode or env.get(ENV_MODE) or "auto"
    if mode not in MODES:
        raise ConfigError(f"--distributed={mode} (or {ENV_MODE}) must be one of "
                          f"{', '.join(MODES)}.")
    explicit = _explicit_values(settings, env)
    if mode == "off":
        return None
    if mode == "explicit" or (mode == "auto" and any(v is not None for v in
                                                      explicit.values())):
        return {**_checked(explicit), **_timeouts(settings)}
    if mode == "cluster" or detect_cluster(env):
        return _timeouts(settings)
    return None


def initialize(settings: Settings, env: Mapping[str, str]) -> None:
    """Joins the multi-process job that `resolve` finds; a no-op for one process."""
    kwargs = resolve(settings, env)
    if kwargs is None:
        return
    import jax
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError) as error:
        source = kwargs.get("coordinator_address") or detect_cluster(env) or "auto-detection"
        raise ConfigError(f"could not join the multi-process job ({source}): "
                          f"{str(error).splitlines()[0]}") from error


def _explicit_values(settings: Settings, env: Mapping[str, str]) -> dict:
    return {
        "coordinator_address": settings.coordinator_address or env.get(ENV_COORDINATOR_ADDRESS),
        "num_processes": _first_int(settings.num_processes, env, ENV_NUM_PROCESSES),
        "process_id": _first_int(settings.process_id, env, ENV_PROCESS_ID),
    }


def _checked(explicit: dict) -> dict:
    missing = [name for name, value in explicit.items() if value is None]
    if missing:
        raise ConfigError(
            f"a multi-process run needs --coordinator_address, --num_processes and "
            f"--process_id (or {ENV_COORDINATOR_ADDRESS}, {ENV_NUM_PROCESSES}, "
            f"{ENV_PROCESS_ID}); missing: {', '.join(missing)}.")
    if not 0 <= explicit["process_id"] < explicit["num_processes"]:
        raise ConfigError(f"process id {explicit['process_id']} is not in 0 ... "
                          f"{explicit['num_processes'] - 1} (num_processes "
                          f"{explicit['num_processes']}).")
    return explicit


def _timeouts(settings: Settings) -> dict:
    return {"initialization_timeout": settings.initialization_timeout_seconds,
            "heartbeat_timeout_seconds": settings.heartbeat_timeout_seconds,
            "shutdown_timeout_seconds": settings.shutdown_timeout_seconds}


def _first_int(flag_value: int | None, env: Mapping[str, str], name: str) -> int | None:
    if flag_value is not None:
        return flag_value
    if env.get(name) in (None, ""):
        return None
    try:
        return int(env[name])
    except ValueError:
        raise ConfigError(f"{name}={env[name]!r} is not an integer.") from None


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env.get(name, "0"))
    except ValueError:
        return 0
