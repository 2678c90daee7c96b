"""Every private torch op resnet_core calls, in one place.

Trial arrays (``array.py``) step K members' slices of one flat tensor with torch's own fused
SGD and loss-scaling kernels, so each member does its single trial's arithmetic bit for bit;
``GlobalBatchNorm2d`` needs an all-reduce that carries gradients. torch has no public API for
either. Each op is looked up when first used (importing resnet_core never depends on them) and a
missing one is a one-line error naming the installed torch and the range this package supports:
a silent fallback would change the numbers. tests/test_torch_compat.py checks that each exists on
the installed torch and computes what its public counterpart computes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .errors import TorchOpMissing
from .requirements import declared


def _op(owner: Any, name: str, where: str) -> Callable[..., Any]:
    fn = getattr(owner, name, None)
    if fn is None:
        raise TorchOpMissing(
            f"{where}.{name} is not in torch {torch.__version__}; resnet-sweep supports {declared('torch')} "
            f"(install the versions in constraints.txt)"
        )
    return fn


def fused_sgd_(params, grads, momentum_buffers, **kwargs) -> None:
    """torch.optim.SGD(fused=True)'s kernel, called with one lr per call (per member)."""
    _op(torch, "_fused_sgd_", "torch")(params, grads, momentum_buffers, **kwargs)


def unscale_and_check_(grads, found_inf: torch.Tensor, inv_scale: torch.Tensor) -> None:
    """GradScaler.unscale_'s kernel: grads *= inv_scale; found_inf = 1 if any is not finite."""
    _op(torch, "_amp_foreach_non_finite_check_and_unscale_", "torch")(grads, found_inf, inv_scale)


def update_scale_(scale, growth_tracker, found_inf, growth: float, backoff: float, interval: int) -> None:
    """GradScaler.update's kernel, on one scale and its growth tracker."""
    _op(torch, "_amp_update_scale_", "torch")(scale, growth_tracker, found_inf, growth, backoff, interval)


def differentiable_all_reduce_sum(tensor: torch.Tensor, group) -> torch.Tensor:
    """A sum over the process group that gradients flow back through (torch's advice for
    collectives under autograd; the module is private in name only)."""
    try:
        from torch.distributed import _functional_collectives as collectives
    except ImportError:
        raise TorchOpMissing(
            f"torch.distributed._functional_collectives is not in torch {torch.__version__}; resnet-sweep "
            f"supports {declared('torch')} (install the versions in constraints.txt)"
        ) from None
    return _op(collectives, "all_reduce", "torch.distributed._functional_collectives")(tensor, "sum", group)
