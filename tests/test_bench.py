"""The benchmarks run (their --smoke-test sizes), from any folder, and write their tables.
They measure nothing here: speed belongs in the benchmarks' own runs, never in a timed test."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def bench(name: str, tmp_path: Path, timeout: float = 300) -> str:
    out = tmp_path / "tables with spaces.md"
    proc = subprocess.run(
        [sys.executable, str(BENCH), name, "--smoke-test", "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = out.read_text()
    assert table.startswith("#### ") and f"`python bench {name} --smoke-test --out " in table
    return table


def test_trainer_bench_compares_every_row_with_the_conventional_pipeline(tmp_path):
    table = bench("trainer", tmp_path)
    rows = [line for line in table.splitlines() if line.startswith("| ResNet-8 ")]
    assert [r.split(" | ")[1] for r in rows] == ["conventional", "bare", "ours off", "ours fused-sgd"]
    assert rows[0].split(" | ")[4] == "1.00x" and rows[1].split(" | ")[5] == "1.00x"
    assert "(default)" in rows[3]  # CPU defaults: fp32 with fused SGD


@pytest.mark.slow  # the trainer bench keeps the default suite's check that benches run
def test_packing_bench_runs_k_processes(tmp_path):
    table = bench("packing", tmp_path)
    assert "| 1 |" in table and "| 2 |" in table and "1.00x" in table


@pytest.mark.slow  # the trainer bench keeps the default suite's check that benches run
def test_arrays_bench_compares_arrays_with_one_trial_and_processes(tmp_path):
    rows = [line for line in bench("arrays", tmp_path).splitlines() if line.startswith("| ResNet-8 ")]
    assert [r.split(" | ")[1] for r in rows] == ["1", "2"]
    assert rows[0].split(" | ")[5] == "–" and rows[1].split(" | ")[5] != "–"  # processes only for K=2


@pytest.mark.slow  # the trainer bench keeps the default suite's check that benches run
def test_loader_bench_compares_the_streaming_loader_with_the_conventional_pipeline(tmp_path):
    table = bench("loader", tmp_path)
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith(("| ours ", "| conventional "))]
    assert [(r[0], r[1]) for r in rows] == [
        ("| ours", "0"),
        ("| conventional", "0"),
        ("| ours", "1"),
        ("| conventional", "1"),
    ]
    assert all(r[4] == "1.00x |" for r in rows[1::2])


@pytest.mark.slow  # the trainer bench keeps the default suite's check that benches run
def test_ui_bench_starts_the_ui_both_ways(tmp_path):
    rows = [line.split(" | ") for line in bench("ui", tmp_path).splitlines() if line.startswith("| ")][1:]
    assert [r[0] for r in rows] == ["| ours (job runner off)", "| MLflow's default (job runner on)"]
    assert int(rows[0][2]) < int(rows[1][2])  # fewer processes: the runner is off
    assert rows[1][5] == "1.00x |"


@pytest.mark.parametrize("name", ["nonsense", ""])
def test_an_unknown_bench_lists_them_all(tmp_path, name):
    proc = subprocess.run(
        [sys.executable, str(BENCH), *([name] if name else [])], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 2
    for known in ("trainer", "packing", "orchestration", "asha", "arrays", "loader", "ui"):
        assert f"python bench {known}" in proc.stderr
