"""Model statistics: parameter and multiply-add counts, and the layer responses of 2015 Fig. 7."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .blocks import ResponseTap
from .resnet import DEFAULT_INPUT_SIZE, ModelConfig, build_model

__all__ = ["count_macs", "count_params", "counts_by_blocks", "describe_model", "layer_responses", "weighted_layers"]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int) -> int:
    """Multiply-adds of one image's forward pass, from torch's flop counter (which counts
    2 flops per multiply-add, and like the paper counts only convs and matmuls)."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, input_size, input_size, device=next(model.parameters()).device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2


def weighted_layers(model: nn.Module) -> int:
    """Convs and FC layers on the main path (shortcut projections excluded): the paper's depth."""
    projections = {id(m) for name, m in model.named_modules() if ".shortcut" in f".{name}" for m in m.modules()}
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in projections for m in model.modules())


def shortcut_params(model: nn.Module) -> list[int]:
    """Parameters of each block's shortcut, in depth order (0 for identity / option A)."""
    return [
        count_params(m.shortcut) if m.shortcut is not None else 0 for m in model.modules() if hasattr(m, "shortcut")
    ]


def counts_by_blocks(
    cfg: ModelConfig, measure: Callable[[nn.Module], Sequence[int]], *, num_classes: int | None = None
) -> list[int]:
    """``measure`` of the whole model, exactly, without building all of it: the net with one
    block per stage, and with one more block in each stage in turn, are built on the meta device
    (no memory); a stage's later blocks are all alike, so every count that adds up over layers is
    linear in the block counts (ResNet-1202 costs what ResNet-20 does)."""

    def at(stages: tuple[int, ...]) -> list[int]:
        with torch.device("meta"):
            return list(
                measure(build_model(dataclasses.replace(cfg, stages=stages, depth=None), num_classes=num_classes))
            )

    stages = len(cfg.blocks_per_stage)
    base = at((1,) * stages)
    total = list(base)
    for i, count in enumerate(cfg.blocks_per_stage):
        more = at(tuple(1 + (j == i) for j in range(stages)))
        total = [t + (count - 1) * (m - b) for t, m, b in zip(total, more, base)]
    return total


def describe_model(cfg: ModelConfig, *, input_size: int | None = None, num_classes: int | None = None) -> dict:
    """Everything `resnet-sweep describe` prints, as one JSON-ready dict (counts_by_blocks)."""
    size = input_size or DEFAULT_INPUT_SIZE[cfg.arch]

    def measure(model: nn.Module) -> list[int]:
        projections = [p for p in shortcut_params(model) if p]
        bn = sum(count_params(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
        return [
            count_params(model),
            count_params(model) - bn,
            count_macs(model, size),
            weighted_layers(model),
            len(projections),
            sum(projections),
            model.fc.out_features,
        ]

    params, without_bn, macs, layers, projections, projection_params, classes = counts_by_blocks(
        cfg, measure, num_classes=num_classes
    )
    return {
        "name": cfg.name,
        **cfg.to_dict(),
        "num_classes": classes,
        "input_size": size,
        "params": params,
        # The 2016 paper's counts (164 → 1.7M, 1001 → 10.2M) leave BN's scale and shift out.
        "params_without_bn": without_bn,
        "macs": macs,
        "weighted_layers": layers,
        "blocks_per_stage": list(cfg.blocks_per_stage),
        "shortcut_projections": projections,
        "shortcut_params": projection_params,
    }


@torch.no_grad()
def layer_responses(
    model: nn.Module, batches: Iterable[torch.Tensor], reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> list[float]:
    """Std of every 3×3 conv's response after BN, before ReLU/addition (2015 Fig. 7), in eval
    mode, over all given batches; ordered by depth (the CIFAR stem's 3×3 first). Pooled per
    layer over all elements: ≈ sqrt(mean γ² + var β) of that BN, so it leaves its initial 1
    only as far as training moves BN's scale (2015 §4.2 trains 64k iterations); a short run
    keeps what an early loss spike gave the first layers. ``reduce`` sums the per-layer totals
    (3 × layers, float64) over processes that each saw part of the batches."""
    taps = [m for m in model.modules() if isinstance(m, ResponseTap)]
    sums = torch.zeros(len(taps), dtype=torch.float64)
    squares = torch.zeros(len(taps), dtype=torch.float64)
    counts = torch.zeros(len(taps), dtype=torch.float64)

    def hook(index):
        def record(_module, _inputs, output):
            out = output.detach().double()
            sums[index] += out.sum().cpu()
            squares[index] += (out * out).sum().cpu()
            counts[index] += out.numel()

        return record

    handles = [tap.register_forward_hook(hook(i)) for i, tap in enumerate(taps)]
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if reduce is not None:
        sums, squares, counts = reduce(torch.stack([sums, squares, counts]))
    mean = sums / counts.clamp(min=1)
    var = (squares / counts.clamp(min=1) - mean * mean).clamp(min=0)
    return [float(v) for v in var.sqrt()]
