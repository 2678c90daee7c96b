"""A strict offline check of RayJob / RayCluster objects against KubeRay's v1 API.

No package ships KubeRay's schema, so this one is written by hand from KubeRay v1.7's CRDs
(ray.io_rayjobs.yaml, ray.io_rayclusters.yaml) and the controller's Go validation
(controllers/ray/utils/validation.go). It is stricter than the API server, which prunes unknown
fields silently: here any field the API does not define is an error, so a misspelt field fails.
Embedded core Kubernetes types (pod templates, resources, security contexts, …) are checked by
`kubernetes-validate --strict` through a PodTemplate wrapper.
"""

from __future__ import annotations

import re

import kubernetes_validate

KUBERNETES_VERSION = "1.30.0"  # the oldest Kubernetes the manifests target (docs/kubernetes.md)

STR, INT32, NUMBER, BOOL, STR_MAP, STR_LIST = "string", "int32", "number", "boolean", "map", "list"
INT_OR_STRING = "int-or-string"


class Enum(tuple):
    """A string field with these allowed values."""


class ArrayOf:
    def __init__(self, item):
        self.item = item


class Core:
    """An embedded core Kubernetes type, checked by kubernetes-validate."""

    def __init__(self, kind: str):
        self.kind = kind


DELETION_POLICY = Enum(("DeleteCluster", "DeleteWorkers", "DeleteSelf", "DeleteNone"))
NETWORK_RULES = {
    "ingressRules": ArrayOf(Core("NetworkPolicyIngressRule")),
    "egressRules": ArrayOf(Core("NetworkPolicyEgressRule")),
}
SECRET_VALUE = {"value": STR, "valueFrom": Core("EnvVarSource")}

RAY_CLUSTER_SPEC = {
    "authOptions": {"enableK8sTokenAuth": BOOL, "mode": Enum(("disabled", "token")), "secretName": STR},
    "autoscalerOptions": {
        "args": STR_LIST,
        "command": STR_LIST,
        "env": ArrayOf(Core("EnvVar")),
        "envFrom": ArrayOf(Core("EnvFromSource")),
        "idleTimeoutSeconds": INT32,
        "image": STR,
        "imagePullPolicy": STR,
        "resources": Core("ResourceRequirements"),
        "securityContext": Core("SecurityContext"),
        "upscalingMode": Enum(("Default", "Aggressive", "Conservative")),
        "version": Enum(("v1", "v2")),
        "volumeMounts": ArrayOf(Core("VolumeMount")),
    },
    "enableInTreeAutoscaling": BOOL,
    "gcsFaultToleranceOptions": {
        "backend": Enum(("redis", "rocksdb")),
        "externalStorageNamespace": STR,
        "redisAddress": STR,
        "redisPassword": SECRET_VALUE,
        "redisUsername": SECRET_VALUE,
        "storage": {
            "accessModes": STR_LIST,
            "claimName": STR,
            "deletionPolicy": Enum(("DeleteWithCluster", "Retain")),
            "size": INT_OR_STRING,
            "storageClassName": STR,
            "subPath": STR,
        },
    },
    "headGroupSpec": {
        "enableIngress": BOOL,
        "headService": Core("Service"),
        "ingressOptions": {
            "host": STR,
            "path": STR,
            "pathType": Enum(("Exact", "Prefix", "ImplementationSpecific")),
            "tls": ArrayOf(Core("IngressTLS")),
        },
        "labels": STR_MAP,
        "rayStartParams": STR_MAP,
        "resources": STR_MAP,
        "serviceType": STR,
        "template": Core("PodTemplateSpec"),
    },
    "headServiceAnnotations": STR_MAP,
    "historyServerOptions": {
        "collectorOptions": {
            "env": ArrayOf(Core("EnvVar")),
            "image": STR,
            "imagePullPolicy": STR,
            "resources": Core("ResourceRequirements"),
        }
    },
    "managedBy": Enum(("ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue")),
    "networkPolicy": {
        "mode": Enum(("DenyAll", "DenyAllIngress", "DenyAllEgress")),
        "head": NETWORK_RULES,
        "worker": NETWORK_RULES,
        "workerGroups": ArrayOf({"groupName": STR, **NETWORK_RULES}),
    },
    "rayVersion": STR,
    "suspend": BOOL,
    "tlsOptions": {"enabled": BOOL},
    "upgradeStrategy": {"type": Enum(("Recreate", "None"))},
    "workerGroupSpecs": ArrayOf(
        {
            "groupName": STR,
            "idleTimeoutSeconds": INT32,
            "labels": STR_MAP,
            "maxReplicas": INT32,
            "minReplicas": INT32,
            "numOfHosts": INT32,
            "priority": INT32,
            "rayStartParams": STR_MAP,
            "replicas": INT32,
            "resources": STR_MAP,
            "scaleStrategy": {"workersToDelete": STR_LIST},
            "suspend": BOOL,
            "template": Core("PodTemplateSpec"),
        }
    ),
}
REQUIRED = {
    "rayClusterSpec": ("headGroupSpec",),
    "headGroupSpec": ("template",),
    "workerGroupSpecs[]": ("groupName", "template"),
    "deletionRules[]": ("policy", "condition"),
    "workerGroups[]": ("groupName",),
}
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
RAY_JOB_SPEC = {
    "activeDeadlineSeconds": INT32,
    "backoffLimit": INT32,
    "clusterSelector": STR_MAP,
    "deletionStrategy": {
        "deletionRules": ArrayOf(
            {
                "policy": DELETION_POLICY,
                "condition": {
                    "jobStatus": Enum(("SUCCEEDED", "FAILED")),
                    "jobDeploymentStatus": Enum(("Failed",)),
                    "ttlSeconds": INT32,
                },
            }
        ),
        "onSuccess": {"policy": DELETION_POLICY},
        "onFailure": {"policy": DELETION_POLICY},
    },
    "entrypoint": STR,
    "entrypointNumCpus": NUMBER,
    "entrypointNumGpus": NUMBER,
    "entrypointResources": STR,
    "jobId": STR,
    "managedBy": Enum(("ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue")),
    "metadata": STR_MAP,
    "preRunningDeadlineSeconds": INT32,
    "rayClusterSpec": RAY_CLUSTER_SPEC,
    "runtimeEnvYAML": STR,
    "shutdownAfterJobFinishes": BOOL,
    "submissionMode": Enum(SUBMISSION_MODES),
    "submitterConfig": {"backoffLimit": INT32},
    "submitterPodTemplate": Core("PodTemplateSpec"),
    "suspend": BOOL,
    "ttlSecondsAfterFinished": INT32,
}
TOP_LEVEL = {"apiVersion": STR, "kind": STR, "metadata": Core("ObjectMeta")}
DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
RAY_JOB_NAME_MAX = 47  # KubeRay: 53 (RayCluster limit) minus the 6-character suffix it appends
RAY_CLUSTER_NAME_MAX = 53


def check(obj: dict) -> list[str]:
    """Every problem found in a RayJob or RayCluster, as 'path: message' lines (empty: valid)."""
    errors: list[str] = []
    kind = obj.get("kind")
    if obj.get("apiVersion") != "ray.io/v1" or kind not in ("RayJob", "RayCluster"):
        return [f"apiVersion/kind: expected ray.io/v1 RayJob or RayCluster, got {obj.get('apiVersion')} {kind}"]
    spec_schema = RAY_JOB_SPEC if kind == "RayJob" else RAY_CLUSTER_SPEC
    _walk(obj, {**TOP_LEVEL, "spec": spec_schema}, "", errors)
    if errors:  # the controller's rules below assume well-typed fields
        return errors
    if kind == "RayJob":
        errors += _ray_job_rules(obj)
        cluster = obj.get("spec", {}).get("rayClusterSpec")
    else:
        name = obj.get("metadata", {}).get("name", "")
        if len(name) > RAY_CLUSTER_NAME_MAX or not DNS_1035.fullmatch(name):
            errors.append(
                f"metadata.name: {name!r} must be a DNS-1035 label of at most {RAY_CLUSTER_NAME_MAX} characters"
            )
        cluster = obj.get("spec")
        if isinstance(cluster, dict) and "headGroupSpec" not in cluster:
            errors.append("spec.headGroupSpec: required")
    if isinstance(cluster, dict):
        errors += _cluster_rules(cluster)
    return errors


def _walk(value, schema, path: str, errors: list[str]) -> None:
    where = path or "<root>"
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            errors.append(f"{where}: expected an object, got {type(value).__name__}")
            return
        for key in value:
            if key not in schema:
                errors.append(f"{path + '.' if path else ''}{key}: unknown field (not in KubeRay's v1 API)")
        for key in REQUIRED.get(re.sub(r"\[\d+\]$", "[]", path.rsplit(".", 1)[-1]), ()):
            if key not in value:
                errors.append(f"{path}.{key}: required")
        for key, sub in schema.items():
            if key in value:
                _walk(value[key], sub, f"{path + '.' if path else ''}{key}", errors)
    elif isinstance(schema, ArrayOf):
        if not isinstance(value, list):
            errors.append(f"{where}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _walk(item, schema.item, f"{path}[{i}]", errors)
    elif isinstance(schema, Core):
        errors += [f"{where}: {e}" for e in _check_core(schema.kind, value)]
    elif isinstance(schema, Enum):
        if value not in schema:
            errors.append(f"{where}: {value!r} is not one of {', '.join(schema)}")
    elif schema == STR:
        _expect(isinstance(value, str), where, "a string", value, errors)
    elif schema == INT32:
        _expect(
            isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31,
            where,
            "a 32-bit integer",
            value,
            errors,
        )
    elif schema == NUMBER:
        _expect(isinstance(value, (int, float)) and not isinstance(value, bool), where, "a number", value, errors)
    elif schema == BOOL:
        _expect(isinstance(value, bool), where, "true or false", value, errors)
    elif schema == INT_OR_STRING:
        _expect(
            isinstance(value, (int, str)) and not isinstance(value, bool),
            where,
            "an integer or a string",
            value,
            errors,
        )
    elif schema == STR_MAP:
        if not isinstance(value, dict):
            errors.append(f"{where}: expected a map of strings, got {type(value).__name__}")
        else:
            for k, v in value.items():
                _expect(isinstance(v, str), f"{path}.{k}", "a string (quote it)", v, errors)
    elif schema == STR_LIST:
        _expect(
            isinstance(value, list) and all(isinstance(v, str) for v in value),
            where,
            "a list of strings",
            value,
            errors,
        )
    else:  # pragma: no cover — a typo in the tables above
        raise ValueError(f"unknown schema entry {schema!r} at {where}")


def _expect(ok: bool, where: str, what: str, value, errors: list[str]) -> None:
    if not ok:
        errors.append(f"{where}: expected {what}, got {value!r}")


def _check_core(kind: str, value) -> list[str]:
    """Strict schema check of an embedded core type, wrapped in a PodTemplate or its own kind."""
    container = {"name": "c", "image": "i"}
    wrappers = {
        "PodTemplateSpec": lambda v: {
            "kind": "PodTemplate",
            "apiVersion": "v1",
            "metadata": {"name": "t"},
            "template": v,
        },
        "ObjectMeta": lambda v: {"kind": "ConfigMap", "apiVersion": "v1", "metadata": v},
        "Service": lambda v: {"apiVersion": "v1", "kind": "Service", **v} if isinstance(v, dict) else v,
        "ResourceRequirements": lambda v: _pod({**container, "resources": v}),
        "SecurityContext": lambda v: _pod({**container, "securityContext": v}),
        "EnvVar": lambda v: _pod({**container, "env": [v]}),
        "EnvFromSource": lambda v: _pod({**container, "envFrom": [v]}),
        "EnvVarSource": lambda v: _pod({**container, "env": [{"name": "x", "valueFrom": v}]}),
        "VolumeMount": lambda v: _pod({**container, "volumeMounts": [v]}),
        "IngressTLS": lambda v: {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": "i"},
            "spec": {"tls": [v]},
        },
        "NetworkPolicyIngressRule": lambda v: _policy({"ingress": [v]}),
        "NetworkPolicyEgressRule": lambda v: _policy({"egress": [v]}),
    }
    if not isinstance(value, dict):
        return [f"expected an object ({kind}), got {type(value).__name__}"]
    try:
        kubernetes_validate.validate(wrappers[kind](value), KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        where = ".".join(str(p) for p in err.path)
        return [f"{kind}: {where}: {err.message}"]
    return []


def _pod(container: dict) -> dict:
    return {
        "kind": "PodTemplate",
        "apiVersion": "v1",
        "metadata": {"name": "t"},
        "template": {"spec": {"containers": [container]}},
    }


def _policy(spec: dict) -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "p"},
        "spec": {"podSelector": {}, **spec},
    }


def _ray_job_rules(obj: dict) -> list[str]:
    """The RayJob controller's Go validation (validation.go), which the CRD schema does not hold."""
    errors = []
    name = obj.get("metadata", {}).get("name", "")
    if len(name) > RAY_JOB_NAME_MAX:
        errors.append(f"metadata.name: RayJob name should be no more than {RAY_JOB_NAME_MAX} characters ({name!r})")
    if not DNS_1035.fullmatch(name):
        errors.append(f"metadata.name: RayJob name should be a valid DNS1035 label ({name!r})")
    spec = obj.get("spec") or {}
    shutdown = spec.get("shutdownAfterJobFinishes", False)
    mode = spec.get("submissionMode", "K8sJobMode")
    if spec.get("suspend") and not shutdown:
        errors.append(
            "spec.suspend: a RayJob with shutdownAfterJobFinishes set to false is not allowed to be suspended"
        )
    if spec.get("ttlSecondsAfterFinished", 0) < 0:
        errors.append("spec.ttlSecondsAfterFinished: must be a non-negative integer")
    if not shutdown and spec.get("ttlSecondsAfterFinished", 0) > 0:
        errors.append(
            "spec.ttlSecondsAfterFinished: a RayJob with shutdownAfterJobFinishes set to false cannot have it"
        )
    if "rayClusterSpec" not in spec and "clusterSelector" not in spec:
        errors.append("spec: one of rayClusterSpec or clusterSelector must be set")
    if "clusterSelector" in spec and (mode == "SidecarMode" or spec.get("backoffLimit", 0) > 0):
        errors.append("spec.clusterSelector: not supported in SidecarMode or with backoffLimit > 0")
    if mode == "InteractiveMode" and spec.get("backoffLimit", 0) > 0:
        errors.append("spec.backoffLimit: incompatible with InteractiveMode")
    if mode == "SidecarMode":
        for field in ("submitterPodTemplate", "submitterConfig"):
            if field in spec:
                errors.append(f"spec.{field}: SidecarMode doesn't support it")
        head = (spec.get("rayClusterSpec") or {}).get("headGroupSpec", {}).get("template", {}).get("spec", {})
        if head.get("restartPolicy", "Never") != "Never":
            errors.append(
                "spec.rayClusterSpec.headGroupSpec.template.spec.restartPolicy: must be Never or unset in SidecarMode"
            )
    for field in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
        if field in spec and spec[field] <= 0:
            errors.append(f"spec.{field}: must be a positive integer")
    if spec.get("backoffLimit", 0) < 0:
        errors.append("spec.backoffLimit: must be >= 0")
    if "upgradeStrategy" in (spec.get("rayClusterSpec") or {}):
        errors.append("spec.rayClusterSpec.upgradeStrategy: cannot be set when the RayCluster is created by a RayJob")
    return errors


def _cluster_rules(cluster: dict) -> list[str]:
    """ValidateRayClusterSpec: containers, resource fields, replica bounds, autoscaler v2 needs."""
    errors = []
    groups = [("Head", cluster.get("headGroupSpec") or {})] + [
        (g.get("groupName", "?"), g) for g in cluster.get("workerGroupSpecs") or [] if isinstance(g, dict)
    ]
    names = [name for name, _ in groups[1:]]
    if len(set(names)) != len(names):
        errors.append("workerGroupSpecs: worker group names must be unique")
    autoscaling = cluster.get("enableInTreeAutoscaling", False)
    v2 = (cluster.get("autoscalerOptions") or {}).get("version") == "v2"
    for name, group in groups:
        if not group.get("template", {}).get("spec", {}).get("containers"):
            errors.append(f"{name} group: should have at least one container")
        params = group.get("rayStartParams") or {}
        if "resources" in group and set(params) & {"num-cpus", "num-gpus", "memory", "resources"}:
            errors.append(f"{name} group: resource fields set in both rayStartParams and resources")
        if "labels" in params:
            errors.append(f"{name} group: rayStartParams['labels'] is not supported; use the top-level labels field")
        if name == "Head":
            continue
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if not autoscaling and (low is None or high is None):
            errors.append(
                f"worker group {name}: must set both minReplicas and maxReplicas when autoscaling is disabled"
            )
        low, high = low or 0, 2**31 - 1 if high is None else high
        if low < 0 or high < 0 or low > high:
            errors.append(f"worker group {name}: needs 0 <= minReplicas ({low}) <= maxReplicas ({high})")
        if "replicas" in group and not low <= group["replicas"] <= high:
            errors.append(f"worker group {name}: replicas {group['replicas']} outside [minReplicas, maxReplicas]")
        if "idleTimeoutSeconds" in group and not v2:
            errors.append(f"worker group {name}: idleTimeoutSeconds needs autoscalerOptions.version v2")
        if group.get("suspend") and autoscaling:
            errors.append(f"worker group {name}: cannot be suspended with the autoscaler enabled")
    if (cluster.get("autoscalerOptions") or {}).get("idleTimeoutSeconds", 0) < 0:
        errors.append("autoscalerOptions.idleTimeoutSeconds: must be non-negative")
    return errors
