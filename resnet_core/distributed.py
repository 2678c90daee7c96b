"""Data-parallel training (DDP) of one run by several processes: which share of each global
batch a process trains on, batch norm over the global batch, and sums over all processes.

Whoever starts the processes sets up torch's process group (in a sweep, Ray Train's
TorchTrainer: gloo on CPU, NCCL on GPUs). ``train.batch_size`` stays the global batch: every
process draws the same global order and random augmentation from the same generator and takes
its contiguous part of each batch, so the processes together train on exactly the batches one
process would, and a checkpoint of any one of them resumes all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .config import BN_SMALLEST_BATCH
from .torch_compat import differentiable_all_reduce_sum

__all__ = ["GlobalBatchNorm2d", "Shard", "smallest_training_batch", "sync_batchnorm"]


def smallest_training_batch(shard: Shard, sync_bn: bool) -> int:
    """2 images for every batch norm: over the global batch with synchronised statistics (or
    one process), else over each process's share (see config.batch_sizes)."""
    return BN_SMALLEST_BATCH * (shard.size if shard.distributed and not sync_bn else 1)


@dataclass(frozen=True)
class Shard:
    """This process's place among ``size`` data-parallel processes (rank 0 of 1: alone)."""

    rank: int = 0
    size: int = 1

    @classmethod
    def of_process_group(cls) -> Shard:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def part(self, n: int) -> slice:
        """This process's rows of a global batch of ``n``, in rank order: n // size each, one
        more for the first n % size (shares differ by at most one)."""
        each, more = divmod(n, self.size)
        start = self.rank * each + min(self.rank, more)
        return slice(start, start + each + (self.rank < more))

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over all processes, in place."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def any(self, flag: torch.Tensor) -> bool:
        """Whether ``flag`` is true in any process (every process gets the same answer)."""
        if not self.distributed:
            return bool(flag)
        flag = flag.to(torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch across all processes
    (what one process with the whole batch computes), on any device. Written here because
    torch's SyncBatchNorm only runs on GPUs; this is its arithmetic in plain tensor ops, and
    torch's differentiable functional all_reduce carries the gradients back. Same
    parameters and buffers as BatchNorm2d, so checkpoints are interchangeable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        xf = x.float()  # statistics in fp32 under autocast, as torch's batch norm keeps them
        count = torch.tensor(float(xf.numel() // xf.shape[1]), device=x.device)
        dist.all_reduce(count)
        mean = differentiable_all_reduce_sum(xf.sum((0, 2, 3)), dist.group.WORLD) / count
        centred = xf - mean[None, :, None, None]
        var = differentiable_all_reduce_sum((centred * centred).sum((0, 2, 3)), dist.group.WORLD) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * count / (count - 1).clamp(min=1), momentum)  # unbiased, as torch
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out.to(x.dtype)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm2d computing global-batch statistics: torch's SyncBatchNorm
    on CUDA, GlobalBatchNorm2d elsewhere. Parameters and buffers are kept (shared, not copied)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = GlobalBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats, device=device
            )
            synced.load_state_dict(child.state_dict())
            if child.affine:
                synced.weight, synced.bias = child.weight, child.bias
            setattr(model, name, synced)
        else:
            sync_batchnorm(child, device)
    return model
