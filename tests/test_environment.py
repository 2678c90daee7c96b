"""How a run was made: the environment record of a sweep's parent run (versions, the git state of
the source, the installed distributions, each node's devices) and the report's section made
from it."""

from __future__ import annotations

import json
import os
import subprocess
from importlib import metadata

import pytest
import torch

from orchestrator.report.document import Report
from orchestrator.report.environment import add_environment
from orchestrator.running import environment as env

NODE_KEYS = {"node_id", "ip", "hostname", "cpu_model", "cpus", "memory_bytes", "gpus", "error"}


def _git(repo, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A tiny git checkout with one commit on branch main."""
    folder = tmp_path / "repo"
    folder.mkdir()
    _git(folder, "init", "-q", "-b", "main")
    (folder / "train.py").write_text("lr = 0.1\n")
    _git(folder, "add", "train.py")
    _git(folder, "commit", "-q", "-m", "first")
    return folder


def _check_node(node: dict) -> None:
    assert set(node) == NODE_KEYS
    assert node["error"] is None
    assert isinstance(node["hostname"], str) and node["cpus"] >= 1 and node["memory_bytes"] > 2**20
    for gpu in node["gpus"]:
        assert set(gpu) == {"name", "memory_bytes", "driver"}
        assert isinstance(gpu["name"], str) and gpu["memory_bytes"] > 0


@pytest.mark.unit
def test_the_record_of_this_machine_has_its_keys_and_types(repo):
    record = env.environment_record(cluster=False, source=repo)
    assert json.loads(json.dumps(record)) == record  # one JSON document
    assert set(record) == {"format", "python", "platform", "packages", "cuda", "cudnn", "git", "nodes"}
    assert record["packages"] == {name: metadata.version(name) for name in env.PACKAGES}
    assert record["cuda"] == torch.version.cuda
    assert record["cudnn"] is None or isinstance(record["cudnn"], int)
    assert record["git"] == {"commit": _git(repo, "rev-parse", "HEAD"), "branch": "main", "dirty": False, "diff": None}
    [node] = record["nodes"]  # this machine, with no Ray started
    assert node["node_id"] is None
    _check_node(node)
    if not torch.cuda.is_available():
        assert node["gpus"] == []


@pytest.mark.unit
def test_a_dirty_tree_is_recorded_with_its_diff_and_an_installed_package_has_no_git(repo, tmp_path):
    tags, artifacts = env.parent_run_environment(cluster=False, source=repo)
    assert tags[env.TAG_DIRTY] == "false" and set(artifacts) == {"environment.json", "pip-freeze.txt"}
    assert tags["mlflow.source.git.commit"] == _git(repo, "rev-parse", "HEAD")
    (repo / "notes.txt").write_text("untracked: not part of the diff\n")
    assert env.git_state(repo)["dirty"] is False

    (repo / "train.py").write_text("lr = 0.2\n")
    tags, artifacts = env.parent_run_environment(cluster=False, source=repo)
    assert tags[env.TAG_DIRTY] == "true"
    assert json.loads(artifacts["environment.json"])["git"]["diff"] == "git-diff.patch"
    patch = artifacts["git-diff.patch"]
    assert "-lr = 0.1" in patch and "+lr = 0.2" in patch and "notes.txt" not in patch

    # Not the top of a checkout (a package installed inside someone's repository): no git state.
    (repo / "site-packages").mkdir()
    assert env.git_state(repo / "site-packages") == {"commit": None, "branch": None, "dirty": None}
    tags, artifacts = env.parent_run_environment(cluster=False, source=tmp_path)
    assert not {env.TAG_DIRTY, env.TAG_COMMIT} & set(tags) and "git-diff.patch" not in artifacts


@pytest.mark.unit
def test_a_big_diff_is_cut_and_says_so(repo, monkeypatch):
    monkeypatch.setattr(env, "DIFF_LIMIT", 300)
    (repo / "train.py").write_text("".join(f"lr{i} = {i}\n" for i in range(200)))
    patch = env.git_diff(repo)
    head, cut = patch.rstrip("\n").rsplit("\n", 1)
    assert len(head.encode()) <= 300 and "+lr" in head and cut.startswith("# … cut: the diff is longer than 300 bytes")


@pytest.mark.unit
def test_the_diff_hides_secret_named_environment_values_and_uri_passwords(repo, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-secret")
    (repo / "train.py").write_text('key = "wJalrXUtnFEMI-secret"\nuri = "postgresql://bob:db-pw-77@db:5432/x"\n')
    patch = env.git_diff(repo)
    assert "wJalrXUtnFEMI" not in patch and "db-pw-77" not in patch
    assert '+key = "***"' in patch and "postgresql://bob:***@db:5432/x" in patch


@pytest.mark.unit
def test_pip_freeze_lists_each_installed_distribution_once_sorted():
    lines = env.pip_freeze().splitlines()
    names = [line.split("==")[0].lower().replace("_", "-") for line in lines]
    assert names == sorted(set(names))
    assert (
        f"torch=={metadata.version('torch')}" in lines and f"resnet-sweep=={metadata.version('resnet-sweep')}" in lines
    )


RECORD = {
    "format": 1,
    "python": "3.11.7",
    "platform": "Linux-6.8-x86_64",
    "packages": {"torch": "2.14.1", "ray": "2.60.0", "mlflow": "3.17.2", "optuna": "5.1.0", "resnet-sweep": "0.1.0"},
    "cuda": "12.8",
    "cudnn": 90100,
    "git": {"commit": "0123456789abcdef0123", "branch": "main", "dirty": True, "diff": "git-diff.patch"},
    "nodes": [
        {
            "node_id": "a1b2c3d4e5",
            "ip": "10.0.0.1",
            "hostname": "gpu-1",
            "cpu_model": "AMD EPYC 9654",
            "cpus": 16,
            "memory_bytes": 128 * 2**30,
            "gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_bytes": 80 * 2**30, "driver": "550.54.15"}] * 2,
            "error": None,
        },
        {
            "node_id": "f6e5d4c3b2",
            "ip": "10.0.0.2",
            "hostname": "cpu-1",
            "cpu_model": None,
            "cpus": None,
            "memory_bytes": None,
            "gpus": [],
            "error": "did not answer in 10 s (GetTimeoutError)",
        },
    ],
}


@pytest.mark.unit
def test_the_reports_environment_section_from_a_record_and_without_one():
    report, tables = Report("t"), {}
    add_environment(report, RECORD, tables)
    markdown = report.markdown()
    for line in (
        "| Commit | 0123456789ab (main), dirty: the diff is git-diff.patch on the parent run |",
        "| torch | 2.14.1 (built with CUDA 12.8, cuDNN 9.1.0) |",
        "| Optuna | 5.1.0 |",
        "| Node gpu-1 (10.0.0.1) | 16 × AMD EPYC 9654, 128.0 GiB; 2 × NVIDIA H100 80GB HBM3 (80.0 GiB, driver 550.54.15) |",
        "| Node cpu-1 (10.0.0.2) | did not answer in 10 s (GetTimeoutError) |",
    ):
        assert line in markdown
    assert "environment" in tables and "Node gpu-1 (10.0.0.1)" in tables["environment"].csv_text()

    report, tables = Report("t"), {}
    add_environment(report, None, tables)
    assert report.blocks == [
        ("h2", "Environment"),
        (
            "p",
            "The sweep's parent run has no environment.json: it was run by a version of resnet-sweep that did not "
            "record its environment.",
        ),
    ]
    assert tables == {}


def test_every_ray_node_answers_and_one_that_does_not_is_recorded(monkeypatch, ray_tmpdir):
    """A zero-CPU task pinned to each alive node (here the one local node) finds what this process
    finds on it; given no time to answer, the node is recorded as silent and nothing waits."""
    import ray

    ray.init(num_cpus=1, include_dashboard=False, _temp_dir=str(ray_tmpdir), logging_level="ERROR", log_to_driver=False)
    try:
        node_id = ray.get_runtime_context().get_node_id()
        with monkeypatch.context() as m:
            m.setattr(env, "NODE_TIMEOUT_S", 0)
            [silent] = env.environment_record(cluster=True)["nodes"]
        assert silent["node_id"] == node_id and silent["gpus"] == []
        assert silent["error"].startswith("did not answer in 0 s")
        [node] = env.environment_record(cluster=True)["nodes"]
        assert node["node_id"] == node_id and node["ip"] == ray.util.get_node_ip_address()
        _check_node(node)
        [here] = env.environment_record(cluster=False)["nodes"]
        assert here == {**node, "ip": None}
    finally:
        ray.shutdown()


@pytest.mark.unit
def test_gpus_and_driver_are_read_from_nvidia_smi(tmp_path, monkeypatch):
    """nvidia-smi's CSV as an H100 node's driver prints it (no GPU on the test machines)."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'test "$*" = "--query-gpu=name,memory.total,driver_version --format=csv,noheader,nounits" || exit 9\n'
        "printf 'NVIDIA H100 80GB HBM3, 81559, 550.54.15\\nNVIDIA H100 80GB HBM3, 81559, 550.54.15\\n'\n"
    )
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    gpu = {"name": "NVIDIA H100 80GB HBM3", "memory_bytes": 81559 * 2**20, "driver": "550.54.15"}
    assert env.node_devices()["gpus"] == [gpu, gpu]
    tags, _ = env.parent_run_environment(cluster=False, source=tmp_path)
    assert tags["resnet_sweep.env.gpu"] == "2 x NVIDIA H100 80GB HBM3"
