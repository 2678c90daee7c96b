"""Where a sweep stands: trials by status against the plan, epochs done, the best trial so far
and an estimated time to finish. `resnet-sweep status` computes it from MLflow (from anywhere,
while the sweep runs on this machine or a cluster); `run` prints the same line every minute."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from resnet_core import metrics as M
from resnet_core.metrics import Status

from .records import TIMESTAMP

__all__ = ["Standing", "estimate", "from_record", "pace", "summary_line"]

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
    epochs_per_s: float | None = None  # the recent pace
    eta_s: float | None = None
    state: str = "running"  # the sweep: running, completed, interrupted

    @property
    def done(self) -> int:
        return sum(self.counts.get(str(s), 0) for s in FINISHED)

    def to_dict(self) -> dict:
        return {**asdict(self), "done": self.done}


def estimate(standing: Standing) -> None:
    """Fills in the ETA: the epochs left (each running and pending trial to its end, or what ASHA
    is expected to leave), at the recent pace."""
    if standing.state != "running":
        standing.eta_s = 0.0 if standing.state == str(Status.COMPLETED) else None
        return
    left = max(0, standing.epochs_planned - standing.epochs_done)
    if standing.epochs_expected is not None:
        left = min(left, max(0, standing.epochs_expected - standing.epochs_done))
    if standing.epochs_per_s:
        standing.eta_s = left / standing.epochs_per_s
    elif left == 0:
        standing.eta_s = 0.0


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
    standing = Standing(planned=planned, epochs_planned=planned * per_trial,
                        epochs_expected=round(expected) if (expected := plan.get("asha_expected_epochs")) else None)
    for t in record.trials:
        standing.counts[t.status] = standing.counts.get(t.status, 0) + 1
        standing.epochs_done += t.epochs
        best = t.best
        if best is not None and (standing.best is None or best[M.VAL_ERROR] < standing.best["val_error"]):
            standing.best = {"name": t.name, "val_error": best[M.VAL_ERROR], "test_error": best.get(M.TEST_ERROR),
                             "epoch": best[M.EPOCH]}
    standing.counts["pending"] = max(0, planned - len(record.trials))
    standing.state = record.status or "running"
    standing.epochs_per_s = pace([h[TIMESTAMP] for t in record.trials for h in t.history if TIMESTAMP in h])
    estimate(standing)
    return standing


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds // 3600} h {round(seconds % 3600 / 60):02d} min"


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
    else:
        parts.append(s.state)
    return "; ".join(parts)
