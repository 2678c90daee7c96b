"""A crash while a file is written into a local storage folder leaves the old file whole, and
a Tune state file cut short (a folder from before, or a partial copy) is named on resume."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.persistence.whole_files import remove_unfinished
from tests.support import SMALL_GRID, cli

# Copies A, then B, then A … onto one file, as Tune copies its state into the storage folder.
WRITER = """
import sys, pyarrow.fs
from orchestrator.persistence import storage
a, b, target = sys.argv[1:]
fs = storage.tune_filesystem(target)
for k in range(10**6):
    pyarrow.fs.copy_files(a if k % 2 else b, target, destination_filesystem=fs)
    print(k, flush=True)
"""


def test_a_writer_killed_midway_leaves_a_whole_file(tmp_path):
    folder = tmp_path / "storage with spaces"
    folder.mkdir()
    a, b = os.urandom(32 << 20), os.urandom(32 << 20)
    (tmp_path / "a").write_bytes(a)
    (tmp_path / "b").write_bytes(b)
    target = folder / "experiment_state.json"
    target.write_bytes(a)
    for copies, pause in ((1, 0.002), (2, 0.005), (3, 0.01), (4, 0.02), (5, 0.0)):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path / "a"), str(tmp_path / "b"), str(target)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(copies):
            proc.stdout.readline()
        time.sleep(pause)  # into the next copy (one takes some 20-50 ms)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert target.read_bytes() in (a, b), f"cut short: {target.stat().st_size} bytes"
        assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    left = sorted(p.name for p in folder.iterdir() if p.name != target.name)
    assert all(n.startswith(".experiment_state.json.") and n.endswith(".part") for n in left), left
    assert remove_unfinished(str(tmp_path)) == len(left)
    assert [p.name for p in folder.iterdir()] == [target.name]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.slow  # a writer killed midway is checked in the default suite
def test_resume_names_a_tune_state_file_cut_short(tmp_path):
    (tmp_path / "small.yaml").write_text(SMALL_GRID.format(epochs=1) + "max_concurrent: 1\n")
    first = cli("run", "small.yaml", "--no-report", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    sweep = tmp_path / "ray_results" / "small"
    state = max(sweep.glob("basic-variant-state-*.json"))
    state.write_bytes(state.read_bytes()[:100])  # as pyarrow's copy left it when killed midway

    out = cli("resume", sweep, cwd=Path("/"))
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and state.name in lines[0] and "cut short (100 bytes)" in lines[0], out.stderr
    assert "Traceback" not in out.stdout + out.stderr
