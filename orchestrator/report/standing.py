"""Where a sweep stands: trials by status against the plan, epochs done, the best trial so far
and an estimated time to finish. `resnet-sweep status` computes it from MLflow (from anywhere,
while the sweep runs on this machine or a cluster); `run` prints the same line every minute."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from orchestrator.tracking.records import TIMESTAMP
from resnet_core import metrics as M
from resnet_core.metrics import Status

__all__ = ["Standing", "estimate", "from_record", "pace", "summary_line"]

IDLE_S = 10 * 60  # no epoch logged for this long while the sweep says running: said so
RATE_WINDOW_S = 15 * 60  # the ETA uses the pace of the last 15 minutes (a resumed sweep's pause aside)
# The words for the counts, in the order they are shown.
FINISHED = (Status.COMPLETED, Status.STOPPED_EARLY, Status.DIVERGED, Status.FAILED, Status.OUT_OF_MEMORY)


@dataclass
class Standing:
    planned: int
    counts: dict[str, int] = field(default_factory=dict)  # status word → trials ("running", "pending" too)
    epochs_done: int = 0
    epochs_planned: int = 0  # every trial to its last epoch
    epochs_expected: int | None = None  # with ASHA: what the plan expects it to leave
    best: dict | None = None  # name, val_error, test_error, epoch
    epochs_left: int | None = None  # each unfinished trial to its last epoch (None: unknown)
    epochs_per_s: float | None = None  # the recent pace
    eta_s: float | None = None
    idle_s: float | None = None  # since the newest epoch (`status`: a driver that stopped shows here)
    state: str = "running"  # the sweep: running, completed, interrupted

    @property
    def done(self) -> int:
        return sum(self.counts.get(str(s), 0) for s in FINISHED)

    def to_dict(self) -> dict:
        return {**asdict(self), "done": self.done}


def estimate(standing: Standing) -> None:
    """Fills in the ETA: the epochs left (each running and pending trial to its end; with ASHA,
    what the plan expects it to leave while that is fewer), at the recent pace."""
    if standing.state != "running":
        standing.eta_s = 0.0 if standing.state == str(Status.COMPLETED) else None
        return
    left = standing.epochs_left
    if left is None:
        return
    if standing.epochs_expected is not None and standing.epochs_expected > standing.epochs_done:
        left = min(left, standing.epochs_expected - standing.epochs_done)
    if left == 0 and not standing.counts.get("running"):
        standing.eta_s = 0.0
    elif standing.epochs_per_s:
        standing.eta_s = left / standing.epochs_per_s


def epochs_left(per_trial: int, unfinished: list[int], pending: int) -> int | None:
    """Epochs to go: the unfinished trials' (their epochs so far given) and the pending ones'."""
    if not per_trial:
        return None
    return sum(max(0, per_trial - e) for e in unfinished) + pending * per_trial


def pace(stamps_ms: list[int]) -> float | None:
    """Epochs per second over the last RATE_WINDOW_S before the newest epoch (None: too few)."""
    stamps = sorted(stamps_ms)
    if len(stamps) < 2:
        return None
    recent = [s for s in stamps if s >= stamps[-1] - RATE_WINDOW_S * 1000]
    span = (recent[-1] - recent[0]) / 1000 if len(recent) >= 2 else 0
    return (len(recent) - 1) / span if span > 0 else None


def from_record(record) -> Standing:
    """The standing of a sweep read from MLflow (records.read_sweep with val_error histories and
    their timestamps)."""
    plan = record.plan
    planned = int(plan.get("num_trials") or len(record.trials))
    per_trial = int(plan.get("epochs_per_trial") or 0)
    standing = Standing(
        planned=planned,
        epochs_planned=planned * per_trial,
        epochs_expected=round(expected) if (expected := plan.get("asha_expected_epochs")) else None,
    )
    for t in record.trials:
        standing.counts[t.status] = standing.counts.get(t.status, 0) + 1
        standing.epochs_done += t.epochs
        best = t.best
        if best is not None and (standing.best is None or best[M.VAL_ERROR] < standing.best["val_error"]):
            standing.best = {
                "name": t.name,
                "val_error": best[M.VAL_ERROR],
                "test_error": best.get(M.TEST_ERROR),
                "epoch": best[M.EPOCH],
            }
    standing.counts["pending"] = max(0, planned - len(record.trials))
    standing.state = record.status or "running"
    unfinished = [t.epochs for t in record.trials if t.status in ("running", str(Status.INTERRUPTED))]
    standing.epochs_left = epochs_left(per_trial, unfinished, standing.counts["pending"])
    stamps = [h[TIMESTAMP] for t in record.trials for h in t.history if TIMESTAMP in h]
    standing.epochs_per_s = pace(stamps)
    if stamps:
        standing.idle_s = max(0.0, time.time() - max(stamps) / 1000)
    estimate(standing)
    return standing


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{round(seconds)} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return "{} h {:02d} min".format(*divmod(minutes, 60))


def summary_line(s: Standing) -> str:
    """One line: trials done / running / pending against the plan, epochs, best so far, ETA."""
    finished = ", ".join(f"{s.counts[str(w)]} {w}".replace("_", " ") for w in FINISHED if s.counts.get(str(w)))
    others = [f"{s.counts[w]} {w}" for w in ("running", str(Status.INTERRUPTED), "pending") if s.counts.get(w)]
    parts = [f"{s.done}/{s.planned} trials done" + (f" ({finished})" if finished else "")] + others
    epochs = f"{s.epochs_done}/{s.epochs_planned} epochs"
    if s.epochs_expected is not None and s.epochs_expected < s.epochs_planned:
        epochs += f" (ASHA: ~{s.epochs_expected} expected)"
    parts.append(epochs)
    if s.best:
        parts.append(f"best {s.best['name']} val err {s.best['val_error']:.2%}")
    if s.state == "running":
        parts.append(f"ETA {_duration(s.eta_s)}" if s.eta_s is not None else "ETA unknown (too few epochs yet)")
        if s.idle_s is not None and s.idle_s > IDLE_S:
            parts.append(
                f"no epoch for {_duration(s.idle_s)}: is its driver still running? (`resnet-sweep resume` "
                f"continues a sweep whose driver died)"
            )
    else:
        parts.append(s.state)
    return "; ".join(parts)
