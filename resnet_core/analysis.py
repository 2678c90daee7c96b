"""Model statistics: parameter and multiply-add counts, and the layer responses of 2015 Fig. 7."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .blocks import ResponseTap
from .resnet import DEFAULT_INPUT_SIZE, ModelConfig, build_model

__all__ = ["count_macs", "count_params", "describe_model", "layer_responses", "weighted_layers"]


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
    projections = {
        id(m) for name, m in model.named_modules() if ".shortcut" in f".{name}" for m in m.modules()
    }
    return sum(
        isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in projections for m in model.modules()
    )


def shortcut_params(model: nn.Module) -> list[int]:
    """Parameters of each block's shortcut, in depth order (0 for identity / option A)."""
    return [
        count_params(m.shortcut) if m.shortcut is not None else 0
        for m in model.modules()
        if hasattr(m, "shortcut")
    ]


def describe_model(cfg: ModelConfig, *, input_size: int | None = None, num_classes: int | None = None) -> dict:
    """Everything `resnet-sweep describe` prints, as one JSON-ready dict. The model is built on
    the meta device: every count is exact, and nothing is allocated or computed."""
    with torch.device("meta"):
        model = build_model(cfg, num_classes=num_classes)
    size = input_size or DEFAULT_INPUT_SIZE[cfg.arch]
    projections = [p for p in shortcut_params(model) if p]
    return {
        "name": cfg.name,
        **cfg.to_dict(),
        "num_classes": model.fc.out_features,
        "input_size": size,
        "params": count_params(model),
        # The 2016 paper's counts (164 → 1.7M, 1001 → 10.2M) leave BN's scale and shift out.
        "params_without_bn": count_params(model) - sum(
            count_params(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d)
        ),
        "macs": count_macs(model, size),
        "weighted_layers": weighted_layers(model),
        "blocks_per_stage": list(cfg.blocks_per_stage),
        "shortcut_projections": len(projections),
        "shortcut_params": sum(projections),
    }


@torch.no_grad()
def layer_responses(model: nn.Module, batches: Iterable[torch.Tensor]) -> list[float]:
    """Std of every 3×3 conv's response after BN, before ReLU/addition (2015 Fig. 7), in eval
    mode, over all given batches; ordered by depth (the CIFAR stem's 3×3 first). Pooled per
    layer over all elements: ≈ sqrt(mean γ² + var β) of that BN, so it leaves its initial 1
    only as far as training moves BN's scale (2015 §4.2 trains 64k iterations); a short run
    keeps what an early loss spike gave the first layers."""
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
    mean = sums / counts.clamp(min=1)
    var = (squares / counts.clamp(min=1) - mean * mean).clamp(min=0)
    return [float(v) for v in var.sqrt()]
