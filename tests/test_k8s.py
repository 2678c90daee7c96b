"""Kubernetes: k8s/ builds with kustomize for every overlay, every object passes strict
schema validation offline (built-in kinds with kubernetes-validate, RayJobs with our KubeRay v1
check), `k8s render` prints the same RayJob the base and overlays hold, the validation fails
on broken manifests, the Dockerfiles pass hadolint, and the RayJob's entrypoint continues the
sweep when it runs a second time (on a real local Ray cluster, against an MLflow server started
with the manifest's own flags and basic auth)."""

import os
import re
import shlex
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from mlflow import MlflowClient

from orchestrator.cli import main
from tests import kuberay_v1
from tests.ray_nodes import LocalCluster, token_home
from tests.support import (
    BIN,
    K8S,
    KUBECTL,
    REPO,
    SMALL_GRID,
    SWEEPS,
    MlflowFromManifest,
    child_runs,
    cli,
    kustomize,
    table_rows,
)

OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir())
HADOLINT = str(BIN / "hadolint")
KUBERNETES_VERSIONS = (kuberay_v1.KUBERNETES_VERSION, kubernetes_validate.latest_version())
RAY_KINDS = ("RayJob", "RayCluster")
# What each overlay's sweep is, as `k8s render` arguments (docs/kubernetes.md says the same).
RENDER_ARGS = {
    "shared-volume": dict(image="registry.example/resnet-sweep:0.1.0", gpus=8, namespace="resnet-sweep"),
    "s3": dict(
        image="registry.example/resnet-sweep:0.1.0",
        gpus=8,
        namespace="resnet-sweep",
        storage_path="s3://my-bucket/sweeps",
    ),
}


def problems(objects: list[dict]) -> list[str]:
    """Every validation problem in these objects (empty: all valid)."""
    found = []
    for obj in objects:
        where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if obj.get("kind") in RAY_KINDS:
            found += [f"{where}: {p}" for p in kuberay_v1.check(obj)]
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                found.append(f"{where}: no schema for this kind in Kubernetes {version}")
            except kubernetes_validate.ValidationError as err:
                found.append(f"{where}: {'.'.join(map(str, err.path))}: {err.message} (Kubernetes {version})")
    return found


def render(capsys, *args: str) -> list[dict]:
    """`resnet-sweep k8s render ARGS…` in this process (the CLI's own entry point)."""
    code = main(["k8s", "render", *map(str, args)])
    out, err = capsys.readouterr()
    assert code == 0 and not err.strip(), err
    return list(yaml.safe_load_all(out))


def render_error(capsys, *args: str) -> str:
    """The one error line of a `k8s render` that must fail with exit code 2 and print nothing."""
    code = main(["k8s", "render", *map(str, args)])
    out, err = capsys.readouterr()
    assert code == 2 and out == "", (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def pods(job: dict) -> list[dict]:
    cluster = job["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]


def test_render_cifar_depth_on_8_gpus_is_a_valid_rayjob(tmp_path):
    out = cli(
        "k8s", "render", SWEEPS / "cifar_depth.yaml", "--image", "example/resnet-sweep:1", "--gpus", "8", cwd=tmp_path
    )
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr
    config_map, job = yaml.safe_load_all(out.stdout)
    assert problems([config_map, job]) == []
    assert config_map["data"]["sweep.yaml"] == (SWEEPS / "cifar_depth.yaml").read_text()
    assert job["metadata"]["name"] == "cifar10-depth" and "namespace" not in job["metadata"]
    spec = job["spec"]
    assert (
        spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0 and spec["backoffLimit"] >= 1
    )
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert all("nvidia.com/gpu" not in str(c["resources"]) for c in head["template"]["spec"]["containers"])
    assert cluster["enableInTreeAutoscaling"] is True
    (workers,) = cluster["workerGroupSpecs"]
    (container,) = workers["template"]["spec"]["containers"]
    per_pod = int(container["resources"]["limits"]["nvidia.com/gpu"])
    assert workers["minReplicas"] == 0 and workers["maxReplicas"] * per_pod == 8 and workers["replicas"] * per_pod == 8
    # resources: {cpu: 4, gpu: 0.5}: two trials per 1-GPU pod, 8 CPUs for them
    assert per_pod == 1 and container["resources"]["limits"]["cpu"] == "8"
    assert container["resources"]["requests"] == container["resources"]["limits"]
    pod = workers["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"]
    for c in (container, head["template"]["spec"]["containers"][0]):
        assert c["image"] == "example/resnet-sweep:1"
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["resnet-sweep", "run", "/etc/resnet-sweep/sweep.yaml"] and "--resume-if-exists" in argv
    mounts = {m["name"]: m["mountPath"] for m in head["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["sweep"] == "/etc/resnet-sweep"
    assert argv[argv.index("--storage-path") + 1] == mounts["storage"]  # the shared volume, mounted in every pod
    assert all(any(m["mountPath"] == mounts["storage"] for m in p["containers"][0]["volumeMounts"]) for p in pods(job))


def test_render_sizes_workers_from_the_sweeps_resources(tmp_path, capsys):
    (tmp_path / "big.yaml").write_text(
        SMALL_GRID.format(epochs=2).replace("resources: {cpu: 1}", "resources: {cpu: 3, gpu: 0.5}")
    )
    _, job = render(
        capsys,
        tmp_path / "big.yaml",
        "--image",
        "r/x:1",
        "--gpus",
        "8",
        "--namespace",
        "team-a",
        "--name",
        "big-one",
        "--tracking-uri",
        "https://mlflow.example.org",
        "--storage-path",
        "s3://bucket/sweeps",
    )
    assert problems([job]) == []
    (workers,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    limits = workers["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert (workers["replicas"], limits["nvidia.com/gpu"], limits["cpu"], limits["memory"]) == (8, "1", "6", "18Gi")
    assert job["metadata"]["namespace"] == "team-a" and job["metadata"]["name"] == "big-one"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[argv.index("--storage-path") + 1] == "s3://bucket/sweeps"
    assert argv[argv.index("--tracking-uri") + 1] == "https://mlflow.example.org"
    for pod in pods(job):  # no shared volume with an object store
        assert "storage" not in {v["name"] for v in pod["volumes"]}
        assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "resnet-sweep-s3", "optional": True}}]


def test_render_mounts_the_data_claim_where_an_imagenet_sweep_reads_and_gives_it_the_gpus(tmp_path):
    sweep = SWEEPS / "imagenet_depth.yaml"  # dataset.root /data/imagenet; 8 workers × 1 GPU per trial
    out = cli(
        "k8s", "render", sweep, "--image", "r/x:1", "--gpus", "16", "--data-claim", "imagenet-train.v2", cwd=tmp_path
    )
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr
    _, job = yaml.safe_load_all(out.stdout)
    assert problems([job]) == []
    for pod in pods(job):
        assert {"name": "data", "persistentVolumeClaim": {"claimName": "imagenet-train.v2", "readOnly": True}} in pod[
            "volumes"
        ]
        assert {"name": "data", "mountPath": "/data/imagenet", "readOnly": True} in pod["containers"][0]["volumeMounts"]

    bare = cli("k8s", "render", sweep, "--image", "r/x:1", "--gpus", "8", cwd=tmp_path)  # the image may hold the data
    assert bare.returncode == 0 and "data" not in {
        v["name"] for p in pods(list(yaml.safe_load_all(bare.stdout))[1]) for v in p["volumes"]
    }
    assert bare.stderr.strip() == (
        "warning: dataset.root /data/imagenet is not mounted in the pods: pass --data-claim "
        "CLAIM (a PersistentVolumeClaim holding it), unless the image holds it"
    )

    few = cli("k8s", "render", sweep, "--image", "r/x:1", "--gpus", "4", cwd=tmp_path)  # a trial would wait forever
    assert (
        few.returncode == 2
        and few.stdout == ""
        and few.stderr.strip()
        == ("error: --gpus: 4 cannot hold one trial of resources.workers 8 × gpu 1 (8 GPUs); pass --gpus 8 or more")
    )

    (tmp_path / "rel.yaml").write_text(sweep.read_text().replace("root: /data/imagenet", "root: data/imagenet"))
    rel = cli(
        "k8s", "render", "rel.yaml", "--image", "r/x:1", "--gpus", "8", "--data-claim", "imagenet-train", cwd=tmp_path
    )
    assert rel.returncode == 2 and "dataset.root: 'data/imagenet': the pods mount --data-claim there" in rel.stderr
    (tmp_path / "shm.yaml").write_text(sweep.read_text().replace("root: /data/imagenet", "root: /dev/shm/"))
    shm = cli(
        "k8s", "render", "shm.yaml", "--image", "r/x:1", "--gpus", "8", "--data-claim", "imagenet.v2", cwd=tmp_path
    )
    assert shm.returncode == 2 and "dataset.root: '/dev/shm/': the pods mount something else there" in shm.stderr


@pytest.mark.unit
@pytest.mark.parametrize(
    "args, message",
    [
        (["--gpus", "0"], "--gpus: 0 must be at least 1"),
        (["--name", "x" * 48], "--name: "),
        (["--name", "Big_Sweep"], "--name: 'Big_Sweep' is not a RayJob name"),
        (["--namespace", "Team A"], "--namespace: 'Team A' is not a namespace name"),
        (["--tracking-uri", "http://admin:hunter2hunter2@mlflow:5000"], "--tracking-uri: credentials in the URI"),
        (
            ["--tracking-uri", "sqlite:///mlflow.db"],
            "--tracking-uri: 'sqlite:///mlflow.db': the pods need an MLflow server",
        ),
        (["--storage-path", "/data/sweeps"], "--storage-path: '/data/sweeps' is not on the shared volume"),
        (["--storage-path", "s3://key:secret@bucket/x"], "--storage-path: credentials or options in the URI"),
        (["--storage-path", "ftp://host/x"], "--storage-path: 'ftp://host/x': expected s3://bucket/…"),
        (["--image", ""], "--image: '' is not an image reference"),
        (["--data-claim", "Data_PVC"], "--data-claim: 'Data_PVC' is not a PersistentVolumeClaim name"),
        (["--data-claim", "data.v1-"], "--data-claim: 'data.v1-' is not a PersistentVolumeClaim name"),
        (["--data-claim", "data"], "--data-claim: digits reads no data folder"),
    ],
)
def test_render_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "two.yaml").write_text(
        SMALL_GRID.format(epochs=2).replace("resources: {cpu: 1}", "resources: {cpu: 1, gpu: 1}")
    )
    base = {"--image": "r/x:1", "--gpus": "2"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    line = render_error(capsys, tmp_path / "two.yaml", *[a for kv in base.items() for a in kv])
    assert line.startswith(f"error: {message}"), line
    assert "hunter2" not in line and "secret@" not in line


def test_render_refuses_sweeps_without_gpus_and_bad_sweep_files(tmp_path, capsys):
    line = render_error(capsys, SWEEPS / "quickstart.yaml", "--image", "r/x:1")
    assert "resources.gpu: 0: trials that use no GPU" in line, line
    (tmp_path / "bad.yaml").write_text(SMALL_GRID.format(epochs=2).replace("train: {", "train: {lr: 1e-3, lrr: 1, "))
    assert "train.lrr" in render_error(capsys, tmp_path / "bad.yaml", "--image", "r/x:1")
    out = cli("k8s", "render", "bad.yaml", cwd=tmp_path)  # no --image: argparse's own usage error
    assert out.returncode == 2 and "--image" in out.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_and_every_object_is_valid(overlay):
    objects = kustomize(K8S / "overlays" / overlay)
    assert problems(objects) == []
    kinds = {o["kind"] for o in objects}
    assert {"RayJob", "Deployment", "StatefulSet", "Service", "NetworkPolicy", "ConfigMap", "Namespace"} <= kinds
    assert "Secret" not in kinds  # credentials only from Secrets the user creates
    for obj in objects:  # every container has requests and limits, and runs as non-root
        for pod in _pod_specs(obj):
            assert pod["securityContext"]["runAsNonRoot"] is True
            for c in pod["containers"]:
                assert c["resources"]["requests"] and c["resources"]["limits"], (obj["metadata"]["name"], c["name"])
                assert c["securityContext"]["allowPrivilegeEscalation"] is False
    mlflow = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow")
    args = mlflow["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--app-name=basic-auth" in args and "--serve-artifacts" in args
    hosts = next(a for a in args if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert "mlflow:5000" in hosts and "localhost:*" in hosts
    artifacts = next(a for a in args if a.startswith("--artifacts-destination="))
    assert artifacts.endswith("s3://my-bucket/mlflow-artifacts" if overlay == "s3" else "=/mlartifacts")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_rayjob_is_what_render_prints(overlay):
    """One definition: the RayJob and ConfigMap kustomize builds are those `k8s render` prints."""
    objects = kustomize(K8S / "overlays" / overlay)
    built = [
        o
        for o in objects
        if o["kind"] == "RayJob" or (o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-sweep"))
    ]
    from orchestrator.k8s import render as render_objects
    from orchestrator.sweepfile.spec import load_spec

    rendered = render_objects(load_spec(SWEEPS / "cifar_depth.yaml"), **RENDER_ARGS[overlay])
    assert sorted(built, key=lambda o: o["kind"]) == sorted(rendered, key=lambda o: o["kind"])


def _pod_specs(obj: dict) -> list[dict]:
    if obj["kind"] in ("Deployment", "StatefulSet"):
        return [obj["spec"]["template"]["spec"]]
    if obj["kind"] == "RayJob":
        return pods(obj)
    return []


def test_validation_fails_on_broken_manifests(tmp_path):
    """Test the test: each of these mistakes is found, at the field."""
    objects = kustomize(K8S / "overlays" / "shared-volume")
    job = next(o for o in objects if o["kind"] == "RayJob")
    cluster = job["spec"]["rayClusterSpec"]
    worker = cluster["workerGroupSpecs"][0]
    mistakes = {
        "spec.shutdownAfterJobFinish: unknown field": lambda j: j["spec"].update(shutdownAfterJobFinish=True),
        "rayClusterSpec.enableInTreeAutoscaler: unknown field": lambda j: j["spec"]["rayClusterSpec"].update(
            enableInTreeAutoscaler=True
        ),
        "workerGroupSpecs[0].minReplica: unknown field": lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][
            0
        ].update(minReplica=0),
        "'resurces' was unexpected": lambda j: pods(j)[1]["containers"][0].update(resurces={}),
        "rayStartParams.num-cpus: expected a string": lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"][
            "rayStartParams"
        ].update({"num-cpus": 0}),
        "no more than 47 characters": lambda j: j["metadata"].update(name="a" * 48),
        "valid DNS1035 label": lambda j: j["metadata"].update(name="1st-sweep"),
        "shutdownAfterJobFinishes set to false cannot have it": lambda j: j["spec"].update(
            shutdownAfterJobFinishes=False
        ),
        "submissionMode: 'SideCarMode' is not one of": lambda j: j["spec"].update(submissionMode="SideCarMode"),
        "backoffLimit: expected a 32-bit integer": lambda j: j["spec"].update(backoffLimit="3"),
        "workerGroupSpecs[0].template: required": lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop(
            "template"
        ),
    }
    import copy

    for expected, breaks in mistakes.items():
        broken = copy.deepcopy(job)
        breaks(broken)
        found = problems([broken])
        assert any(expected in p for p in found), (expected, found)
    assert worker and cluster  # the originals are untouched
    assert problems([job]) == []

    deployment = copy.deepcopy(next(o for o in objects if o["kind"] == "Deployment"))
    deployment["spec"]["replica"] = 1
    assert any("'replica' was unexpected" in p for p in problems([deployment]))
    deployment = copy.deepcopy(next(o for o in objects if o["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = ["2Gi"]
    assert problems([deployment])
    assert problems([{"apiVersion": "example.io/v1", "kind": "Unknown", "metadata": {"name": "x"}}])

    # A kustomization whose patch no longer matches the base fails to build.
    overlay = tmp_path / "k8s" / "overlays" / "broken"
    overlay.mkdir(parents=True)
    (tmp_path / "k8s" / "base").symlink_to(K8S / "base")
    text = (
        (K8S / "overlays" / "s3" / "kustomization.yaml")
        .read_text()
        .replace("volumes/1/name, value: storage", "volumes/1/name, value: sweep")
    )
    (overlay / "kustomization.yaml").write_text(text)
    for name in ("drop-volumes.yaml", "mlflow-artifacts.yaml"):
        (overlay / name).write_text((K8S / "overlays" / "s3" / name).read_text())
    out = subprocess.run([KUBECTL, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0


@pytest.mark.unit
def test_base_sweep_configmap_is_rendered_from_the_shipped_sweep():
    (config_map,) = [o for o in yaml.safe_load_all((K8S / "base" / "sweep.yaml").read_text()) if o]
    assert config_map["data"]["sweep.yaml"] == (SWEEPS / "cifar_depth.yaml").read_text(), (
        "k8s/base/sweep.yaml is stale: regenerate it (docs/kubernetes.md, 'Changing the manifests')"
    )


def test_dockerfiles_pass_hadolint_and_a_bad_one_does_not(tmp_path):
    for dockerfile in (REPO / "Dockerfile", K8S / "images" / "mlflow" / "Dockerfile"):
        out = subprocess.run([HADOLINT, str(dockerfile)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install torch\n")
    out = subprocess.run([HADOLINT, str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "DL3007" in out.stdout and "DL3013" in out.stdout


SECRET_NAMES = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", re.I)


def test_no_secret_values_in_manifests_or_rendered_output(capsys):
    objects = [o for overlay in OVERLAYS for o in kustomize(K8S / "overlays" / overlay)]
    objects += render(capsys, SWEEPS / "cifar_depth.yaml", "--image", "r/x:1", "--gpus", "8")
    for obj in objects:
        assert obj["kind"] != "Secret"
        for pod in _pod_specs(obj):
            for c in pod["containers"]:
                for env in c.get("env", []):
                    if SECRET_NAMES.search(env["name"]):
                        assert "value" not in env and "secretKeyRef" in env["valueFrom"], env
                assert not any(re.search(r"://[^/\s]*:[^/\s]*@", a) for a in c.get("args", []) + c.get("command", []))
    text = "\n".join(p.read_text() for p in K8S.rglob("*") if p.is_file())
    assert not re.search(r"(?i)password\s*[:=]\s*\S", text.replace("PASSWORD", "")), "a password value in k8s/"


def test_mlflow_server_with_the_manifests_flags_serves_health_and_requires_login(manifest_mlflow):
    """The Deployment's own `mlflow server` flags (basic auth, allowed hosts), with SQLite stores in
    place of Postgres: /health answers a kubelet probe, the API needs the login, the in-cluster
    Host header is accepted and an unknown one refused."""
    server = manifest_mlflow
    assert server.get("/health", host="10.1.2.3:5000")[0] == 200  # probes come by pod IP
    assert server.get("/api/2.0/mlflow/experiments/search?max_results=1", host="mlflow:5000")[0] == 401
    assert server.get("/api/2.0/mlflow/experiments/search?max_results=1", host="mlflow:5000", login=True)[0] == 200
    assert (
        server.get("/api/2.0/mlflow/experiments/search?max_results=1", host="evil.example:5000", login=True)[0] == 403
    )


@pytest.mark.slow  # test_sweeps.py's Ctrl-C test keeps run --resume-if-exists on a local Ray
def test_rayjob_entrypoint_run_twice_continues_the_sweep(tmp_path, capsys):
    """A lost head pod: KubeRay retries the RayJob (backoffLimit) on a new Ray cluster with the
    same entrypoint. Here: the rendered entrypoint on a real local Ray cluster (RAY_ADDRESS set,
    as in a KubeRay head), logging to the manifest's MLflow server with basic auth; killed
    midway, run again, it continues the same sweep. (Run after the end it trains nothing:
    test_sweeps.py, test_run_resume_if_exists_….)"""
    epochs = 6
    sweep = tmp_path / "sweep dir" / "small.yaml"  # a path with a space
    sweep.parent.mkdir()
    sweep.write_text(SMALL_GRID.format(epochs=epochs).replace("resources: {cpu: 1}", "resources: {cpu: 1, gpu: 1}"))
    _, job = render(capsys, sweep, "--image", "r/x:1")
    argv = shlex.split(job["spec"]["entrypoint"])
    mount = next(m["mountPath"] for m in pods(job)[0]["containers"][0]["volumeMounts"] if m["name"] == "sweep")
    server = MlflowFromManifest(tmp_path)
    cluster = LocalCluster(token_home(tmp_path))
    try:
        cluster.start_head(cpus=2)
        # The trials ask for a GPU (resources.gpu: 1); this CPU cluster has none: a CPU copy.
        local = {
            f"{mount}/sweep.yaml": str(_cpu_copy(sweep)),
            argv[argv.index("--storage-path") + 1]: str(tmp_path / "mnt sweeps"),
            argv[argv.index("--tracking-uri") + 1]: server.uri,
        }
        command = [local.get(a, a) for a in argv]
        assert command[0] == "resnet-sweep" and len(set(command) - set(argv)) == 3
        env = {
            "HOME": cluster.env["HOME"],
            "RAY_ADDRESS": cluster.address,
            "MLFLOW_TRACKING_USERNAME": server.USER,
            "MLFLOW_TRACKING_PASSWORD": server.PASSWORD,
        }
        from tests.support import kill_when_midway

        seen, done = kill_when_midway(*command[1:], cwd=tmp_path, epochs=epochs, env=env)
        assert done, seen
        out = cli(*command[1:], cwd=tmp_path, env=env)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "small is already in" in out.stdout and len(table_rows(out.stdout)) == 4
        assert sorted(p.name for p in (tmp_path / "mnt sweeps").iterdir()) == ["small"]
    finally:
        cluster.shutdown()
    try:
        client = MlflowClient(server.uri)
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = server.USER, server.PASSWORD
        parents, children = child_runs(client, "small")
        assert len(parents) == 1 and len(children) == 4  # no duplicate runs
        assert all(c.data.tags["status"] == "completed" for c in children)
    finally:
        os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
        os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)
        server.stop()


def _cpu_copy(sweep: Path) -> Path:
    copy = sweep.with_name("small-cpu.yaml")
    copy.write_text(sweep.read_text().replace("resources: {cpu: 1, gpu: 1}", "resources: {cpu: 1}"))
    return copy
