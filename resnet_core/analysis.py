"""Model statistics: parameter and multiply-add counts, and the layer responses of 2015 Fig. 7."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .blocks import ResponseTap
from .resnet import DEFAULT_INPUT_SIZE, ModelConfig, build_model

__all__ = [
    "ModelCounts",
    "count_macs",
    "count_model",
    "count_params",
    "describe_model",
    "layer_responses",
    "weighted_layers",
]

# Nets of up to this many parameters (256 MiB of fp32 weights) are counted on the CPU, their
# weights allocated but never touched; bigger ones (wide ones, up to width 64) on the meta device,
# which allocates nothing but loads torch's symbolic shapes (sympy, ≈ 1 s) on its first use.
CPU_COUNT_MAX_PARAMS = 2**26


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int) -> int:
    """Multiply-adds of one image's forward pass, as torch's flop counter counts them."""
    return _forward_counts(model, input_size)[0]


def _forward_counts(model: nn.Module, input_size: int) -> tuple[int, int]:
    """Multiply-adds and activations (the values every layer outputs) of one image's forward
    pass, from the layers' output shapes in a forward pass of an empty batch: nothing is computed
    and no weight is read. Multiply-adds by torch's flop counter's formulas (its conv and matmul
    flops halved; like the paper, only convs and matmuls count): a conv's outputs × the weights
    each reads, a linear layer's outputs × its inputs."""
    macs = activations = 0

    def record(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal macs, activations
        per_image = math.prod(output.shape[1:])
        activations += per_image
        if isinstance(module, nn.Conv2d):
            macs += per_image * math.prod(module.weight.shape[1:])
        elif isinstance(module, nn.Linear):
            macs += per_image * module.in_features

    handles = [m.register_forward_hook(record) for m in model.modules() if not any(m.children())]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(0, 3, input_size, input_size, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return macs, activations


def weighted_layers(model: nn.Module) -> int:
    """Convs and FC layers on the main path (shortcut projections excluded): the paper's depth."""
    projections = {id(m) for name, m in model.named_modules() if ".shortcut" in f".{name}" for m in m.modules()}
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in projections for m in model.modules())


def shortcut_params(model: nn.Module) -> list[int]:
    """Parameters of each block's shortcut, in depth order (0 for identity / option A)."""
    return [
        count_params(m.shortcut) if m.shortcut is not None else 0 for m in model.modules() if hasattr(m, "shortcut")
    ]


@dataclasses.dataclass(frozen=True)
class ModelCounts:
    """A model's counts for one image at one input size (count_model)."""

    params: int
    params_without_bn: int  # the 2016 paper's counts (164 → 1.7M, 1001 → 10.2M) leave BN's scale and shift out
    macs: int
    activations: int  # values the layers output: about what training keeps for backward
    weighted_layers: int
    shortcut_projections: int
    shortcut_params: int
    classes: int


def _measure(model: nn.Module, input_size: int) -> list[int]:
    """ModelCounts' fields of a built net, in order."""
    macs, activations = _forward_counts(model, input_size)
    projections = [p for p in shortcut_params(model) if p]
    bn = sum(count_params(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    params = count_params(model)
    return [
        params,
        params - bn,
        macs,
        activations,
        weighted_layers(model),
        len(projections),
        sum(projections),
        model.fc.out_features,
    ]


_INIT_METHODS = (torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.fill_, torch.Tensor.zero_)


class _Uninitialized(TorchFunctionMode):
    """Builds a net without initializing its weights: counting reads only their shapes (and
    initializing on the meta device imports torch._dynamo, ≈ 1–2 s)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        initializes = getattr(func, "__module__", None) == "torch.nn.init" and func.__name__.endswith("_")
        if initializes or func in _INIT_METHODS:
            return args[0] if args else kwargs["tensor"]  # the tensor it would fill, as it is
        return func(*args, **(kwargs or {}))


def _build(cfg: ModelConfig, stages: tuple[int, ...], num_classes: int | None) -> nn.Module:
    """``cfg`` with ``stages`` blocks per stage, uninitialized, for counting: on the CPU up to
    CPU_COUNT_MAX_PARAMS parameters, else on the meta device."""
    variant = dataclasses.replace(cfg, stages=stages, depth=None)
    with torch.device("meta"), _Uninitialized():
        model = build_model(variant, num_classes=num_classes)
    if count_params(model) > CPU_COUNT_MAX_PARAMS:
        return model
    with torch.device("cpu"), _Uninitialized():
        return build_model(variant, num_classes=num_classes)


def count_model(cfg: ModelConfig, *, input_size: int | None = None, num_classes: int | None = None) -> ModelCounts:
    """``cfg``'s counts, exactly, without building all of it: the net with one block per stage
    plus what its other blocks add (_blocks_added, counted once per model and input size, for
    any number of classes). ConfigError where ``num_classes`` disagrees with ``cfg``'s."""
    size = input_size or DEFAULT_INPUT_SIZE[cfg.arch]
    base = _measure(_build(cfg, (1,) * len(cfg.blocks_per_stage), num_classes), size)
    return ModelCounts(*(b + added for b, added in zip(base, _blocks_added(cfg, size))))


@functools.lru_cache(maxsize=64)
def _blocks_added(cfg: ModelConfig, input_size: int) -> tuple[int, ...]:
    """What the blocks after the first of each stage add to each count. A stage's later blocks
    are all alike, so each adds what a second one does: every count that adds up over layers is
    linear in the block counts (ResNet-1202 costs what ResNet-20 does), and the classifier, the
    one layer the classes change, is the same in every net measured."""
    stages = len(cfg.blocks_per_stage)
    base = _measure(_build(cfg, (1,) * stages, None), input_size)
    added = [0] * len(base)
    for i, count in enumerate(cfg.blocks_per_stage):
        more = _measure(_build(cfg, tuple(1 + (j == i) for j in range(stages)), None), input_size)
        added = [a + (count - 1) * (m - b) for a, m, b in zip(added, more, base)]
    return tuple(added)


def describe_model(cfg: ModelConfig, *, input_size: int | None = None, num_classes: int | None = None) -> dict:
    """Everything `resnet-sweep describe` prints, as one JSON-ready dict (count_model)."""
    size = input_size or DEFAULT_INPUT_SIZE[cfg.arch]
    counts = count_model(cfg, input_size=size, num_classes=num_classes)
    return {
        "name": cfg.name,
        **cfg.to_dict(),
        "num_classes": counts.classes,
        "input_size": size,
        "params": counts.params,
        "params_without_bn": counts.params_without_bn,
        "macs": counts.macs,
        "weighted_layers": counts.weighted_layers,
        "blocks_per_stage": list(cfg.blocks_per_stage),
        "shortcut_projections": counts.shortcut_projections,
        "shortcut_params": counts.shortcut_params,
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
