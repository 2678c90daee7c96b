"""What the sweep shows against each claim of the papers (degradation, shortcuts, depth, layer
responses, projections, pre-activation). A claim compares only nets that differ in what it is
about, and a difference counts only when it is larger than the noise (a margin, the spread over
seeds, the number of images an error was measured on): a sweep of one seed per net must not read
as a result it cannot show."""

from __future__ import annotations

import math
import statistics
from typing import Any

from orchestrator.report.document import Table
from orchestrator.report.nets import (
    BLOCK,
    DEPTH,
    RESIDUAL,
    SEED,
    SHORTCUT,
    best_test_errors,
    completed,
    final_train_errors,
    net_label,
)
from orchestrator.tracking.records import TrialRecord

__all__ = [
    "CLAIMS",
    "ERROR_MARGIN",
    "NOT_REPRODUCED",
    "NOT_TESTED",
    "REPRODUCED",
    "RESPONSE_MARGIN",
    "WITHIN_NOISE",
    "claims_table",
    "difference_noise",
    "measured_images",
]

REPRODUCED, NOT_REPRODUCED, NOT_TESTED = "reproduced", "not reproduced", "not tested by this sweep"
WITHIN_NOISE = "not reproduced (difference within noise)"
ERROR_MARGIN = 0.005  # half a point of error: differences below it are not taken as a result
RESPONSE_MARGIN = 0.02  # of the response std (relative)
# What each row of the table judges, in the order _claims judges them.
CLAIMS = (
    "Degradation: a deeper plain net has higher training error (2015 §4.1, Fig. 6)",
    "Shortcuts remove the degradation: the deepest residual net has lower training error than its plain "
    "counterpart (2015 Fig. 6)",
    "Deeper ResNets have lower test error (2015 Table 6)",
    "ResNets have smaller layer responses than their plain counterparts (mean std; 2015 Fig. 7)",
    "A deeper ResNet has smaller responses (2015 Fig. 7)",
    "Projection shortcuts (B, C) are marginally better than identity (A) (2015 Table 3)",
    "Pre-activation blocks have lower test error than the original ones (2016 Table 3)",
)


def difference_noise(xs: list[float], ys: list[float], margin: float, images: int | None = None) -> float:
    """How far apart the means of ``xs`` and ``ys`` must be to count as a difference: the margin,
    or twice the standard error of the difference, from the spread over seeds or, for an error
    rate measured on ``images`` images, from that sample's size (whichever is larger)."""

    def se2(values: list[float]) -> float:
        seeds = statistics.variance(values) / len(values) if len(values) > 1 else 0.0
        if images:
            p = statistics.fmean(values)
            return max(seeds, p * (1 - p) / images)
        return seeds

    return max(margin, 2 * math.sqrt(se2(xs) + se2(ys)))


def _verdict(lower: list[float], higher: list[float], margin: float, images: int | None = None) -> str:
    """Whether ``lower`` (what the paper says is lower) is lower by more than the noise
    (difference_noise)."""
    gap = statistics.fmean(higher) - statistics.fmean(lower)
    noise = difference_noise(lower, higher, margin, images)
    if gap > noise:
        return REPRODUCED
    return NOT_REPRODUCED if gap < -noise else WITHIN_NOISE


def _families(trials: list[TrialRecord], varying: list[str], key: str) -> list[dict[Any, list[TrialRecord]]]:
    """Completed trials that differ only in ``key`` (and the seed): one dict value → trials per
    family, so a claim compares like with like."""
    fixed = [k for k in varying if k not in (key, SEED, "model.n")]
    families: dict[tuple, dict[Any, list[TrialRecord]]] = {}
    for t in completed(trials):
        family = tuple(repr(t.config.get(k)) for k in fixed)
        families.setdefault(family, {}).setdefault(t.config.get(key), []).append(t)
    return [f for f in families.values() if len(f) > 1]


def _combine(compared: list[tuple[int, str]]) -> str:
    """Every comparison must agree with the paper; one against it is against it."""
    verdicts = [v for _, v in compared]
    if all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    return NOT_REPRODUCED if NOT_REPRODUCED in verdicts else WITHIN_NOISE


def _deepest(compared: list[tuple[int, str]]) -> str:
    """A claim about deep nets (shallow plain nets train fine too): the deepest pairs decide."""
    deepest = max(depth for depth, _ in compared)
    return _combine([(d, v) for d, v in compared if d == deepest])


def measured_images(trials: list[TrialRecord], split: int) -> int | None:
    """How many images an error rate of these trials was measured on (0 train, 2 test)."""
    from resnet_core.config import RunConfig, split_sizes

    try:
        return split_sizes(RunConfig.from_flat(trials[0].config).dataset)[split]
    except Exception:
        return None


def _claims(trials: list[TrialRecord], varying: list[str]) -> list[list[str]]:
    """Each claim of the papers this tool reproduces, judged on this sweep's completed trials,
    comparing nets that differ only in what the claim is about."""

    def pct(xs: list[float]) -> str:
        return f"{100 * statistics.fmean(xs):.2f}%"

    def std(xs: list[float]) -> str:
        return f"{statistics.fmean(xs):.3f}"

    def responses(ts: list[TrialRecord]) -> list[float]:
        return [statistics.fmean(t.responses) for t in ts if t.responses]

    def judge(
        key: str,
        pick,
        what,
        lower_first: bool,
        margin,
        shown,
        missing: str,
        *,
        residual: bool | None = None,
        split: int | None = None,
        decide=_combine,
    ):
        """Compares, in each family along ``key``, the two trial sets ``pick`` chooses, on the
        samples ``what`` gives (error rates on the ``split`` images, or none); the paper says the
        first is lower (``lower_first``)."""
        lines, compared = [], []
        for family in _families(trials, varying, key):
            if residual is not None and bool(next(iter(family.values()))[0].config.get(RESIDUAL, True)) != residual:
                continue
            chosen = pick(family)
            if chosen is None:
                continue
            (a_name, a), (b_name, b) = chosen
            xa, xb = what(a), what(b)
            if not xa or not xb:
                continue
            low, high = (xa, xb) if lower_first else (xb, xa)
            images = measured_images(a, split) if split is not None else None
            compared.append((a[0].config.get(DEPTH) or 0, _verdict(low, high, margin(low + high), images)))
            lines.append(f"{a_name} {shown(xa)} vs {b_name} {shown(xb)}")
        if not compared:
            return [NOT_TESTED, missing]
        if len({v for _, v in compared}) > 1:
            short = {WITHIN_NOISE: "within noise"}
            lines = [f"{line} ({short.get(v, v)})" for line, (_, v) in zip(lines, compared)]
        more = f" … ({len(lines)} comparisons)" if len(lines) > 4 else ""
        return [decide(compared), "; ".join(lines[:4]) + more]

    def ends(family: dict) -> tuple | None:  # the shallowest and the deepest net
        depths = sorted(d for d in family if d is not None)
        label = lambda d: net_label(family[d][0].config, [])  # noqa: E731
        return (
            ((label(depths[-1]), family[depths[-1]]), (label(depths[0]), family[depths[0]]))
            if len(depths) > 1
            else None
        )

    def plain_and_residual(family: dict) -> tuple | None:
        if True not in family or False not in family:
            return None
        label = lambda r: net_label(family[r][0].config, [])  # noqa: E731
        return (label(True), family[True]), (label(False), family[False])

    def identity_and_projection(family: dict) -> tuple | None:
        projections = [t for o in ("B", "C") for t in family.get(o, [])]
        return (("B/C", projections), ("A", family["A"])) if "A" in family and projections else None

    def preact_and_original(family: dict) -> tuple | None:
        for block in ("basic", "bottleneck"):
            if block in family and f"preact-{block}" in family:
                return (f"preact-{block}", family[f"preact-{block}"]), (block, family[block])
        return None

    train, test = final_train_errors, best_test_errors
    errors = lambda xs: ERROR_MARGIN  # noqa: E731
    relative = lambda xs: RESPONSE_MARGIN * statistics.fmean(xs)  # noqa: E731
    claims = [
        # deeper plain: higher training error (the first of ends() is the deeper net)
        judge(DEPTH, ends, train, False, errors, pct, "needs plain nets of two depths", residual=False, split=0),
        judge(
            RESIDUAL,
            plain_and_residual,
            train,
            True,
            errors,
            pct,
            "needs plain and residual nets alike otherwise",
            split=0,
            decide=_deepest,
        ),
        judge(DEPTH, ends, test, True, errors, pct, "needs residual nets of two depths", residual=True, split=2),
        judge(
            RESIDUAL,
            plain_and_residual,
            responses,
            True,
            relative,
            std,
            "needs the layer responses of plain and residual nets alike otherwise",
        ),
        judge(
            DEPTH,
            ends,
            responses,
            True,
            relative,
            std,
            "needs the layer responses of residual nets of two depths",
            residual=True,
        ),
        judge(
            SHORTCUT,
            identity_and_projection,
            test,
            True,
            errors,
            pct,
            "needs option A and a projection option (B or C) on nets alike otherwise",
            residual=True,
            split=2,
        ),
        judge(BLOCK, preact_and_original, test, True, errors, pct, "needs original and pre-activation blocks", split=2),
    ]
    return [[claim, *verdict] for claim, verdict in zip(CLAIMS, claims)]


def claims_table(trials: list[TrialRecord], varying: list[str]) -> Table:
    """The table "What this sweep shows": each claim, its verdict and the numbers behind it, with
    the rule a difference must pass in its caption."""
    return Table(
        "claims",
        ["claim of the papers", "this sweep", "evidence"],
        _claims(trials, varying),
        f"Judged on completed trials. A difference counts when it is larger than {100 * ERROR_MARGIN:g} "
        f"points of error ({100 * RESPONSE_MARGIN:g}% of a response std) and than twice its standard "
        f"error (from the spread over seeds, or for an error rate from the number of images it was "
        f"measured on, whichever is larger); one seed per net is one draw.",
    )
