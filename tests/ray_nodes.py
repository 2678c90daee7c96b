"""Real multi-node Ray clusters on this machine for tests: each node is its own `ray start
--block` process (the default way for our Ray: token auth on, from the token in $HOME/.ray).

Nodes are stopped by killing their own process group, never with `ray stop` (which would stop
every Ray process on the machine)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayNode:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats", *args],
            env=env,
            stdout=open(log, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        """The node dies at once (its raylet, object store and workers), like a lost machine."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


class LocalCluster:
    """A head and any number of worker nodes, all on 127.0.0.1, each with ``cpus`` CPUs."""

    def __init__(self, home: Path) -> None:
        self.env = {**os.environ, "HOME": str(home)}
        self.env.pop("RAY_ADDRESS", None)
        # Unix socket paths must stay short: a temp dir of its own under /tmp.
        self.temp_dir = tempfile.mkdtemp(prefix="rsw", dir="/tmp")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.client_address = f"ray://127.0.0.1:{free_port()}"  # Ray Client, on the head
        self.nodes: list[RayNode] = []
        self.logs = Path(self.temp_dir)

    def start_head(self, cpus: int = 1) -> RayNode:
        args = [
            "--head",
            "--port",
            str(self.port),
            "--num-cpus",
            str(cpus),
            "--temp-dir",
            self.temp_dir,
            "--include-dashboard=false",
            "--ray-client-server-port",
            self.client_address.rsplit(":", 1)[1],
        ]
        return self._start(args, "head")

    def add_worker(self, cpus: int = 1, env: dict[str, str] | None = None) -> RayNode:
        # `ray start --address` turns token auth on only when told to (Ray 2.60), as the Ray
        # docs have every joining node do.
        env = {"RAY_AUTH_MODE": "token", **(env or {})}
        return self._start(["--address", self.address, "--num-cpus", str(cpus)], f"worker{len(self.nodes)}", env)

    def _start(self, args: list[str], label: str, env: dict[str, str] | None = None) -> RayNode:
        before = self.node_ids()
        node = RayNode(args, {**self.env, **(env or {})}, self.logs / f"{label}.out")
        self.nodes.append(node)
        deadline = time.time() + 90
        while True:  # until the node is registered and alive
            if node.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray node {label} did not start: {node.log.read_text()[-2000:]}")
            if "Ray runtime started" in node.log.read_text() and len(self.node_ids()) > len(before):
                break
            time.sleep(1)
        node.node_id = next(iter(self.node_ids() - before))
        return node

    def node_ids(self) -> set[str]:
        """Alive node ids, asked of the cluster by a separate `ray list nodes`-like process."""
        if not self.nodes:
            return set()
        code = (
            f"import ray, json; ray.init(address={self.address!r}, logging_level='ERROR', log_to_driver=False); "
            "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))"
        )
        try:
            out = subprocess.run(
                [sys.executable, "-c", code],
                env={**self.env, "RAY_AUTH_MODE": "token"},
                capture_output=True,
                text=True,
                timeout=60,
            )
        except subprocess.TimeoutExpired:
            return set()
        if out.returncode != 0:
            return set()
        import json

        return set(json.loads(out.stdout.strip().splitlines()[-1]))

    def shutdown(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def token_home(root: Path) -> Path:
    """A $HOME with a Ray auth token, as `ray get-auth-token --generate` makes it."""
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [RAY, "get-auth-token", "--generate"],
        env={**os.environ, "HOME": str(home)},
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert (home / ".ray" / "auth_token").is_file()
    return home
