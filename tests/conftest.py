import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SWEEPS = REPO / "sweeps"

# Tests keep torch to one thread per process: two cores are shared with Ray workers.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def cli(*args: str, cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed `resnet-sweep` command as a user would."""
    exe = Path(sys.executable).parent / "resnet-sweep"
    return subprocess.run(
        [str(exe), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory (where a user would run the commands)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
