"""Launchers and multi-host configuration, without a cluster: how a run decides to join
a multi-process job, hybrid meshes, the mesh configs, the local launcher's process
handling, and the exact commands the cloud launchers would run."""

import dataclasses
import inspect
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import gin
import jax
import pytest
import yaml

from t5x_lite.config import gin_config
from t5x_lite.parallel import distributed, partitioning
from t5x_lite.parallel.distributed import Settings, resolve
from t5x_lite.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
TIMEOUTS = {"initialization_timeout": 600, "heartbeat_timeout_seconds": 60,
            "shutdown_timeout_seconds": 120}
EXPLICIT_ENV = {"T5X_LITE_COORDINATOR_ADDRESS": "10.0.0.1:1234",
                "T5X_LITE_NUM_PROCESSES": "4", "T5X_LITE_PROCESS_ID": "3"}


def _launcher(name: str, *args: str, env=None, timeout: float = 60):
    return subprocess.run([sys.executable, os.path.join(LAUNCH, name), *args],
                          capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)


# How a run joins a multi-process job.

def test_one_process_without_flags_or_cluster():
    assert resolve(Settings(), {}) is None
    assert resolve(Settings(), {"SLURM_NTASKS": "8", "SLURM_JOB_ID": "1"}) is None
    assert resolve(Settings(), {"SLURM_STEP_NUM_TASKS": "1"}) is None
    assert resolve(Settings(), {"TPU_WORKER_HOSTNAMES": "localhost"}) is None


def test_explicit_values_from_flags_or_environment():
    expected = {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3,
                **TIMEOUTS}
    flags = Settings(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3)
    assert resolve(flags, {}) == expected
    assert resolve(Settings(), EXPLICIT_ENV) == expected
    assert resolve(Settings(process_id=0), EXPLICIT_ENV)["process_id"] == 0
    # Explicit values win over a detected cluster.
    assert resolve(Settings(), {**EXPLICIT_ENV, "SLURM_STEP_NUM_TASKS": "8"}) == expected


@pytest.mark.parametrize("env", [{"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "0"},
                                 {"TPU_WORKER_HOSTNAMES": "t1k-0,t1k-1"},
                                 {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"},
                                 {"OMPI_COMM_WORLD_SIZE": "2"}])
def test_auto_lets_jax_detect_a_cluster(env):
    assert resolve(Settings(), env) == TIMEOUTS


def test_modes_from_flag_or_environment():
    slurm = {"SLURM_STEP_NUM_TASKS": "8"}
    assert resolve(Settings(mode="off"), {**slurm, **EXPLICIT_ENV}) is None
    assert resolve(Settings(), {**slurm, "T5X_LITE_DISTRIBUTED": "off"}) is None
    assert resolve(Settings(mode="cluster"), {}) == TIMEOUTS
    assert resolve(Settings(mode="auto"), {"T5X_LITE_DISTRIBUTED": "off", **slurm}) == TIMEOUTS
    custom = Settings(mode="cluster", heartbeat_timeout_seconds=10, shutdown_timeout_seconds=20)
    assert resolve(custom, {}) == {**TIMEOUTS, "heartbeat_timeout_seconds": 10,
                                   "shutdown_timeout_seconds": 20}


@pytest.mark.parametrize("settings,env,message", [
    (Settings(mode="explicit"), {}, "missing: coordinator_address, num_processes, process_id"),
    (Settings(coordinator_address="h:1"), {}, "missing: num_processes, process_id"),
    (Settings(), {"T5X_LITE_NUM_PROCESSES": "2"}, "missing: coordinator_address, process_id"),
    (Settings(), {**EXPLICIT_ENV, "T5X_LITE_PROCESS_ID": "4"}, "process id 4 is not in 0 ... 3"),
    (Settings(), {**EXPLICIT_ENV, "T5X_LITE_PROCESS_ID": "one"}, "is not an integer"),
    (Settings(), {"T5X_LITE_DISTRIBUTED": "yes"}, "must be one of auto, explicit, cluster"),
])
def test_bad_distributed_settings_are_config_errors(settings, env, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve(settings, env)


def test_the_arguments_fit_jax_distributed_initialize():
    signature = inspect.signature(jax.distributed.initialize)
    signature.bind(**resolve(Settings(), EXPLICIT_ENV))
    signature.bind(**resolve(Settings(mode="cluster"), {}))


def test_launchers_set_the_variables_the_trainer_reads():
    sys.path.insert(0, LAUNCH)
    try:
        import common
    finally:
        sys.path.remove(LAUNCH)
    assert (common.ENV_MODE, common.ENV_COORDINATOR_ADDRESS, common.ENV_NUM_PROCESSES,
            common.ENV_PROCESS_ID) == (distributed.ENV_MODE, distributed.ENV_COORDINATOR_ADDRESS,
                                       distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID)


# Hybrid meshes.

@dataclasses.dataclass(frozen=True)
class _SliceDevice:
    id: int
    process_index: int
    slice_index: int
    platform: str = "cpu"
    device_kind: str = "cpu"


def test_slices_ride_the_dcn_axes():
    devices = [_SliceDevice(i, process_index=i // 2, slice_index=i // 4) for i in range(8)]
    grid = partitioning._hybrid_device_grid((1, 4, 1), (2, 1, 1), devices)
    assert grid.shape == (2, 4, 1)
    assert [{d.slice_index for d in row.ravel()} for row in grid] == [{0}, {1}]


def test_without_slices_processes_are_the_dcn_granules():
    devices = [_SliceDevice(i, process_index=i // 2, slice_index=0) for i in range(8)]
    grid = partitioning._hybrid_device_grid((2, 1, 1), (1, 4, 1), devices)
    assert grid.shape == (2, 4, 1)
    assert [{d.process_index for d in grid[:, j].ravel()} for j in range(4)] == [
        {0}, {1}, {2}, {3}]


def test_a_dcn_shape_needs_as_many_slices_or_processes():
    with pytest.raises(ConfigError, match=re.escape(
            "DCN_MESH_SHAPE=(2, 1, 1) needs 2 slices, but the run has 1 processes")):
        partitioning.create_mesh((-1, 1, 1), dcn_mesh_shape=(2, 1, 1))
    with pytest.raises(ConfigError, match="one per MESH_SHAPE entry"):
        partitioning.create_mesh((-1, 1, 1), dcn_mesh_shape=(2, 1))
    plain = partitioning.create_mesh((2, 2, 2), dcn_mesh_shape=(1, 1, 1))
    assert plain.devices.tolist() == partitioning.create_mesh((2, 2, 2)).devices.tolist()


# Mesh configs.

MESH_FILES = sorted(os.listdir(os.path.join(ROOT, "gin", "meshes")))


def _mesh_macros(name: str) -> tuple[tuple, tuple | None]:
    gin.clear_config()
    try:
        gin_config.parse([f"meshes/{name}"], [])
        return (gin.query_parameter("MESH_SHAPE/macro.value"),
                gin.query_parameter("DCN_MESH_SHAPE/macro.value"))
    finally:
        gin.clear_config()


def test_the_common_topologies_have_mesh_configs():
    assert {"v4-8.gin", "v5e-256.gin", "v5p-128.gin", "v6e-256.gin", "h100x8.gin",
            "h100x32.gin", "cpu-8.gin"} <= set(MESH_FILES)


@pytest.mark.parametrize("name", MESH_FILES)
def test_a_mesh_config_covers_its_devices(name):
    with open(os.path.join(ROOT, "gin", "meshes", name)) as f:
        stated = int(re.search(r"^# devices: (\d+)$", f.read(), re.MULTILINE).group(1))
    mesh_shape, dcn_mesh_shape = _mesh_macros(name)
    assert len(mesh_shape) == 3 and -1 not in mesh_shape
    total = [m * d for m, d in zip(mesh_shape, dcn_mesh_shape or (1, 1, 1))]
    assert total[0] * total[1] * total[2] == stated


def test_the_cpu_mesh_config_builds_on_8_devices():
    mesh_shape, dcn_mesh_shape = _mesh_macros("cpu-8.gin")
    mesh = partitioning.create_mesh(mesh_shape, dcn_mesh_shape=dcn_mesh_shape)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}


# The local launcher.

CHILD = """import os, signal, sys, time
index = int(os.environ["T5X_LITE_PROCESS_ID"])
print(f"process {index} of {os.environ['T5X_LITE_NUM_PROCESSES']} at "
      f"{os.environ['T5X_LITE_COORDINATOR_ADDRESS']}, {os.environ['XLA_FLAGS']}", flush=True)
def stop(*_):
    open(os.path.join(sys.argv[1], f"stopped_{index}"), "w").close()
    sys.exit(75)
signal.signal(signal.SIGTERM, stop)
open(os.path.join(sys.argv[1], f"started_{index}"), "w").close()
if index == int(sys.argv[2]):
    time.sleep(0.5)
    sys.exit(3)
time.sleep(120)
"""


def _start_local(tmp_path, failing: int, num_processes: int = 3):
    return subprocess.Popen(
        [sys.executable, os.path.join(LAUNCH, "local.py"), f"--num_processes={num_processes}",
         "--devices_per_process=2", f"--log_dir={tmp_path / 'logs'}", "--grace_seconds=5",
         "--", sys.executable, "-c", CHILD, str(tmp_path), str(failing)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_local_launcher_ends_every_process_when_one_fails(tmp_path):
    started = time.time()
    launcher = _start_local(tmp_path, failing=1)
    stdout, stderr = launcher.communicate(timeout=60)
    assert launcher.returncode == 3, stderr
    assert time.time() - started < 30
    assert sorted(os.listdir(tmp_path / "logs")) == [f"process_{i}.log" for i in range(3)]
    assert {n for n in os.listdir(tmp_path) if n.startswith("stopped")} == {
        "stopped_0", "stopped_2"}
    with open(tmp_path / "logs" / "process_2.log") as f:
        log = f.read()
    assert re.match(r"process 2 of 3 at 127\.0\.0\.1:\d+, .*"
                    r"--xla_force_host_platform_device_count=2$", log.splitlines()[0])
    assert stdout.startswith("process 0 of 3")  # process 0's output is shown


def test_local_launcher_forwards_sigterm(tmp_path):
    launcher = _start_local(tmp_path, failing=-1, num_processes=2)
    deadline = time.time() + 30
    while len([n for n in os.listdir(tmp_path) if n.startswith("started")]) < 2:
        assert time.time() < deadline and launcher.poll() is None
        time.sleep(0.05)
    launcher.send_signal(signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=30)
    assert launcher.returncode == 75, stderr
    assert {n for n in os.listdir(tmp_path) if n.startswith("stopped")} == {
        "stopped_0", "stopped_1"}


def test_local_launcher_dry_run():
    result = _launcher("local.py", "--num_processes=2", "--devices_per_process=4",
                       "--port=1234", "--dry-run", "--", "t5x_lite", "train",
                       "--gin.MODEL_DIR='/tmp/a b'",
                       env={**os.environ, "XLA_FLAGS": "--xla_dump_to=/tmp/x "
                            "--xla_force_host_platform_device_count=8"})
    assert result.returncode == 0, result.stderr
    env = ("T5X_LITE_COORDINATOR_ADDRESS=127.0.0.1:1234 T5X_LITE_NUM_PROCESSES=2 "
           "T5X_LITE_PROCESS_ID={} XLA_FLAGS='--xla_dump_to=/tmp/x "
           "--xla_force_host_platform_device_count=4' JAX_PLATFORMS=cpu")
    command = "t5x_lite train '--gin.MODEL_DIR='\"'\"'/tmp/a b'\"'\"''"
    assert result.stdout.splitlines() == [f"{env.format(0)} {command}",
                                          f"{env.format(1)} {command}"]


def test_launchers_need_a_command():
    result = _launcher("local.py", "--num_processes=2")
    assert result.returncode == 2 and "after `--`" in result.stderr


# The TPU pod launcher.

def test_tpu_pod_dry_run_with_a_local_wheel(tmp_path):
    wheel = tmp_path / "t5x_lite-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    result = _launcher("tpu_pod.py", "--name=pod", "--zone=us-central2-b", "--project=proj",
                       "--accelerator_type=v4-32", f"--package={wheel}", "--dry-run", "--",
                       "t5x_lite", "train", "--gin_file=quickstart.gin",
                       "--gin.MODEL_DIR='/mnt/run'")
    assert result.returncode == 0, result.stderr
    where = "--zone=us-central2-b --project=proj"
    tpu_vm = "gcloud compute tpus tpu-vm"
    start = ("setsid nohup env PATH=\"$HOME/.local/bin:$PATH\" T5X_LITE_DISTRIBUTED=cluster "
             "t5x_lite train --gin_file=quickstart.gin '--gin.MODEL_DIR='\"'\"'/mnt/run'\"'\"''"
             " > ~/t5x_lite_run.log 2>&1 < /dev/null & echo $! > ~/t5x_lite_run.pid")
    assert result.stdout.splitlines() == [
        f"{tpu_vm} describe pod '--format=value(state)' {where}",
        f"{tpu_vm} create pod --accelerator-type=v4-32 --version=tpu-ubuntu2204-base {where}",
        f"{tpu_vm} scp {wheel} 'pod:~/' --worker=all {where}",
        (f"{tpu_vm} ssh pod --worker=all '--command=python3 -m pip install --upgrade "
        f"\"$HOME/{wheel.name}[tpu,gcs]\"' {where}"),
        f"{tpu_vm} ssh pod --worker=all {shlex.quote('--command=' + start)} {where}",
        (f"{tpu_vm} ssh pod --worker=0 '--command=tail --pid=$(cat ~/t5x_lite_run.pid) -n +1 "
        f"-f ~/t5x_lite_run.log' {where}"),
    ]


def test_tpu_pod_runs_the_command_unchanged_on_the_workers():
    command = ["t5x_lite", "train", "--gin.MODEL_DIR='/mnt/a b'", "--gin.X=\"$HOME\""]
    result = _launcher("tpu_pod.py", "--name=pod", "--zone=z", "--package=t5x_lite==0.1.0",
                       "--spot", "--dry-run", "--", *command)
    lines = result.stdout.splitlines()
    assert lines[1] == ("gcloud compute tpus tpu-vm create pod --accelerator-type=v4-8 "
                        "--version=tpu-ubuntu2204-base --spot --zone=z")
    assert shlex.split(lines[2])[7] == ("--command=python3 -m pip install --upgrade "
                                        "'t5x_lite[tpu,gcs]==0.1.0'")
    remote = shlex.split(shlex.split(lines[3])[7].removeprefix("--command="))
    assert remote[:5] == ["setsid", "nohup", "env", "PATH=$HOME/.local/bin:$PATH",
                          "T5X_LITE_DISTRIBUTED=cluster"]
    assert remote[5:5 + len(command)] == command


def test_tpu_pod_installs_a_git_url_with_its_extras():
    result = _launcher("tpu_pod.py", "--name=pod", "--zone=z", "--extras=tpu,test",
                       "--package=git+https://example.com/t5x_lite.git@v1", "--dry-run", "--",
                       "t5x_lite", "train")
    assert shlex.split(result.stdout.splitlines()[2])[7] == (
        "--command=python3 -m pip install --upgrade "
        "'t5x_lite[tpu,test] @ git+https://example.com/t5x_lite.git@v1'")


def test_tpu_pod_stop_dry_run():
    result = _launcher("tpu_pod.py", "--name=pod", "--zone=z", "--stop", "--dry-run")
    assert result.stdout.splitlines() == [
        ("gcloud compute tpus tpu-vm ssh pod --worker=all "
        "'--command=pkill -TERM -s $(cat ~/t5x_lite_run.pid) || true' --zone=z")]


# Slurm.

SBATCH = os.path.join(LAUNCH, "slurm.sbatch")


def test_slurm_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", SBATCH], check=False).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run(["shellcheck", SBATCH], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout


def test_slurm_dry_run(tmp_path):
    # Outside a cluster, a stand-in for Slurm's own `scontrol show hostnames`.
    scontrol = tmp_path / "scontrol"
    scontrol.write_text('#!/bin/sh\n[ "$*" = "show hostnames gpu[01-04]" ] || exit 1\n'
                        'printf "gpu01\\ngpu02\\ngpu03\\ngpu04\\n"\n')
    scontrol.chmod(0o755)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "DRY_RUN": "1",
           "SLURM_JOB_NODELIST": "gpu[01-04]", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "123456"}
    result = subprocess.run(["bash", SBATCH, "t5x_lite", "train", "--gin.MODEL_DIR='/s/a b'"],
                            capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "T5X_LITE_COORDINATOR_ADDRESS=gpu01:23456",
        "T5X_LITE_NUM_PROCESSES=4",
        ("srun --kill-on-bad-exit=1 --label bash -c "
        "T5X_LITE_PROCESS_ID=\\\"\\$\\{SLURM_PROCID\\}\\\"\\ exec\\ \\\"\\$@\\\" t5x_lite "
        "t5x_lite train --gin.MODEL_DIR=\\'/s/a\\ b\\'"),
    ]
    # What each task runs: the variable from its own SLURM_PROCID, then the command.
    task = subprocess.run(
        ["bash", "-c", 'T5X_LITE_PROCESS_ID="${SLURM_PROCID}" exec "$@"', "t5x_lite",
         sys.executable, "-c", ("import os, sys; print(os.environ['T5X_LITE_PROCESS_ID'], "
         "sys.argv[1:])"), "--gin.MODEL_DIR='/s/a b'"],
        capture_output=True, text=True, env={**os.environ, "SLURM_PROCID": "2"}, check=True)
    assert task.stdout == "2 [\"--gin.MODEL_DIR='/s/a b'\"]\n"


# Kubernetes.

def _jobset(*args: str) -> tuple[dict, str]:
    result = _launcher("k8s_jobset.py", "--name=pretrain", "--image=gcr.io/p/t5x:1",
                       "--num_hosts=4", *args, "--dry-run", "--", "t5x_lite", "train",
                       "--gin_file=x.gin")
    assert result.returncode == 0, result.stderr
    manifest, command = result.stdout.rstrip("\n").rsplit("\n", 1)
    return yaml.safe_load(manifest), command


def _expected_jobset(node_selector: dict, limits: dict, annotations: dict) -> dict:
    index = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    container = {
        "name": "t5x-lite", "image": "gcr.io/p/t5x:1",
        "command": ["t5x_lite", "train", "--gin_file=x.gin"],
        "env": [{"name": "T5X_LITE_COORDINATOR_ADDRESS",
                 "value": "pretrain-workers-0-0.pretrain:8476"},
                {"name": "T5X_LITE_NUM_PROCESSES", "value": "4"},
                {"name": "T5X_LITE_PROCESS_ID", "valueFrom": {"fieldRef": {"fieldPath": index}}}],
        "ports": [{"containerPort": 8476}], "resources": {"limits": limits}}
    job = {"parallelism": 4, "completions": 4, "completionMode": "Indexed", "backoffLimit": 0,
           "template": {"spec": {"restartPolicy": "Never", "nodeSelector": node_selector,
                                 "terminationGracePeriodSeconds": 120,
                                 "containers": [container]}}}
    return {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
            "metadata": {"name": "pretrain", "annotations": annotations},
            "spec": {"failurePolicy": {"maxRestarts": 0},
                     "network": {"enableDNSHostnames": True, "subdomain": "pretrain"},
                     "replicatedJobs": [{"name": "workers", "replicas": 1,
                                         "template": {"spec": job}}]}}


def test_k8s_jobset_for_tpu():
    manifest, command = _jobset("--accelerator=tpu", "--tpu_type=tpu-v5-lite-podslice",
                                "--tpu_topology=4x4")
    assert manifest == _expected_jobset(
        {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
         "cloud.google.com/gke-tpu-topology": "4x4"}, {"google.com/tpu": 4},
        {"alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"})
    assert command == "kubectl apply -f -"


def test_k8s_jobset_for_gpu():
    manifest, command = _jobset("--accelerator=gpu", "--gpus_per_host=8")
    assert manifest == _expected_jobset({"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
                                        {"nvidia.com/gpu": 8}, {})
    assert command == "kubectl apply -f -"
