"""`resnet-sweep k8s render`: the Kubernetes manifests of one sweep — a KubeRay RayJob and the
ConfigMap holding the sweep file — filled into k8s/base/rayjob.yaml, the same file kustomize
builds (shipped in the package as orchestrator/rayjob.yaml, a link to it). Light on purpose:
no Ray, no MLflow, no torch."""

from __future__ import annotations

import copy
import math
import re
import shlex
from importlib.resources import files
from urllib.parse import urlsplit

import yaml

from orchestrator.sweepfile.spec import ParsedSpec
from orchestrator.tracking.mlflow_store import secret_in
from resnet_core.config import FOLDER_DATASETS, DataConfig

__all__ = ["RenderError", "ray_job_name", "render", "render_yaml"]

SWEEP_VOLUME, STORAGE_VOLUME, DATA_VOLUME, SWEEP_FILE = "sweep", "storage", "data", "sweep.yaml"
# Host memory per trial on a GPU worker (data on the device, model, Ray worker process), plus
# the Ray node itself (raylet, object store); requests equal limits (Guaranteed QoS).
TRIAL_MEMORY_GIB, NODE_MEMORY_GIB = 8, 2
RAY_JOB_NAME_MAX = 47  # KubeRay appends a 6-character suffix for the RayCluster (limit 53)
DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS_1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
OBJECT_STORES = ("s3", "gs")


class RenderError(Exception):
    """Bad input to `k8s render`: printed as one line naming the flag, exit code 2."""


def ray_job_name(sweep_name: str) -> str:
    """The sweep's name as a RayJob name: a DNS-1035 label of at most 47 characters."""
    name = re.sub(r"[^a-z0-9-]+", "-", sweep_name.lower()).strip("-")[:RAY_JOB_NAME_MAX].rstrip("-")
    if not DNS_1035.fullmatch(name):
        raise RenderError(
            f"--name: the sweep's name {sweep_name!r} does not make a RayJob name "
            "(a lowercase letter first, then letters, digits, '-'); pass --name"
        )
    return name


def render(
    parsed: ParsedSpec,
    *,
    image: str,
    gpus: int = 1,
    namespace: str | None = None,
    name: str | None = None,
    tracking_uri: str | None = None,
    storage_path: str | None = None,
    data_claim: str | None = None,
    warn=lambda line: None,
) -> list[dict]:
    """The ConfigMap and the RayJob for this sweep, as objects ready to dump; ``warn`` gets a
    line about what the manifests leave to the user (an image folder not mounted)."""
    if (written := parsed.spec.tracking.tracking_uri) and (secret := secret_in(written)):
        # The ConfigMap holds the sweep file: a password in it would be readable by whoever reads the namespace.
        raise parsed.error(
            ("tracking", "tracking_uri"),
            f"{secret} would be written into the ConfigMap with the sweep file; give the job the login in a "
            f"Secret (docs/kubernetes.md) and the URI without it",
        )
    template = yaml.safe_load(files(__package__).joinpath("rayjob.yaml").read_text())
    job = copy.deepcopy(template)
    name = _checked_name(name) if name is not None else ray_job_name(parsed.spec.name)
    if not image or any(c.isspace() for c in image):
        raise RenderError(f"--image: {image!r} is not an image reference (e.g. registry.example/resnet-sweep:0.1.0)")
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    (workers,) = cluster["workerGroupSpecs"]

    labels = {**job["metadata"]["labels"], "resnet-sweep/sweep": name}
    job["metadata"] = {"name": name, "labels": labels}
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-sweep", "labels": labels},
        "data": {SWEEP_FILE: parsed.resolved_text()},  # with any `--set`: the pod runs the file as given here
    }
    if namespace is not None:
        if len(namespace) > 63 or not DNS_1123.fullmatch(namespace):
            raise RenderError(f"--namespace: {namespace!r} is not a namespace name (lowercase letters, digits, '-')")
        for obj in (config_map, job):
            obj["metadata"] = {"name": obj["metadata"]["name"], "namespace": namespace, "labels": labels}
    _volume(head, SWEEP_VOLUME)["configMap"]["name"] = config_map["metadata"]["name"]
    for pod in (head, workers["template"]["spec"]):
        for container in pod["containers"]:
            container["image"] = image
    _size_workers(workers, parsed, gpus)
    _mount_data(parsed, job, data_claim, warn)

    argv = shlex.split(job["spec"]["entrypoint"])
    storage = _flag(argv, "--storage-path")
    if storage_path is not None:
        storage = _place_storage(storage_path, job, _mount_path(head, STORAGE_VOLUME))
    tracking = tracking_uri
    if tracking is None:  # the sweep's own server if it names one, else the cluster's MLflow
        own = parsed.spec.tracking.tracking_uri or ""
        tracking = own if own.startswith(("http://", "https://")) else _flag(argv, "--tracking-uri")
    _check_tracking(tracking)
    job["spec"]["entrypoint"] = shlex.join(_with_flags(argv, {"--storage-path": storage, "--tracking-uri": tracking}))
    return [config_map, job]


def render_yaml(objects: list[dict]) -> str:
    return yaml.dump_all(
        objects, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=120
    )


def _checked_name(name: str) -> str:
    if len(name) > RAY_JOB_NAME_MAX or not DNS_1035.fullmatch(name):
        raise RenderError(
            f"--name: {name!r} is not a RayJob name (a DNS-1035 label of at most {RAY_JOB_NAME_MAX} "
            "characters: a lowercase letter first, then letters, digits, '-')"
        )
    return name


def _size_workers(group: dict, parsed: ParsedSpec, gpus: int) -> None:
    """Worker pods from the GPU total and a trial's resources: each pod holds whole trials."""
    per_trial = parsed.spec.resources
    if per_trial.gpu == 0:
        raise parsed.error(
            ("resources", "gpu"),
            "0: trials that use no GPU do not need a GPU cluster; set "
            "resources.gpu (1, or 0.5 to pack two trials on a GPU) to run this sweep with k8s render",
        )
    if gpus < 1:
        raise RenderError(f"--gpus: {gpus} must be at least 1")
    if per_trial.trial_gpus > gpus:  # the trial would wait for GPUs that never come
        raise RenderError(
            f"--gpus: {gpus} cannot hold one trial of resources.workers {per_trial.workers} × gpu "
            f"{per_trial.gpu:g} ({per_trial.trial_gpus:g} GPUs); pass --gpus {math.ceil(per_trial.trial_gpus)} or more"
        )
    # One GPU per pod (a process uses one device: resources.gpu ≤ 1), holding 1/gpu trials or
    # data-parallel workers (Ray places a trial's workers on as many pods as it needs).
    trials_per_pod = int(1 / per_trial.gpu + 1e-9)
    cpu = trials_per_pod * per_trial.cpu
    size = {
        "cpu": str(int(cpu)) if cpu == int(cpu) else f"{math.ceil(cpu * 1000)}m",
        "memory": f"{trials_per_pod * TRIAL_MEMORY_GIB + NODE_MEMORY_GIB}Gi",
        "nvidia.com/gpu": "1",
    }
    (container,) = group["template"]["spec"]["containers"]
    container["resources"] = {"requests": dict(size), "limits": dict(size)}
    # All pods from the start so the sweep starts at full width; the autoscaler may take idle
    # ones down to zero (minReplicas 0) once the last trials finish.
    group["replicas"] = group["maxReplicas"] = gpus
    group["minReplicas"] = 0


def _mount_data(parsed: ParsedSpec, job: dict, claim: str | None, warn) -> None:
    """The PersistentVolumeClaim ``claim`` mounted read-only, in every pod, at the folder the
    sweep reads its data from: an image folder's dataset.root, CIFAR's dataset.cache_dir."""
    name = parsed.spec.dataset.get("name", DataConfig.name)
    field = "root" if name in FOLDER_DATASETS else "cache_dir"
    folder = parsed.spec.dataset.get(field)
    if claim is None:
        if name in FOLDER_DATASETS:
            warn(
                f"warning: dataset.root {folder} is not mounted in the pods: pass --data-claim CLAIM (a "
                f"PersistentVolumeClaim holding it), unless the image holds it"
            )
        return
    if len(claim) > 253 or not DNS_1123_SUBDOMAIN.fullmatch(claim):
        raise RenderError(
            f"--data-claim: {claim!r} is not a PersistentVolumeClaim name (lowercase letters, digits, '-', '.')"
        )
    if not folder:
        raise RenderError(
            f"--data-claim: the sweep sets no dataset.cache_dir to mount it at (where {name}'s files are read from)"
            if name.startswith("cifar")
            else f"--data-claim: {name} reads no data folder"
        )
    if not folder.startswith("/"):
        raise parsed.error(
            ("dataset", field),
            f"{folder!r}: the pods mount --data-claim there, so it must be an absolute path (e.g. /data/imagenet)",
        )
    cluster = job["spec"]["rayClusterSpec"]
    taken = {
        m["mountPath"].rstrip("/")
        for c in cluster["headGroupSpec"]["template"]["spec"]["containers"]
        for m in c["volumeMounts"]
    }
    if folder.rstrip("/") in taken | {""}:
        raise parsed.error(
            ("dataset", field),
            f"{folder!r}: the pods mount something else there "
            f"({', '.join(sorted(taken))} are taken); keep the data elsewhere",
        )
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        pod["volumes"].append({"name": DATA_VOLUME, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        for container in pod["containers"]:
            container["volumeMounts"].append({"name": DATA_VOLUME, "mountPath": folder, "readOnly": True})


def _place_storage(path: str, job: dict, mount: str) -> str:
    """A path on the shared volume, or an object store (then the volume is not needed)."""
    scheme = urlsplit(path).scheme if "://" in path else ""
    if scheme:
        parts = urlsplit(path)
        if scheme not in OBJECT_STORES or not parts.netloc:
            raise RenderError(
                f"--storage-path: {path!r}: expected s3://bucket/… or gs://bucket/…, or a folder under {mount}"
            )
        if "@" in parts.netloc or parts.query:
            raise RenderError(
                "--storage-path: credentials or options in the URI would be written into the manifest; "
                "put them in the Secret resnet-sweep-s3 (docs/kubernetes.md)"
            )
        cluster = job["spec"]["rayClusterSpec"]
        for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
            pod = group["template"]["spec"]
            pod["volumes"] = [v for v in pod["volumes"] if v["name"] != STORAGE_VOLUME]
            for container in pod["containers"]:
                container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != STORAGE_VOLUME]
        return path
    if not path.startswith("/") or not (path.rstrip("/") + "/").startswith(mount.rstrip("/") + "/"):
        raise RenderError(
            f"--storage-path: {path!r} is not on the shared volume every pod mounts at {mount}; "
            f"use a folder under {mount} or s3://…"
        )
    return path


def _check_tracking(uri: str) -> None:
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RenderError(
            f"--tracking-uri: {uri!r}: the pods need an MLflow server (http://…); a local store "
            "would be lost with the head pod"
        )
    if parts.username or parts.password:
        raise RenderError(
            "--tracking-uri: credentials in the URI would be written into the manifest; the head pod "
            "reads them from the Secret mlflow-auth (docs/kubernetes.md)"
        )


def _volume(pod: dict, name: str) -> dict:
    return next(v for v in pod["volumes"] if v["name"] == name)


def _mount_path(pod: dict, volume: str) -> str:
    return next(m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume)


def _flag(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _with_flags(argv: list[str], values: dict[str, str]) -> list[str]:
    out = list(argv)
    for flag, value in values.items():
        out[out.index(flag) + 1] = value
    return out


class _Dumper(yaml.SafeDumper):
    """Plain YAML for kubectl: no anchors, the sweep file as a readable block."""

    def ignore_aliases(self, data) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, text: str):
    style = "|" if "\n" in text and not any(line != line.rstrip() for line in text.splitlines()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _str)
