"""The report's "Environment" section: how the sweep was made, read back from the record on its
parent run (environment.json, written by orchestrator.running.environment): the commit and
whether the tree was dirty, the versions that matter, and each node's devices, as one small
table. A sweep run before the record existed has none, and the section says so in one line."""

from __future__ import annotations

import json

from orchestrator.report.document import Report, Table
from orchestrator.tracking.records import _artifact_text

__all__ = ["DIFF_FILE", "ENVIRONMENT_FILE", "FREEZE_FILE", "add_environment", "environment_rows", "read_environment"]

ENVIRONMENT_FILE = "environment.json"  # the record, on the sweep's parent run
DIFF_FILE = "git-diff.patch"  # beside it when the tree was dirty
FREEZE_FILE = "pip-freeze.txt"  # beside it: every installed distribution
VERSIONS = (("Ray", "ray"), ("MLflow", "mlflow"), ("Optuna", "optuna"))
GIB = 2**30


def read_environment(client, run_id: str) -> dict | None:
    """The environment record of the run (the sweep's parent), or None when it has none."""
    text = _artifact_text(client, run_id, ENVIRONMENT_FILE)
    return None if text is None else json.loads(text)


def _cudnn(version: int) -> str:
    """torch's cuDNN number as cuDNN writes it: 90100 → 9.1.0 (from 9 on), 8902 → 8.9.2."""
    major, rest = divmod(version, 10000 if version >= 90000 else 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def _memory(size: int | None) -> str:
    return "? GiB" if size is None else f"{size / GIB:.1f} GiB"


def _devices(node: dict) -> str:
    """A node's CPUs, memory and GPUs (alike GPUs counted once), or why it is not known."""
    if node.get("error"):
        return node["error"]
    gpus: dict[str, int] = {}
    for gpu in node.get("gpus") or []:
        driver = f", driver {gpu['driver']}" if gpu.get("driver") else ""
        name = f"{gpu.get('name')} ({_memory(gpu.get('memory_bytes'))}{driver})"
        gpus[name] = gpus.get(name, 0) + 1
    cpu = f"{node.get('cpus') or '?'} × {node.get('cpu_model') or 'CPU'}, {_memory(node.get('memory_bytes'))}"
    return "; ".join([cpu, *(f"{n} × {name}" for name, n in gpus.items())] if gpus else [cpu, "no GPU"])


def environment_rows(record: dict) -> list[list[str]]:
    """The record as rows of (what, value): the commit, Python, torch with its CUDA and cuDNN,
    Ray, MLflow, Optuna, and one row per node."""
    git = record.get("git") or {}
    if git.get("commit"):
        commit = f"{git['commit'][:12]}" + (f" ({git['branch']})" if git.get("branch") else "")
        if git.get("dirty"):
            commit += f", dirty: the diff is {git.get('diff') or DIFF_FILE} on the parent run"
    else:
        commit = "not a git checkout (an installed package)"
    packages = record.get("packages") or {}
    cuda = record.get("cuda")
    cudnn = record.get("cudnn")
    build = f"built with CUDA {cuda}" + (f", cuDNN {_cudnn(cudnn)}" if cudnn else "") if cuda else "a CPU build"
    rows = [
        ["Commit", commit],
        ["resnet-sweep", str(packages.get("resnet-sweep"))],
        ["Python", f"{record.get('python')} ({record.get('platform')})"],
        ["torch", f"{packages.get('torch')} ({build})"],
        *([label, str(packages.get(name))] for label, name in VERSIONS),
    ]
    for node in record.get("nodes") or []:
        where = node.get("hostname") or (node.get("node_id") or "?")[:8]
        rows.append([f"Node {where}" + (f" ({node['ip']})" if node.get("ip") else ""), _devices(node)])
    return rows


def add_environment(report: Report, record: dict | None, tables: dict) -> None:
    """How the sweep was made (``record``: read_environment's), or one line saying it is not known."""
    report.h2("Environment")
    if record is None:
        report.p(
            f"The sweep's parent run has no {ENVIRONMENT_FILE}: it was run by a version of resnet-sweep "
            f"that did not record its environment."
        )
        return
    table = Table(
        "environment",
        ["What", "Version or devices"],
        environment_rows(record),
        f"How the sweep was made ({ENVIRONMENT_FILE} on its parent run, beside {FREEZE_FILE}: every installed "
        f"distribution).",
    )
    report.add(table)
    tables["environment"] = table
