"""Load: 64 trials × 20 epochs of a tiny model logging to the default SQLite store. Every
report reaches MLflow (no "database is locked"), and the driver's memory stays flat."""

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from resnet_core import metrics as M
from tests.support import assert_mlflow_equals_tune

TRIALS, EPOCHS = 64, 20
LOAD = f"""\
name: load
dataset: {{name: digits, image_size: 8, train_limit: 64}}
model: {{arch: cifar, depth: 8, block: basic, shortcut: A}}
train: {{epochs: {EPOCHS}, batch_size: 64}}
search:
  algorithm: grid
  seeds: {list(range(TRIALS))}
resources: {{cpu: 1}}
"""


@pytest.mark.slow
def test_64_trials_of_20_epochs_on_sqlite_lose_nothing_and_the_driver_stays_flat(tmp_path):
    (tmp_path / "load.yaml").write_text(LOAD)
    exe = Path(sys.executable).parent / "resnet-sweep"
    start = time.monotonic()
    proc = subprocess.Popen(
        [str(exe), "run", "load.yaml"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    samples, done = [], [0]

    def sample() -> None:  # the driver's resident memory against the trials finished so far
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                rss = next(line for line in status.read_text().splitlines() if line.startswith("VmRSS:"))
            except (OSError, StopIteration):
                return
            samples.append((done[0], int(rss.split()[1]) * 1024))
            time.sleep(0.5)

    threading.Thread(target=sample, daemon=True).start()
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if m := re.search(r"\((\d+) done", line):
            done[0] = int(m.group(1))
    proc.wait(timeout=60)
    wall = time.monotonic() - start
    text = "".join(lines)
    assert proc.returncode == 0, text[-4000:]
    assert "database is locked" not in text and "MLflow write failed" not in text

    points = assert_mlflow_equals_tune(
        MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), "load", tmp_path / "ray_results" / "load", EPOCHS
    )
    assert points == TRIALS * EPOCHS * len(M.METRICS)

    # Memory after the first 16 trials against the end: the growth per trial must stay small
    # (Tune keeps each trial's last result; nothing of ours may keep more than that).
    # (The end, after the last trial, loads every trial's history for the final table: apart.)
    after16 = max(rss for n, rss in samples if n <= 16)
    last = max(rss for n, rss in samples if n < TRIALS)
    per_trial = (last - after16) / (TRIALS - 1 - 16)
    print(
        f"\nload: {TRIALS} trials x {EPOCHS} epochs in {wall:.0f} s; {points} metric points in MLflow, 0 lost, "
        f"0 duplicate runs; driver RSS {after16 / 2**20:.0f} MiB after 16 trials, {last / 2**20:.0f} MiB before the "
        f"last ends ({per_trial / 2**10:.0f} KiB per later trial), {max(r for _, r in samples) / 2**20:.0f} MiB peak"
    )
    curve = {n: rss // 2**20 for n, rss in samples}  # MiB after n trials (the last sample of each n)
    print("driver RSS (MiB) by trials done:", {n: curve[n] for n in sorted(curve) if n % 8 == 0 or n == TRIALS})
    assert per_trial < 2 * 2**20, curve
