"""resnet_core/torch_compat.py: each private torch op exists on the installed torch and computes
what its public counterpart computes; a missing one is a one-line error, never a fallback."""

import os

import pytest
import torch
import torch.distributed as dist

from resnet_core import torch_compat
from resnet_core.torch_compat import TorchOpMissing

pytestmark = pytest.mark.unit


def _params(seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(5, 3, generator=g), torch.randn(7, generator=g)], [
        torch.randn(5, 3, generator=g),
        torch.randn(7, generator=g),
    ]


@pytest.mark.parametrize("nesterov", [False, True])
def test_fused_sgd_is_torch_optim_sgds_step(nesterov):
    """Three steps (the first one initialises momentum) equal torch.optim.SGD(fused=True)'s, bit for bit
    (the single trainer's optimizer)."""
    values, grads = _params(0)
    params = [torch.nn.Parameter(v.clone()) for v in values]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=nesterov, fused=True)
    mine = [v.clone() for v in values]
    bufs = [torch.zeros_like(v) for v in values]
    skip = torch.zeros(1)
    for step in range(3):
        for p, g in zip(params, grads):
            p.grad = g * (step + 1)
        optimizer.step()
        torch_compat.fused_sgd_(
            mine,
            [g * (step + 1) for g in grads],
            bufs,
            weight_decay=1e-4,
            momentum=0.9,
            lr=0.1,
            dampening=0.0,
            nesterov=nesterov,
            maximize=False,
            is_first_step=step == 0,
            grad_scale=None,
            found_inf=skip,
        )
    for p, m in zip(params, mine):
        assert torch.equal(p.detach(), m)


def test_fused_sgd_skips_a_step_when_found_inf_is_set():
    values, grads = _params(1)
    mine = [v.clone() for v in values]
    torch_compat.fused_sgd_(
        mine,
        grads,
        [torch.zeros_like(v) for v in values],
        weight_decay=0.0,
        momentum=0.9,
        lr=0.1,
        dampening=0.0,
        nesterov=False,
        maximize=False,
        is_first_step=True,
        grad_scale=None,
        found_inf=torch.ones(1),
    )
    assert all(torch.equal(m, v) for m, v in zip(mine, values))


def test_unscale_and_update_are_grad_scalers():
    """The two loss-scaling kernels do what torch.amp.GradScaler.unscale_ and update do."""
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)
    _, grads = _params(2)
    grads[1][3] = float("inf")
    p = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for param, g in zip(p, grads):
        param.grad = g.clone()
    optimizer = torch.optim.SGD(p, lr=0.1)
    scaler.scale(torch.zeros((), requires_grad=True))  # initialises the scale
    scaler.unscale_(optimizer)
    scaler.step(optimizer)
    scaler.update()

    mine, found = [g.clone() for g in grads], torch.zeros(1)
    torch_compat.unscale_and_check_(mine, found, torch.full((1,), 1 / 1024.0))
    assert found.item() == 1.0
    assert all(torch.equal(param.grad, m) for param, m in zip(p, mine))
    scale, tracker = torch.full((1,), 1024.0), torch.zeros(1, dtype=torch.int32)
    torch_compat.update_scale_(scale, tracker, found, 2.0, 0.5, 1)
    assert scale.item() == scaler.get_scale() == 512.0


def test_differentiable_all_reduce_carries_gradients(tmp_path):
    """In a process group of one: the sum is the tensor and its gradient flows back."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        x = torch.arange(3.0, requires_grad=True)
        total = torch_compat.differentiable_all_reduce_sum(x * 2, dist.group.WORLD)
        (total * torch.tensor([1.0, 10.0, 100.0])).sum().backward()
        assert torch.equal(total.detach(), torch.tensor([0.0, 2.0, 4.0]))
        assert torch.equal(x.grad, torch.tensor([2.0, 20.0, 200.0]))
    finally:
        dist.destroy_process_group()


def test_a_missing_op_is_one_line_naming_the_versions(monkeypatch):
    monkeypatch.delattr(torch, "_fused_sgd_")
    with pytest.raises(TorchOpMissing) as err:
        torch_compat.fused_sgd_([], [], [], lr=0.1)
    message = str(err.value)
    assert "\n" not in message and "torch._fused_sgd_" in message and torch.__version__ in message
    assert "constraints.txt" in message and os.linesep not in message
