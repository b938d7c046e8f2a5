"""A Kubernetes JobSet that runs a command as one pod per host on GKE TPU or GPU nodes.

    python launch/k8s_jobset.py --name=pretrain --image=IMAGE --accelerator=tpu \
        --tpu_type=tpu-v5-lite-podslice --tpu_topology=4x4 --num_hosts=4 \
        --chips_per_host=4 [--dry-run] -- t5x_lite train --gin_file=...
    python launch/k8s_jobset.py --name=pretrain --image=IMAGE --accelerator=gpu \
        --num_hosts=4 --gpus_per_host=8 -- t5x_lite train --gin_file=...

The image must hold t5x_lite (with the `tpu` or `gpu` extra). Pod i of the Job is
process i (its completion index); the coordinator is pod 0, reached through the
JobSet's headless service: NAME-workers-0-0.NAME:PORT. Without `--dry-run` the
manifest goes to `kubectl apply -f -`; with it, the manifest and that command are
printed. The JobSet controller must be installed in the cluster.
"""

import argparse
import sys

import common
import yaml

JOB = "workers"
INDEX_ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
# SIGTERM to SIGKILL: time for a preempted run to save its step and exit 75.
GRACE_SECONDS = 120


def coordinator_address(name: str, port: int) -> str:
    """Pod 0 of job 0 of replicated job JOB, by the JobSet's DNS name."""
    return f"{name}-{JOB}-0-0.{name}:{port}"


def container_env(args: argparse.Namespace) -> list[dict]:
    return [{"name": common.ENV_COORDINATOR_ADDRESS,
             "value": coordinator_address(args.name, args.port)},
            {"name": common.ENV_NUM_PROCESSES, "value": str(args.num_hosts)},
            {"name": common.ENV_PROCESS_ID,
             "valueFrom": {"fieldRef": {"fieldPath": INDEX_ANNOTATION}}}]


def accelerator(args: argparse.Namespace) -> tuple[dict, dict]:
    """(nodeSelector, resource limits) for the node pool."""
    if args.accelerator == "tpu":
        return ({"cloud.google.com/gke-tpu-accelerator": args.tpu_type,
                 "cloud.google.com/gke-tpu-topology": args.tpu_topology},
                {"google.com/tpu": args.chips_per_host})
    return ({"cloud.google.com/gke-accelerator": args.gpu_type},
            {"nvidia.com/gpu": args.gpus_per_host})


def manifest(args: argparse.Namespace, command: list[str]) -> dict:
    node_selector, limits = accelerator(args)
    container = {"name": "t5x-lite", "image": args.image, "command": command,
                 "env": container_env(args), "ports": [{"containerPort": args.port}],
                 "resources": {"limits": limits}}
    pod = {"restartPolicy": "Never", "nodeSelector": node_selector,
           "terminationGracePeriodSeconds": GRACE_SECONDS, "containers": [container]}
    job = {"parallelism": args.num_hosts, "completions": args.num_hosts,
           "completionMode": "Indexed", "backoffLimit": 0, "template": {"spec": pod}}
    # On TPU, all pods of the slice land in one node pool.
    annotations = ({"alpha.jobset.sigs.k8s.io/exclusive-topology":
                    "cloud.google.com/gke-nodepool"} if args.accelerator == "tpu" else {})
    return {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
            "metadata": {"name": args.name, "annotations": annotations},
            "spec": {"failurePolicy": {"maxRestarts": args.max_restarts},
                     "network": {"enableDNSHostnames": True, "subdomain": args.name},
                     "replicatedJobs": [{"name": JOB, "replicas": 1,
                                         "template": {"spec": job}}]}}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True, help="JobSet name (a DNS label)")
    parser.add_argument("--image", required=True, help="container image with t5x_lite")
    parser.add_argument("--accelerator", choices=("tpu", "gpu"), required=True)
    parser.add_argument("--num_hosts", type=int, default=1, help="pods, one process each")
    parser.add_argument("--tpu_type", default="tpu-v5-lite-podslice",
                        help="TPU: the gke-tpu-accelerator node label")
    parser.add_argument("--tpu_topology", default="2x2", help="TPU: the slice topology")
    parser.add_argument("--chips_per_host", type=int, default=4, help="TPU: chips per pod")
    parser.add_argument("--gpu_type", default="nvidia-h100-80gb",
                        help="GPU: the gke-accelerator node label")
    parser.add_argument("--gpus_per_host", type=int, default=8, help="GPU: GPUs per pod")
    parser.add_argument("--port", type=int, default=8476, help="coordinator port")
    parser.add_argument("--max_restarts", type=int, default=0,
                        help="JobSet restarts (all pods) after a failure")
    return parser


def main(argv: list[str]) -> int:
    args, command = common.parse(_parser(), argv)
    text = yaml.safe_dump(manifest(args, command), sort_keys=False)
    apply = ["kubectl", "apply", "-f", "-"]
    if args.dry_run:
        print(text, end="")  # then the command that would read it from stdin
    common.Commands(args.dry_run).run(apply, stdin=text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
