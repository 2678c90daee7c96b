"""The papers' reference numbers and the recipes behind them: 2015 Tables 2, 3 and 6, 2016 Table 3,
and the CIFAR and ImageNet recipes a trial must follow for its row to stand beside them. In one
place so the numbers can be checked against the papers, and so the report never sets a paper's
error beside a trial trained some other way without saying how it differs."""

from __future__ import annotations

from typing import Any

from orchestrator.report.nets import BLOCK, DEPTH, RESIDUAL, SHORTCUT, format_value, short_name

__all__ = [
    "IMAGENET_EPOCHS",
    "IMAGENET_RECIPE",
    "PAPER_2016",
    "PAPER_IMAGENET",
    "PAPER_ITERATIONS",
    "PAPER_RECIPE",
    "PAPER_TABLE6",
    "cifar_recipe_differences",
    "imagenet_recipe_differences",
    "paper_cifar_error",
    "paper_imagenet_errors",
]

# 2015 Table 6 (CIFAR-10 test error %, ResNets with option A shortcuts, the best of 5 runs for 110).
PAPER_TABLE6 = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
# 2016 Table 3 (CIFAR-10 / CIFAR-100 test error %, bottleneck nets): original vs pre-activation.
PAPER_2016 = {
    ("bottleneck", 164): (5.93, 25.16),
    ("preact-bottleneck", 164): (5.46, 24.33),
    ("bottleneck", 1001): (7.61, 27.82),
    ("preact-bottleneck", 1001): (4.92, 22.71),
}
# The paper's CIFAR recipe (2015 §4.2): the reference columns are shown only for trials that used it.
PAPER_RECIPE = {
    "train.batch_size": 128,
    "train.lr": 0.1,
    "train.momentum": 0.9,
    "train.weight_decay": 1e-4,
    "train.schedule": "multistep",
    "train.milestones": (0.5, 0.75),
    "train.gamma": 0.1,
    "train.label_smoothing": 0.0,
    "dataset.augment": True,
    "model.width": 1,
    "model.drop_path": 0.0,
    "model.dropout": 0.0,
    "model.zero_init_last": False,
}
PAPER_ITERATIONS = 64_000
# 2015 Tables 2 and 3: ImageNet val, 10-crop testing, (top-1, top-5) error %; None: not reported.
# Keyed by shortcut option ("plain": no shortcuts) and depth; Table 2's ResNets use option A, the
# bottleneck nets option B (§4.1, "Deeper Bottleneck Architectures").
PAPER_IMAGENET = {
    ("plain", 18): (27.94, None),
    ("plain", 34): (28.54, 10.02),
    ("A", 18): (27.88, None),
    ("A", 34): (25.03, 7.76),
    ("B", 34): (24.52, 7.46),
    ("C", 34): (24.19, 7.40),
    ("B", 50): (22.85, 6.71),
    ("B", 101): (21.75, 6.05),
    ("B", 152): (21.43, 5.71),
}
# The paper's ImageNet recipe (2015 §3.4) and model (§3.3, Table 1: basic blocks up to 34 layers,
# bottlenecks with the stride on the first 1×1 from 50): the reference columns are shown only for
# trials that used it, for at least IMAGENET_EPOCHS epochs (the paper: lr ÷10 on plateaus, up to
# 60×10^4 iterations of 256, ≈ 120 epochs; any ÷10 milestones are a reading of it).
IMAGENET_RECIPE = {
    "dataset.augment": True,
    "dataset.image_size": 224,
    "dataset.scale_range": (256, 480),
    "dataset.lighting": 0.1,
    "dataset.normalize": "pixel-mean",
    "dataset.train_limit": None,
    "dataset.eval_limit": None,
    "train.batch_size": 256,
    "train.lr": 0.1,
    "train.momentum": 0.9,
    "train.nesterov": False,
    "train.weight_decay": 1e-4,
    "train.bn_weight_decay": True,
    "train.schedule": "multistep",
    "train.gamma": 0.1,
    "train.warmup_iterations": 0,
    "train.label_smoothing": 0.0,
    "model.width": 1,
    "model.stages": None,
    "model.drop_path": 0.0,
    "model.dropout": 0.0,
    "model.zero_init_last": False,
    "model.bottleneck_stride": "1x1",
}
IMAGENET_EPOCHS = 90


def _same(value: Any, paper: Any) -> bool:
    """A logged setting equals the paper's: MLflow gives sequences back as lists."""
    return (tuple(value) if isinstance(value, list) else value) == paper


def _differences(config: dict, recipe: dict) -> list[str]:
    return [
        f"{short_name(k)} {format_value(config.get(k))}"
        for k, v in recipe.items()
        if k in config and not _same(config[k], v)
    ]


def cifar_recipe_differences(config: dict) -> list[str]:
    """How the trial's recipe differs from the paper's CIFAR recipe (empty: it is the paper's)."""
    differs = _differences(config, PAPER_RECIPE)
    if (
        config.get("train.epochs") is not None
        or (config.get("train.iterations") or PAPER_ITERATIONS) != PAPER_ITERATIONS
    ):
        differs.append("not 64k iterations")
    if config.get("dataset.name") not in ("cifar10", "cifar100"):
        differs.insert(0, f"data set {config.get('dataset.name')}")
    return differs


def paper_cifar_error(config: dict) -> float | None:
    """The paper's test error (%) for this net, when it reports one for this data set."""
    data, depth, block = config.get("dataset.name"), config.get(DEPTH), config.get(BLOCK)
    if not config.get(RESIDUAL, True):
        return None  # the papers give plain nets' errors only as curves (Fig. 6)
    if data == "cifar10" and block == "basic" and config.get(SHORTCUT) == "A":
        return PAPER_TABLE6.get(depth)
    column = {"cifar10": 0, "cifar100": 1}.get(data)
    paper = PAPER_2016.get((block, depth))
    return paper[column] if paper and column is not None else None


def imagenet_recipe_differences(config: dict) -> list[str]:
    """How the trial's recipe or model differs from the paper's on ImageNet (empty: it is the paper's)."""
    from resnet_core.config import RunConfig, planned_epochs, split_sizes, steps_per_epoch

    differs = _differences(config, IMAGENET_RECIPE)
    if config.get("dataset.name") != "imagenet":
        differs.insert(0, f"data set {config.get('dataset.name')}")
    if config.get(BLOCK) != ("bottleneck" if (config.get(DEPTH) or 0) >= 50 else "basic"):
        differs.append(f"block {config.get(BLOCK)}")
    try:
        run = RunConfig.from_flat(config)
        epochs = planned_epochs(run.train, steps_per_epoch(split_sizes(run.dataset)[0], run.train.batch_size))
    except Exception:
        return differs or ["settings this version cannot read"]
    if epochs < IMAGENET_EPOCHS:
        differs.append(f"{epochs} epochs (under {IMAGENET_EPOCHS})")
    return differs


def paper_imagenet_errors(config: dict) -> tuple[float | None, float | None] | None:
    """2015 Tables 2/3's (top-1, top-5) 10-crop errors (%) for this net, when it reports them."""
    option = config.get(SHORTCUT) if config.get(RESIDUAL, True) else "plain"
    return PAPER_IMAGENET.get((option, config.get(DEPTH)))
