"""`resnet-sweep ui` as it starts (MLflow's job runner off: the variable unset) against MLflow's
default (the runner on: `MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true`), alternated round by round on
one store, each mode first in every other round: seconds until /health answers, the processes of
the UI's session and their proportional memory (PSS: shared pages split among the processes
sharing them) 2 s later, and seconds from SIGTERM until every one of them has exited."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.table import emit, parse_with_smoke_test

MODES = {"ours (job runner off)": None, "MLflow's default (job runner on)": "true"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(root: int) -> list[int]:
    """The processes of the UI's session (it starts one of its own: its pid is the session's id)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[3]) == root:
                pids.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            pass
    return pids


def _proportional_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:  # ended meanwhile
            pass
    return total / 1024


def once(folder: Path, job_execution: str | None, timeout: float) -> tuple[float, int, float, float]:
    """One start and stop: (seconds to /health, processes, MiB proportional, seconds to stop)."""
    exe = Path(sys.executable).parent / "resnet-sweep"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"}
    if job_execution is not None:
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = job_execution
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(exe), "ui", "--port", str(port)],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"resnet-sweep ui exited with {proc.returncode}")
            if time.perf_counter() - start > timeout:
                raise SystemExit(f"resnet-sweep ui did not answer in {timeout:.0f} s")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.1)
        up = time.perf_counter() - start
        time.sleep(2)  # what it started right after answering is part of it too
        pids = _tree(proc.pid)
        memory = _proportional_mib(pids)
    finally:
        stopping = time.perf_counter()
        os.killpg(proc.pid, signal.SIGTERM)
        while _tree(proc.pid) and time.perf_counter() - stopping < 60:
            proc.poll()  # reaps the leader once it exits
            time.sleep(0.05)
        stopped = time.perf_counter() - stopping
        if _tree(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    return up, len(pids), memory, stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench ui", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="starts of each mode, alternated (default 4)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds a start may take before it fails")
    args = parse_with_smoke_test(parser, argv, {"rounds": 1})
    if args.rounds < 1:
        parser.error(f"--rounds: {args.rounds} must be at least 1")
    from mlflow import MlflowClient

    load_before = os.getloadavg()[0]
    runs: dict[str, list[tuple[float, int, float, float]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp:
        MlflowClient(f"sqlite:///{Path(tmp) / 'mlflow.db'}").search_experiments()  # the store it serves
        for i in range(args.rounds):
            for mode in list(MODES)[:: 1 if i % 2 == 0 else -1]:
                runs[mode].append(once(Path(tmp), MODES[mode], args.timeout))
                print(f"round {i + 1}/{args.rounds}  {mode}: {runs[mode][-1][0]:.2f} s to answer", flush=True)
    load_after = os.getloadavg()[0]

    def median(mode: str, k: int) -> float:
        return statistics.median(r[k] for r in runs[mode])

    ours, theirs = MODES
    rows = [
        (
            mode,
            f"{median(mode, 0):.2f}",
            f"{median(mode, 1):.0f}",
            f"{median(mode, 2):.0f}",
            f"{median(mode, 3):.2f}",
            f"{statistics.median(a[0] / b[0] for a, b in zip(runs[mode], runs[theirs], strict=True)):.2f}x",
        )
        for mode in (ours, theirs)
    ]
    title = (
        f"`resnet-sweep ui`, medians of {args.rounds} alternated starts ({os.cpu_count()} CPUs, load avg "
        f"{load_before:.2f} before / {load_after:.2f} after)"
    )
    columns = ("mode", "s to /health", "processes", "MiB (PSS)", "s to stop", "start vs default, pair by pair")
    emit(title, columns, rows, args.out, argv, "ui")
    return 0
