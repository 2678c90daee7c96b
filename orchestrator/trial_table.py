"""The table of a sweep's trials: one row per trial with its status, epochs and errors at the
epoch chosen on val. `run`'s final table (from Tune's results) and the report (from MLflow)
compute and print it with the same code."""

from __future__ import annotations

from orchestrator.vocabulary import STATUS
from resnet_core import metrics as M
from resnet_core.metrics import Status

__all__ = ["best_epoch", "final_train_error", "format_table", "row"]

NOTE = "(train err: last epoch; val/test err: at the best val epoch; test never chooses)"


def _trained(history: list[dict]) -> list[dict]:
    """The epochs that trained: a diverged trial's last report carries placeholder errors."""
    return [h for h in history if h.get(M.VAL_ERROR) is not None and h.get(STATUS) != str(Status.DIVERGED)]


def best_epoch(history: list[dict]) -> dict | None:
    """The best of the epochs that trained (M.best_epoch)."""
    return M.best_epoch(_trained(history))


def final_train_error(history: list[dict]) -> float | None:
    """The training error of the last epoch that trained."""
    trained = _trained(history)
    return max(trained, key=lambda h: h[M.EPOCH])[M.TRAIN_ERROR] if trained else None


def row(name: str, status: str, epochs: int, history: list[dict], *, node: str = "") -> dict:
    """A trial's row from its per-epoch records (dicts with epoch, train/val/test error)."""
    result = {"name": name, "status": status, "epochs": epochs, "node": node}
    best = best_epoch(history)
    if best is not None:
        result.update(
            best_epoch=int(best[M.EPOCH]),
            val_error=float(best[M.VAL_ERROR]),
            test_error=float(best[M.TEST_ERROR]),
            train_error=float(final_train_error(history)),
        )
    return result


def format_table(rows: list[dict], *, show_nodes: bool = False) -> str:
    header = (
        f"{'trial':<46} {'status':<27} {'epochs':>6} {'best ep':>7} {'train err':>9} {'val err':>8} {'test err':>8}"
    )
    if show_nodes:
        header += "  node"
    lines = [header, "-" * len(header)]
    pct = lambda v: f"{v:.2%}" if v is not None else "-"  # noqa: E731
    for r in rows:
        line = (
            f"{r['name']:<46} {r['status']:<27} {r['epochs']:>6} {r.get('best_epoch', '-'):>7} "
            f"{pct(r.get('train_error')):>9} {pct(r.get('val_error')):>8} {pct(r.get('test_error')):>8}"
        )
        lines.append(line + (f"  {r.get('node') or '-'}" if show_nodes else ""))
    lines.append(NOTE)
    return "\n".join(lines)
