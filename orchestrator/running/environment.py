"""How a sweep was made, recorded on its parent MLflow run: the versions of Python and of the
packages that train and track it, torch's CUDA and cuDNN, the git state of the project's source
(commit, branch, dirty, the diff), the installed distributions, and each Ray node's CPU, memory
and GPUs. One JSON document with stable keys (environment.json), so two sweeps' records can be
set side by side; `report` shows it (orchestrator.report.environment).

Environment variables are never recorded (they hold logins and tokens), nor is the tracking URI."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
from importlib import metadata
from pathlib import Path

from orchestrator.report.environment import DIFF_FILE, ENVIRONMENT_FILE, FREEZE_FILE

__all__ = [
    "DIFF_LIMIT",
    "environment_record",
    "git_diff",
    "git_state",
    "node_devices",
    "parent_run_environment",
    "pip_freeze",
]

FORMAT = 1  # environment.json's layout; a change of keys is a new number
PACKAGES = ("torch", "torchvision", "ray", "mlflow", "optuna", "numpy", "resnet-sweep")
SOURCE = Path(__file__).resolve().parents[2]  # the folder holding orchestrator/ (a checkout, or site-packages)
NODE_TIMEOUT_S = 10  # a node that has not answered by then is recorded as such; the sweep goes on
GIT_TIMEOUT_S = 10
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/kfd")  # NVIDIA's driver, AMD's ROCm
DIFF_LIMIT = 1_000_000  # bytes of git-diff.patch; a bigger diff is cut, and says so
MIN_SECRET_CHARS = 6  # shorter values of secret-named variables are not searched for ("1", "true")
URI_PASSWORD = re.compile(r"(://[^/\s:@]+:)[^/\s@]+@")  # scheme://user:PASSWORD@
TAG_PREFIX = "resnet_sweep.env."
TAG_DIRTY = "resnet_sweep.git.dirty"
TAG_COMMIT = "mlflow.source.git.commit"


# --- git ----------------------------------------------------------------------------------------------
def _git(folder: Path, *args: str) -> str | None:
    """git's output in ``folder``, or None when git is missing or fails. No optional locks: a sweep
    started while the user commits must not take the index lock from them."""
    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state(folder: Path) -> dict:
    """The commit, branch and dirtiness (tracked files differing from HEAD) of the git checkout
    whose top is ``folder``; all None when ``folder`` is not the top of one (an installed package,
    even inside someone else's repository)."""
    state = {"commit": None, "branch": None, "dirty": None}
    top = _git(folder, "rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != folder.resolve():
        return state
    status = _git(folder, "status", "--porcelain=v2", "--branch", "--untracked-files=no")
    if status is None:
        return state
    changes = False
    for line in status.splitlines():
        if line.startswith("# branch.oid ") and line.split()[2] != "(initial)":
            state["commit"] = line.split()[2]
        elif line.startswith("# branch.head ") and line.split()[2] != "(detached)":
            state["branch"] = line.split(" ", 2)[2]
        elif not line.startswith("#"):
            changes = True
    state["dirty"] = changes
    return state


def git_diff(folder: Path) -> str:
    """The diff of the tracked files of ``folder``'s checkout against HEAD, cut at DIFF_LIMIT bytes
    (read no further: a changed data file can make it huge), with any credential this process
    holds replaced."""
    from orchestrator.tracking.mlflow_store import redact

    try:
        proc = subprocess.Popen(
            ["git", "--no-optional-locks", "-C", str(folder), "diff", "--no-color", "--no-ext-diff", "HEAD", "--"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
    except OSError:
        return ""
    with proc:
        data = proc.stdout.read(DIFF_LIMIT + 1)
        proc.kill()
    if len(data) > DIFF_LIMIT:
        data = data[: data.rfind(b"\n", 0, DIFF_LIMIT) + 1]
        data += f"# … cut: the diff is longer than {DIFF_LIMIT:,} bytes; the lines above are its start\n".encode()
    return _without_secrets(redact(data.decode("utf-8", errors="replace")))


def _without_secrets(diff: str) -> str:
    """The diff with what looks like a secret replaced: the values of this process's environment
    variables named like one (AWS_SECRET_ACCESS_KEY, *_TOKEN, *_PASSWORD) and the password of
    any URI (scheme://user:PASSWORD@host): a changed file may hold either."""
    from orchestrator.tracking.mlflow_store import SECRET_PARAM

    for name, value in os.environ.items():
        if SECRET_PARAM.search(name) and len(value) >= MIN_SECRET_CHARS:
            diff = diff.replace(value, "***")
    return URI_PASSWORD.sub(r"\1***@", diff)


# --- this process and its machine ----------------------------------------------------------------------
def pip_freeze() -> str:
    """The installed distributions as `name==version` lines, sorted by name (pip freeze's content,
    read from the installed metadata without a pip process). The first of a name on sys.path wins,
    as for imports."""
    seen: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            seen.setdefault(name.lower().replace("_", "-"), f"{name}=={dist.version}")
    return "".join(f"{seen[key]}\n" for key in sorted(seen))


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gpus() -> list[dict]:
    """This machine's GPUs: nvidia-smi's list when it is there (all GPUs, whatever
    CUDA_VISIBLE_DEVICES says, with the driver, and without importing torch or starting CUDA);
    else, where a GPU driver's device file is (ROCm, or no nvidia-smi on the PATH), torch's,
    without a driver version. A machine with neither has none (and imports no torch: seconds
    on each CPU node)."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=NODE_TIMEOUT_S,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return []  # no driver loaded: no usable GPU
        gpus = []
        for line in out.splitlines():
            name, memory, driver = (part.strip() for part in line.rsplit(",", 2))
            gpus.append({"name": name, "memory_bytes": int(memory) * 2**20, "driver": driver})
        return gpus
    if not any(Path(device).exists() for device in GPU_DEVICE_FILES):
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    return [
        {"name": props.name, "memory_bytes": props.total_memory, "driver": None}
        for props in map(torch.cuda.get_device_properties, range(torch.cuda.device_count()))
    ]


def node_devices() -> dict:
    """The machine this runs on: host name, CPU model and count, memory and GPUs (run on each
    Ray node by environment_record)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "hostname": socket.gethostname(),
        "cpu_model": _cpu_model(),
        "cpus": cpus,
        "memory_bytes": _memory_bytes(),
        "gpus": _gpus(),
    }


def _nodes(cluster: bool) -> list[dict]:
    """One entry per alive Ray node: its id and address and what node_devices found there. On a
    cluster a zero-CPU task pinned to each node asks it (all at once, one deadline: a node that
    does not answer is recorded with its error, and the sweep goes on); on this machine, this
    process asks."""
    import ray

    if not cluster:
        node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        return [{"node_id": node_id, "ip": None, **node_devices(), "error": None}]
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(node_devices)
    alive = [n for n in ray.nodes() if n.get("Alive")]
    refs = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
        for n in alive
    ]
    ray.wait(refs, num_returns=len(refs), timeout=NODE_TIMEOUT_S)
    nodes = []
    for node, ref in zip(alive, refs):
        entry = {"node_id": node["NodeID"], "ip": node.get("NodeManagerAddress")}
        try:
            entry.update(ray.get(ref, timeout=0), error=None)
        except Exception as err:
            with contextlib.suppress(Exception):  # a task on a node that is gone
                ray.cancel(ref, force=True)
            entry.update(
                hostname=node.get("NodeManagerHostname"),
                cpu_model=None,
                cpus=None,
                memory_bytes=None,
                gpus=[],
                error=f"did not answer in {NODE_TIMEOUT_S} s ({type(err).__name__})",
            )
        nodes.append(entry)
    return nodes


def environment_record(*, cluster: bool, source: Path = SOURCE) -> dict:
    """How this sweep is made, as one JSON-able dict with stable keys: Python, the platform, the
    versions of PACKAGES, torch's CUDA and cuDNN builds, the git state of ``source`` (the
    project's checkout; all None for an installed package) and the Ray nodes (``cluster``: every
    alive node of the cluster Ray is attached to; else this machine alone)."""
    import torch

    git = git_state(source)
    return {
        "format": FORMAT,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "git": {**git, "diff": DIFF_FILE if git["dirty"] else None},
        "nodes": _nodes(cluster),
    }


def _gpu_summary(nodes: list[dict]) -> str:
    """The GPUs of the first node that has any, e.g. "8 x NVIDIA H100 80GB HBM3"; "none"."""
    for node in nodes:
        names = [gpu["name"] for gpu in node["gpus"]]
        if names:
            return ", ".join(f"{names.count(n)} x {n}" for n in dict.fromkeys(names))
    return "none"


def parent_run_environment(*, cluster: bool, source: Path = SOURCE) -> tuple[dict[str, str], dict[str, str]]:
    """The sweep's parent run's part of how it was made: (tags, artifacts as file name → text).
    The artifacts are environment.json (environment_record), pip-freeze.txt and, when the tree is
    dirty, git-diff.patch; the tags are a few of the record's values, to search runs by in
    MLflow's UI, and the commit as MLflow's mlflow.source.git.commit."""
    record = environment_record(cluster=cluster, source=source)
    artifacts = {ENVIRONMENT_FILE: json.dumps(record, indent=2) + "\n", FREEZE_FILE: pip_freeze()}
    if record["git"]["dirty"]:
        artifacts[DIFF_FILE] = git_diff(source)
    tags = {
        f"{TAG_PREFIX}python": record["python"],
        f"{TAG_PREFIX}torch": record["packages"]["torch"] or "none",
        f"{TAG_PREFIX}cuda": record["cuda"] or "none",
        f"{TAG_PREFIX}ray": record["packages"]["ray"] or "none",
        f"{TAG_PREFIX}gpu": _gpu_summary(record["nodes"]),
    }
    if record["git"]["commit"]:  # MLflow's own tag: its UI shows it as the run's source version
        tags[TAG_COMMIT] = record["git"]["commit"]
    if record["git"]["dirty"] is not None:
        tags[TAG_DIRTY] = str(record["git"]["dirty"]).lower()
    return tags, artifacts
