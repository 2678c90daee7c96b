"""Configurations repeated over seeds: the mean test error, its spread and a 95% interval of the
mean, for every configuration (its settings less train.seed) with two or more completed seeds.
One seed is one draw; the interval says how far the mean of a few may sit from the true one."""

from __future__ import annotations

import math
import statistics

from orchestrator.report.document import Report, Table
from orchestrator.report.nets import SEED, best_test_errors, by_net, completed, value_order, varying_keys
from orchestrator.tracking.records import TrialRecord

__all__ = ["add_seeds", "interval95", "t975"]

# Student's t 0.975 quantiles for n−1 = 1..30 degrees of freedom (scipy.stats.t.ppf, 4 decimals).
# A table, not scipy: scipy is not among the project's declared dependencies (it arrives only as
# scikit-learn's), and these thirty numbers are all a report of a few seeds needs.
T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
Z975 = 1.959963984540054  # the normal's 0.975 quantile


def t975(df: int) -> float:
    """Student's t 0.975 quantile: the table up to 30 degrees of freedom, beyond it the
    Cornish-Fisher expansion around the normal's (within 1e-4 of the exact value from 31 on)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be ≥ 1, not {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def interval95(values: list[float]) -> tuple[float, float, float, float]:
    """Mean, sample standard deviation (n−1) and the t-distribution's 95% interval of the mean
    (low, high) of two or more values."""
    mean, std = statistics.fmean(values), statistics.stdev(values)
    half = t975(len(values) - 1) * std / math.sqrt(len(values))
    return mean, std, mean - half, mean + half


def add_seeds(report: Report, trials: list[TrialRecord], tables: dict) -> None:
    """A row per configuration with ≥ 2 completed seeds: its seeds, mean, std and 95% interval."""
    rows = []
    for label, group in by_net(trials, varying_keys(trials)).items():
        done = [t for t in completed(group) if t.best is not None]
        if len(done) >= 2:
            mean, std, low, high = interval95(best_test_errors(done))
            seeds = ", ".join(str(s) for s in sorted((t.config.get(SEED) for t in done), key=value_order))
            rows.append([label, seeds, len(done), mean, std, low, high])
    if not rows:
        return
    table = Table(
        "seeds",
        ["configuration", "seeds", "n", "test err % mean", "std", "95% low", "95% high"],
        rows,
        "Completed trials of one configuration (all settings but train.seed): test error at the epoch chosen "
        "on val; std with n−1; the 95% interval of the mean from Student's t with n−1 degrees of freedom "
        "(mean ± t·std/√n). Two seeds give a wide interval: that is what two draws can say.",
    )
    report.h2("Seeds")
    report.add(table)
    tables["seeds"] = table
