"""The sweep's nets as the report names and groups them: which settings vary, a net's label
(plain-56, ResNet-56 (A), …), the trials of one net (its seeds) together in the papers' order, and
their errors. The sections, the paper's recipes and the claims all speak of nets this way, so a row
of Table 6 and a line of the claims name the same net alike."""

from __future__ import annotations

from typing import Any

from orchestrator.tracking.records import TrialRecord
from resnet_core.metrics import TEST_ERROR, Status

__all__ = [
    "BLOCK",
    "DEPTH",
    "RESIDUAL",
    "SEED",
    "SHORTCUT",
    "best_test_errors",
    "by_net",
    "completed",
    "final_train_errors",
    "format_value",
    "net_label",
    "net_order",
    "searched_value",
    "short_name",
    "value_order",
    "varying_keys",
]

SEED = "train.seed"
DEPTH, RESIDUAL, SHORTCUT, BLOCK = "model.depth", "model.residual", "model.shortcut", "model.block"


def varying_keys(trials: list[TrialRecord]) -> list[str]:
    """Config keys whose values differ between trials (the seed aside), in a stable order."""
    keys = sorted({k for t in trials for k in t.config})
    return [k for k in keys if k != SEED and len({repr(t.config.get(k)) for t in trials}) > 1]


def short_name(key: str) -> str:
    """A config key without its section (model.depth → depth), as the report's text names it."""
    return key.split(".", 1)[-1]


def format_value(value: Any) -> str:
    """A setting's value as the report's text shows it (six significant digits: 0.30000000000000004 is 0.3)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def net_label(config: dict, varying: list[str]) -> str:
    """plain-56, ResNet-56 (A), ResNet-164 (preact-bottleneck), … and any other varied setting."""
    residual = config.get(RESIDUAL, True)
    label = f"{'ResNet' if residual else 'plain'}-{config.get(DEPTH)}"
    if BLOCK in varying or config.get(BLOCK) not in (None, "basic"):
        label += f" {config.get(BLOCK)}"
    if residual and SHORTCUT in varying:
        label += f" ({config.get(SHORTCUT)})"
    others = [k for k in varying if k not in (DEPTH, RESIDUAL, BLOCK, SHORTCUT, "model.n")]
    return label + "".join(f", {short_name(k)}={format_value(config.get(k))}" for k in others)


def by_net(trials: list[TrialRecord], varying: list[str]) -> dict[str, list[TrialRecord]]:
    """Trials of the same net and recipe (all but the seed) under one label, in sweep order."""
    groups: dict[str, list[TrialRecord]] = {}
    for t in sorted(trials, key=lambda t: net_order(t.config, varying)):
        groups.setdefault(net_label(t.config, varying), []).append(t)
    return groups


def net_order(config: dict, varying: list[str]) -> tuple:
    """Plain before residual, then by depth and the other varied settings."""
    return (bool(config.get(RESIDUAL, True)), config.get(DEPTH) or 0, *(value_order(config.get(k)) for k in varying))


def value_order(value: Any) -> tuple:
    """Numbers in numeric order (1e-05 < 0.0001), then everything else by its text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, repr(value))


def searched_value(config: dict, key: str) -> Any:
    """A searched setting's value in a trial's config; ``model.n`` (blocks per stage) is logged
    resolved, as model.depth."""
    if key != "model.n":
        return config.get(key)
    from resnet_core.config import RunConfig

    try:
        return RunConfig.from_flat(config).model.blocks_per_stage[0]
    except Exception:
        return None


def completed(trials: list[TrialRecord]) -> list[TrialRecord]:
    """The trials that ran to their end: only they are compared (a stopped seed would bias a mean)."""
    return [t for t in trials if t.status == str(Status.COMPLETED)]


def best_test_errors(trials: list[TrialRecord]) -> list[float]:
    """Test error at each trial's best epoch (chosen on val), for those that have one."""
    return [t.best[TEST_ERROR] for t in trials if t.best is not None]


def final_train_errors(trials: list[TrialRecord]) -> list[float]:
    """Training error at each trial's last epoch (2015 Fig. 6 compares nets by it)."""
    return [t.final_train_error for t in trials if t.final_train_error is not None]
