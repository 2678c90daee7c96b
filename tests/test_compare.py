"""`resnet-sweep compare A B`: trials of two sweeps matched by configuration (seeds pooled, the
fixed settings that differ listed once), each difference judged by the report's noise rule, the
document and its files, and the exit codes; the quickstart compared with itself from MLflow alone."""

from __future__ import annotations

import csv
import io
import re
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from orchestrator import cli as cli_main
from orchestrator.report import compare as C
from orchestrator.report.claims import ERROR_MARGIN
from orchestrator.tracking.records import SweepRecord, TrialRecord
from tests.support import SWEEPS, cli

QUICKSTART = (SWEEPS / "quickstart.yaml").read_text()
EVAL_IMAGES = 256


def _trial(
    depth: int, residual: bool, error: float, *, seed: int = 0, status: str = "completed", **more
) -> TrialRecord:
    config = {
        "dataset.name": "digits",
        "dataset.image_size": 16,
        "dataset.eval_limit": EVAL_IMAGES,
        "model.depth": depth,
        "model.residual": residual,
        "train.lr": 0.1,
        "train.seed": seed,
        **more,
    }
    history = [] if status == "running" else [{"epoch": e, "val_error": error, "test_error": error} for e in (1, 2)]
    return TrialRecord(f"run-{depth}-{residual}-{seed}", f"net{depth}-{residual}-s{seed}", status, config, history)


def _sweep(name: str, trials: list[TrialRecord], spec: str = QUICKSTART) -> SweepRecord:
    return SweepRecord(name, "quickstart", f"parent-{name}", "completed", spec, {"num_trials": len(trials)}, trials)


def _grid(error: float = 0.10, **more) -> list[TrialRecord]:
    return [_trial(d, r, error, **more) for d in (20, 32) for r in (True, False)]


def _verdicts(comparison: C.Comparison) -> dict[tuple, str]:
    return {tuple(c.values.values()): c.verdict for c in comparison.configurations}


@pytest.mark.unit
def test_a_sweep_against_itself_shows_no_difference():
    a = _sweep("quickstart", _grid())
    comparison = C.compare(a, a)
    assert comparison.keys == ["model.depth", "model.residual"]
    assert comparison.differences == []
    assert set(_verdicts(comparison).values()) == {C.SAME}
    assert (comparison.matched, comparison.count(C.WORSE)) == (4, 0)
    assert all(c.difference == 0 and c.noise > 0 for c in comparison.configurations)


@pytest.mark.unit
def test_a_fixed_setting_that_differs_is_listed_once_and_configurations_still_match():
    """B's 10× learning rate differs in every trial: one line of what differs, not every
    configuration B's alone; its far higher errors are beyond the noise of 256 test images."""
    comparison = C.compare(_sweep("quickstart", _grid(0.10)), _sweep("quickstart-2", _grid(0.45, **{"train.lr": 1.0})))
    assert comparison.keys == ["model.depth", "model.residual"]
    assert comparison.differences == [["train.lr", "0.1", "1"]]
    assert set(_verdicts(comparison).values()) == {C.WORSE}
    assert all(round(c.difference, 9) == 0.35 for c in comparison.configurations)
    better = C.compare(_sweep("x", _grid(0.45, **{"train.lr": 1.0})), _sweep("y", _grid(0.10)))
    assert set(_verdicts(better).values()) == {C.BETTER}


@pytest.mark.unit
def test_seeds_are_pooled_and_where_a_sweep_ran_is_not_compared():
    a = _sweep("a", [_trial(20, True, e, seed=s) for s, e in ((0, 0.10), (1, 0.12))])
    b = _sweep("b", [_trial(20, True, 0.11, seed=7, **{"dataset.root": "/elsewhere", "train.device": "cuda"})])
    comparison = C.compare(a, b)
    assert comparison.keys == [] and comparison.differences == []
    (only,) = comparison.configurations
    assert (len(only.a), len(only.b), only.verdict) == (2, 1, C.SAME)


@pytest.mark.unit
def test_the_noise_is_the_reports_rule():
    """Half a point, or twice the standard error: from the number of test images for one seed
    each, from the spread when seeds scatter more."""
    close = C.compare(_sweep("a", [_trial(20, True, 0.10)]), _sweep("b", [_trial(20, True, 0.12)]))
    (c,) = close.configurations
    assert c.verdict == C.SAME  # 2 points on 256 images is within noise
    assert c.noise == pytest.approx(2 * ((0.10 * 0.90 + 0.12 * 0.88) / EVAL_IMAGES) ** 0.5) and c.noise > ERROR_MARGIN
    scattered = [_trial(20, True, e, seed=s) for s, e in enumerate((0.05, 0.45))]
    (c,) = C.compare(_sweep("a", [_trial(20, True, 0.10)]), _sweep("b", scattered)).configurations
    assert c.verdict == C.SAME  # 25% mean against 10%, but the seeds span 40 points


@pytest.mark.unit
def test_configurations_in_one_sweep_only_and_trials_that_did_not_complete():
    a = _sweep("a", [_trial(20, True, 0.1), _trial(32, True, 0.1), _trial(44, True, 0.1), _trial(56, True, 0.1)])
    b = _sweep(
        "b",
        [
            _trial(20, True, 0.1),
            _trial(32, True, 0.9, status="diverged"),
            _trial(44, True, 0.1, status="running"),
            _trial(110, True, 0.1),
        ],
    )
    comparison = C.compare(a, b)
    assert _verdicts(comparison) == {
        (20,): C.SAME,
        (32,): C.WORSE,  # every B trial diverged; A's completed
        (44,): C.NOT_COMPARED,
        (56,): C.ONLY_A,
        (110,): C.ONLY_B,
    }
    assert comparison.matched == 3
    assert "1 not compared" in comparison.summary() and "1 only in A, 1 only in B" in comparison.summary()


@pytest.mark.unit
@pytest.mark.parametrize(
    "change, named",
    [
        (("name: digits", "name: synthetic"), "ran on digits and b on synthetic"),
        (("metric: {name: val_error, mode: min}", "metric: {name: val_loss, mode: min}"), "min val_loss"),
    ],
)
def test_two_sweeps_on_different_data_or_metrics_are_not_compared(change, named):
    a, b = _sweep("a", _grid()), _sweep("b", _grid(), QUICKSTART.replace(*change))
    with pytest.raises(C.SweepsIncomparable, match=re.escape(named)):
        C.compare(a, b)


@pytest.mark.unit
def test_the_files_are_the_reports_kind(tmp_path):
    environment = {
        "git": {"commit": "0123456789abcdef", "branch": "main"},
        "packages": {"torch": "2.14.1"},
        "python": "3.11",
    }
    comparison = C.compare(_sweep("quickstart", _grid(0.10)), _sweep("fast", _grid(0.45, **{"train.lr": 1.0})))
    (tmp_path / "differences.csv").write_text("left by an earlier comparison")
    written = C.write_comparison(comparison, tmp_path, environment, None)
    assert {p.name for p in written} == {
        "index.md",
        "compare.html",
        "compare.csv",
        "differences.csv",
        "environment.csv",
    }
    rows = list(csv.DictReader((tmp_path / "compare.csv").open()))
    assert [r["verdict"] for r in rows] == [C.WORSE] * 4
    assert {"model.depth", "model.residual", "A mean", "B mean", "difference", "noise"} <= set(rows[0])
    assert float(rows[0]["A mean"]) == pytest.approx(10) and float(rows[0]["difference"]) == pytest.approx(35)
    index = (tmp_path / "index.md").read_text()
    assert "| train.lr | 0.1 | 1 |" in index
    assert "| Commit | 0123456789ab (main) | not recorded (no environment.json) |" in index
    page = (tmp_path / "compare.html").read_text()
    assert "worse in B" in page and not re.search(r'src="(?!data:)', page)  # nothing to fetch

    same = C.compare(comparison.a, comparison.a)
    C.write_comparison(same, tmp_path, None, None)
    assert not (tmp_path / "differences.csv").exists() and not (tmp_path / "environment.csv").exists()
    assert "Neither sweep's parent run has environment.json" in (tmp_path / "index.md").read_text()


def _cli(monkeypatch, tmp_path, *argv: str, result=None, error: Exception | None = None) -> tuple[int, str]:
    """`resnet-sweep compare …` in process, with the sweeps read from hand-made records."""

    def compare_sweeps(uri, a_name, b_name, *, out=None):
        if error is not None:
            raise error
        folder = Path(out) if out else Path.cwd() / "compare" / f"{a_name}-vs-{b_name}"
        C.write_comparison(result, folder, None, None)
        return result, folder

    monkeypatch.setattr(C, "compare_sweeps", compare_sweeps)
    monkeypatch.chdir(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli_main.main(["compare", *argv])
    return code, out.getvalue() + err.getvalue()


@pytest.mark.unit
def test_fail_on_worse_is_the_exit_code_of_a_worse_b(monkeypatch, tmp_path):
    a = _sweep("a", _grid(0.10))
    worse = C.compare(a, _sweep("b", _grid(0.45, **{"train.lr": 1.0})))
    code, printed = _cli(monkeypatch, tmp_path, "a", "b", "--fail-on-worse", result=worse)
    assert code == 1
    assert "4 configuration(s) in both: 0 no difference, 4 worse in B" in printed
    assert "compare/a-vs-b/index.md" in printed and (tmp_path / "compare/a-vs-b/compare.html").is_file()
    assert _cli(monkeypatch, tmp_path, "a", "b", result=worse)[0] == 0
    assert _cli(monkeypatch, tmp_path, "a", "a", "--fail-on-worse", result=C.compare(a, a))[0] == 0
    code, printed = _cli(monkeypatch, tmp_path, "a", "b", error=C.SweepsIncomparable("a ran on digits and b on x"))
    assert code == 2 and printed.strip() == "error: a ran on digits and b on x"


def test_quickstart_against_itself_from_mlflow_alone(quickstart_sweep, tmp_path):
    """From a fresh folder holding only a copy of the quickstart's MLflow store (no Tune folder):
    every configuration "no difference", and --fail-on-worse exits 0."""
    shutil.copy(quickstart_sweep.cwd / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ran = cli("compare", "quickstart", "quickstart", "--tracking-uri", uri, "--fail-on-worse", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    rows = list(csv.DictReader((tmp_path / "compare/quickstart-vs-quickstart/compare.csv").open()))
    assert len(rows) == 4 and {r["verdict"] for r in rows} == {C.SAME}
    assert "4 configuration(s) in both: 4 no difference" in ran.stdout


@pytest.mark.slow  # two small sweeps: ≈ 2 minutes on 2 cores
def test_quickstart_against_a_10x_learning_rate_is_flagged(tmp_path):
    """The quickstart's ResNet-20 and plain-20 for 3 epochs without warm-up, then the same with
    `train.lr` 10× too high; compared from a fresh folder holding only the MLflow store: the lr is
    what differs, both nets are worse beyond noise and --fail-on-worse exits 1. (A --smoke-test's
    16 steps are all warm-up at 0.01: its lr is never used.)"""
    small = ["--set", "search.space.model.depth=[20]", "--set", "train.epochs=3", "--set", "train.warmup_iterations=0"]
    ran = tmp_path / "ran"
    ran.mkdir()
    for more in ([], ["--set", "train.lr=1.0"]):
        done = cli("run", SWEEPS / "quickstart.yaml", *small, *more, cwd=ran)
        assert done.returncode == 0, done.stderr
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(ran / "mlflow.db", fresh / "mlflow.db")
    compared = cli("compare", "quickstart", "quickstart-2", "--fail-on-worse", cwd=fresh)
    assert compared.returncode == 1, compared.stdout + compared.stderr
    assert "error: 2 configuration(s) worse in B (--fail-on-worse)" in compared.stderr
    folder = fresh / "compare" / "quickstart-vs-quickstart-2"
    assert list(csv.DictReader((folder / "differences.csv").open())) == [{"Setting": "train.lr", "A": "0.1", "B": "1"}]
    for row in csv.DictReader((folder / "compare.csv").open()):
        assert row["verdict"] == C.WORSE and float(row["difference"]) > float(row["noise"]) > 0, row
    assert cli("compare", "quickstart", "quickstart-2", cwd=fresh).returncode == 0
