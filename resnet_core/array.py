"""Trial arrays: K trials of one model shape trained as one fused model on one device.

Each member is a whole trial (its own ``RunConfig``): its own seed, hence initial weights, data
order and augmentation; its own BN statistics; its own lr, momentum, Nesterov, weight decay,
schedule, warm-up, label smoothing, drop-path rate and divergence limit. What members share is
what makes one fused model possible: the model shape, the data and the batch.

How (the grouped-convolution model of HFTA, built from the ordinary one): the K members' weights
are stacked (a leading K dimension, as ``torch.func.stack_module_state`` lays them out) and the
activations of all members travel as one (batch, K·C, H, W) tensor. A weightless copy of the
model has its layers swapped for grouped ones (``_fuse``): every conv becomes one conv with
``groups = K``, every BN one BN over K·C channels whose running statistics are the K members'
own (contiguous K×C blocks, updated in place by the BN kernel), the classifier one linear per
member. The blocks' own ``forward`` code (shortcuts, additions, in-place ReLU) runs unchanged.

Why not ``torch.vmap`` (+ ``functional_call`` + ``stack_module_state``), which works with this
model as it is (in-place ReLU and BN's in-place running-statistics updates included): it runs
the same grouped convs, but its BatchNorm rule applies BN's scale and shift as separate ops and
sums their gradients separately, which changes the rounding (~1e-7 relative). ReLU inputs that
lie within that distance of zero then flip sign, and members drifted from their single trials
by 1e-4–1e-1 (relative) within 6–10 steps: 1 to 4 members in 12 in each setting tried (tiny
CIFAR-style nets, fp32, CPU), where the fused model below stays bitwise equal. It was also
slower on CPU (fwd+bwd 1.3–1.8× the time). The grouped model calls the very kernels the single
trial calls, and on CPU with one thread member k computes bit for bit what its single trial
computes: the grouped 3×3 conv and BN kernels give each group exactly the ungrouped result; the
few convs whose grouped oneDNN kernel rounds differently (1×1, and the 3-channel input) run per
member. With more threads (oneDNN splits weight-gradient sums differently) and on CUDA (cuDNN
picks its own algorithms) members match their single trials up to rounding, which the same
ReLU flips can amplify over a long run — as they amplify any change of kernel in a single trial.

Per member, exactly as ``resnet_core.train.Trainer`` does alone:
  * initial weights: ``torch.manual_seed(seed); build_model(...)``;
  * data: its own ``DeviceLoader`` whose generator is seeded ``seed + 1``;
  * random layers (drop-path, dropout): drawn from its own RNG state, the one its single trial
    has after building its model (the device's default generator is swapped in around them);
  * loss: ``F.cross_entropy`` with its label smoothing; the backward of the sum of the K losses
    gives each member its own gradient (members share no weights);
  * optimizer: torch's own fused SGD kernel (``torch._fused_sgd_``, what
    ``torch.optim.SGD(fused=True)`` runs) once per member on views of its slices, with its lr
    (``lr_factor`` of its TrainConfig), momentum, Nesterov and weight decay (none on 1-d
    parameters when bn_weight_decay is off, as ``Trainer._param_groups``); fp16 runs one
    GradScaler per member, as torch's ``GradScaler`` does with a fused optimizer;
  * divergence: its loss against its own limit, checked on the device at every step. A member
    that fails is frozen at once: the kernel's ``found_inf`` flag skips its update (nothing is
    computed from its NaN) and its BN statistics are restored with ``torch.where``. The host
    notices at most 50 steps later (as the single trainer does), marks it diverged and takes it
    out; the others go on.

Members that stop (diverged, or ``freeze(k, status)``, e.g. by ASHA) leave the fused model: the
others are re-stacked, so a stopped member costs nothing afterwards.

This module knows nothing of Ray or MLflow, like the trainer.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import metrics as M
from . import torch_compat
from .analysis import count_params, layer_responses
from .blocks import PadShortcut
from .config import RunConfig, planned_epochs
from .data import DeviceLoader, Splits, load_splits, normalization_stats
from .distributed import Shard, smallest_training_batch
from .errors import ConfigError
from .metrics import Status
from .resnet import build_model
from .train import Speed, _DivergenceWatch, lr_factor, resolve_device

__all__ = [
    "MEMBER_MODEL_FIELDS",
    "MEMBER_TRAIN_FIELDS",
    "ArrayEpochReport",
    "ArrayTrainer",
    "array_key",
    "check_members",
    "train_array",
]

# Settings each member may have for itself. Every other setting of the run (the model but its
# drop-path rate, the dataset, batch size, planned length, device, precision, layout) must be
# the same for all members. ``compile`` and ``fused_sgd`` are speed levers the array does not
# use (it always runs torch's fused SGD kernel, uncompiled), so they may differ too.
MEMBER_TRAIN_FIELDS = (
    "seed",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "bn_weight_decay",
    "schedule",
    "milestones",
    "gamma",
    "warmup_iterations",
    "warmup_lr",
    "label_smoothing",
    "divergence_factor",
    "compile",
    "fused_sgd",
)
MEMBER_MODEL_FIELDS = ("drop_path",)

# torch.amp.GradScaler's defaults: fp16 members each get their own dynamic loss scale.
_SCALE_INIT, _SCALE_GROWTH, _SCALE_BACKOFF, _SCALE_INTERVAL = 65536.0, 2.0, 0.5, 2000


# --- which trials may share an array ---------------------------------------------------------
def _shared_items(cfg: RunConfig) -> list[tuple[str, Any]]:
    """(flat key, value) of everything that members of one array must share."""
    items = []
    for section in ("model", "dataset", "train"):
        part = getattr(cfg, section)
        own = {"model": MEMBER_MODEL_FIELDS, "train": MEMBER_TRAIN_FIELDS + ("epochs", "iterations")}.get(section, ())
        items += [(f"{section}.{f.name}", getattr(part, f.name)) for f in dataclasses.fields(part) if f.name not in own]
    tc = cfg.train  # the planned length, as written (epochs, or iterations, or the paper's default)
    items.append(("train.epochs" if tc.epochs is not None else "train.iterations", tc.epochs or tc.iterations))
    return items


def array_key(cfg: RunConfig) -> tuple:
    """Hashable: two trials may share an array exactly when their keys are equal."""
    return tuple((key, tuple(v) if isinstance(v, list) else v) for key, v in _shared_items(cfg))


def check_members(cfgs: Sequence[RunConfig]) -> None:
    """Raise ConfigError naming the first setting the members do not share."""
    if not cfgs:
        raise ConfigError("array", "an array needs at least one member")
    first = _shared_items(cfgs[0])
    for k, cfg in enumerate(cfgs[1:], 1):
        for (key, a), (other_key, b) in zip(first, _shared_items(cfg)):
            if key != other_key:  # one gives epochs, the other iterations
                key, a, b = "train.epochs", f"{key}={a}", f"{other_key}={b}"
            if a != b:
                raise ConfigError(key, f"members of an array must share it: {a!r} (member 0) vs {b!r} (member {k})")
    for cfg in cfgs:
        if cfg.train.nesterov and cfg.train.momentum <= 0:  # torch.optim.SGD refuses it for a single trial
            raise ConfigError("train.nesterov", "Nesterov momentum needs train.momentum > 0")


# --- the grouped layers ----------------------------------------------------------------------
class _MemberRNG:
    """Each member's own state of the device's default generator, for its random layers: its
    single trial draws drop-path and dropout masks from the global RNG, seeded with its seed."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.states: list[torch.Tensor] = []  # of the members in the fused model, in slot order

    @contextmanager
    def member(self, i: int):
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            gen = torch.cuda.default_generators[index]
        else:
            gen = torch.default_generator
        outside = gen.get_state()
        gen.set_state(self.states[i])
        try:
            yield
        finally:
            self.states[i] = gen.get_state()
            gen.set_state(outside)


class _Grouped(nn.Module):
    """A layer of the fused model: K members' copies of one layer of the ordinary model."""

    def __init__(self) -> None:
        super().__init__()
        self.members = 1  # set on every re-stack


class _GroupedConv2d(_Grouped):
    """K convs as one conv with groups = K·groups. Weight K×O×I×h×w (its flat view is the
    grouped conv's weight, no copy). ``per_member``: run K ordinary convs instead (see
    ``_per_member_conv``)."""

    def __init__(self, conv: nn.Conv2d, per_member: bool, first: bool) -> None:
        super().__init__()
        if conv.padding_mode != "zeros":
            raise NotImplementedError(f"trial arrays: conv padding_mode {conv.padding_mode!r}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.per_member, self.first = per_member, first
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k_all = self.members
        # The model's first conv may get one batch for all members (evaluation): B×C×H×W.
        shared = self.first and k_all > 1 and x.shape[1] == self.in_channels
        if shared and self.groups != 1:
            x, shared = x.repeat(1, k_all, 1, 1), False
        args = (self.stride, self.padding, self.dilation, self.groups)
        if self.per_member:
            c = self.in_channels
            return torch.cat(
                [
                    F.conv2d(
                        x if shared else x[:, k * c : (k + 1) * c],
                        self.weight[k],
                        None if self.bias is None else self.bias[k],
                        *args,
                    )
                    for k in range(k_all)
                ],
                1,
            )
        weight = self.weight.flatten(0, 1)
        bias = None if self.bias is None else self.bias.flatten()
        return F.conv2d(
            x, weight, bias, self.stride, self.padding, self.dilation, self.groups if shared else self.groups * k_all
        )


class _GroupedBatchNorm2d(_Grouped):
    """K BNs as one over K·C channels: each member normalises with its own batch statistics and
    updates its own running statistics (K×C buffers whose flat views the kernel updates in place).
    Mirrors nn.BatchNorm2d.forward."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        if not (bn.affine and bn.track_running_stats and bn.momentum is not None):
            raise NotImplementedError("trial arrays: BN needs affine, running statistics and a momentum")
        self.eps, self.momentum = bn.eps, bn.momentum
        for name in ("weight", "bias"):
            self.register_parameter(name, None)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(
            x,
            self.running_mean.view(-1),
            self.running_var.view(-1),
            self.weight.view(-1),
            self.bias.view(-1),
            self.training,
            self.momentum,
            self.eps,
        )


class _GroupedLinear(_Grouped):
    """K linear layers: B×(K·I) in, K×B×O out (members first: the logits).

    One ``F.linear`` per member, not one batched matmul: a batched matmul's weight gradient sums
    in another order than ``F.linear``'s on some CPUs (AVX2 MKL), and the head is a negligible
    share of the step, so each member keeps its single trial's kernels bit for bit."""

    def __init__(self) -> None:
        super().__init__()
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.unflatten(1, (self.members, -1)).transpose(0, 1)  # K×B×I
        bias = [None] * self.members if self.bias is None else self.bias
        return torch.stack([F.linear(xs[k], self.weight[k], bias[k]) for k in range(self.members)])


class _GroupedPad(PadShortcut):
    """Option A shortcut (PadShortcut): subsample, then pad each member's channels. A
    PadShortcut still: blocks tell projections from identities by the shortcut's class."""

    def __init__(self, pad: PadShortcut) -> None:
        super().__init__(0, pad.extra_channels, pad.stride)
        self.members = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            x = F.pad(x.unflatten(1, (self.members, -1)), (0, 0, 0, 0, 0, self.extra_channels)).flatten(1, 2)
        return x


class _GroupedRandom(_Grouped):
    """Drop-path (torchvision's StochasticDepth, "row") or dropout, per member: each member's
    slice through the single trial's own function, with the member's RNG state swapped in, so
    it draws what its single trial draws. ``rates``: each member's drop rate (0 = identity,
    nothing drawn, as the single trial's nn.Identity / p = 0)."""

    def __init__(self, kind: str, rng: _MemberRNG) -> None:
        super().__init__()
        self.kind, self.rng = kind, rng
        self.rates: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not any(self.rates):
            return x
        parts = x.unflatten(1, (self.members, -1))
        out = []
        for i, rate in enumerate(self.rates):
            part = parts[:, i]
            if rate > 0:
                with self.rng.member(i):
                    if self.kind == "drop_path":
                        from torchvision.ops import stochastic_depth

                        part = stochastic_depth(part.contiguous(), rate, "row", True)
                    else:
                        part = F.dropout(part.contiguous(), rate, True)
            out.append(part)
        return torch.stack(out, 1).flatten(1, 2)


# Layers that work on the fused (B, K·C, …) tensor as they are: elementwise, or per channel
# without weights.
_AS_IS = (nn.ReLU, nn.Identity, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten)


def _per_member_conv(conv: nn.Conv2d, device: torch.device) -> bool:
    """Whether the fused model runs ``conv`` as K ordinary convs rather than one grouped conv.
    On CPU, oneDNN's grouped kernels give each group bit for bit the ungrouped result for 3×3
    convs over 16+ channels, but not for 1×1 convs nor for the 3-channel input (measured with
    torch 2.14, one thread); those run per member so that members stay exact. On other devices
    the grouped kernel is used throughout (fewest launches)."""
    thin = conv.in_channels // conv.groups <= 3
    return device.type == "cpu" and (thin or tuple(conv.kernel_size) == (1, 1))


def _fuse(model: nn.Module, rng: _MemberRNG, device: torch.device) -> tuple[nn.Module, dict[str, _GroupedRandom]]:
    """Swap the layers of ``model`` (a weightless copy) for grouped ones, in place. Returns it and
    its random layers by name. Raises NotImplementedError for a layer it does not know, so a new
    kind of layer cannot silently mix members."""
    randoms: dict[str, _GroupedRandom] = {}
    first_conv = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    for name, module in list(model.named_modules()):
        if not name:
            continue
        if isinstance(module, nn.Conv2d):
            grouped = _GroupedConv2d(module, per_member=_per_member_conv(module, device), first=name == first_conv)
        elif isinstance(module, nn.BatchNorm2d):
            grouped = _GroupedBatchNorm2d(module)
        elif isinstance(module, nn.Linear):
            grouped = _GroupedLinear()
        elif isinstance(module, PadShortcut):
            grouped = _GroupedPad(module)
        elif type(module).__name__ == "StochasticDepth":
            if module.mode != "row":
                raise NotImplementedError(f"trial arrays: stochastic depth mode {module.mode!r}")
            grouped = randoms[name] = _GroupedRandom("drop_path", rng)
        elif isinstance(module, nn.Dropout):
            grouped = randoms[name] = _GroupedRandom("dropout", rng)
        elif isinstance(module, _AS_IS) or list(module.children()):
            if next(module.parameters(recurse=False), None) is not None:
                raise NotImplementedError(f"trial arrays: {name} ({type(module).__name__}) has weights of its own")
            continue
        else:
            raise NotImplementedError(f"trial arrays: no grouped form of {name} ({type(module).__name__})")
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, grouped)
    return model, randoms


def _random_rates(model: nn.Module) -> dict[str, float]:
    """name → drop rate of every drop-path and dropout layer of an ordinary model."""
    rates = {}
    for name, m in model.named_modules():
        if type(m).__name__ == "StochasticDepth" or isinstance(m, nn.Dropout):
            rates[name] = float(m.p)
    return rates


# --- the trainer -----------------------------------------------------------------------------
@dataclass
class ArrayEpochReport:
    """What the array hands its callback after each epoch."""

    epoch: int
    epochs: int
    # member index → that member's metrics for this epoch (the keys of Trainer's history), for
    # the members that trained through it.
    metrics: dict[int, dict[str, float]]
    statuses: list[Status]  # every member's status now (running, diverged, stopped_early, …)
    diverged: list[int]  # members that diverged during this epoch
    trainer: ArrayTrainer

    def checkpoint(self) -> dict:
        """The array's full state after this epoch (for ``ArrayTrainer.load_state_dict``)."""
        return self.trainer.state_dict()

    def member_checkpoint(self, k: int) -> dict:
        """Member k's state in the single trainer's form (for ``Trainer.load_state_dict``)."""
        return self.trainer.member_state_dict(k)


class ArrayTrainer:
    """K trials of one shape trained as one fused model. ``run()`` trains every member to its end
    (completed, diverged or stopped) and returns one ``Trainer.result()``-shaped dict per member."""

    def __init__(self, cfgs: Sequence[RunConfig], *, splits: Splits | None = None) -> None:
        cfgs = list(cfgs)
        check_members(cfgs)
        self.cfgs, self.size = cfgs, len(cfgs)
        cfg0, tc0 = cfgs[0], cfgs[0].train
        self.device = resolve_device(tc0.device)
        splits = splits if splits is not None else load_splits(cfg0.dataset)
        self.splits = splits.to(self.device)
        self.num_classes = splits.num_classes
        resolved = Speed.resolve(tc0, self.device)
        # compile is not used; the SGD is torch's fused kernel, whatever fused_sgd says.
        self.speed = Speed(resolved.precision, resolved.channels_last, False, True)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.speed.precision)
        self.fp16 = self.speed.precision == "fp16"

        # Member k starts as its single trial does: the same seed, the same build.
        models, rng_states = [], []
        for cfg in cfgs:
            torch.manual_seed(cfg.train.seed)
            models.append(build_model(cfg.model, num_classes=splits.num_classes).to(self.device))
            if self.device.type == "cuda":  # torch.manual_seed seeded the device's generator too
                rng_states.append(torch.Generator(device=self.device).manual_seed(cfg.train.seed).get_state())
            else:
                rng_states.append(torch.get_rng_state())
        reference = models[0]
        self._param_names = [n for n, _ in reference.named_parameters()]
        self._buffer_names = [n for n, _ in reference.named_buffers()]
        self._shapes = {n: t.shape for n, t in reference.state_dict().items()}
        self._dtypes = {n: t.dtype for n, t in reference.state_dict().items()}
        self._decayed = [n for n in self._param_names if len(self._shapes[n]) > 1]  # Trainer._param_groups
        self._not_decayed = [n for n in self._param_names if n not in set(self._decayed)]
        self.params_count = count_params(reference)
        self._rates = [_random_rates(m) for m in models]

        # The fused model: a weightless copy whose layers are grouped; the member with the most
        # random layers gives it its drop-path slots (a member without drop-path has rate 0).
        self._rng = _MemberRNG(self.device)
        widest = max(range(self.size), key=lambda k: len(self._rates[k]))
        with torch.device("meta"):
            template = build_model(cfgs[widest].model, num_classes=splits.num_classes)
        self._fused, self._randoms = _fuse(template, self._rng, self.device)

        # Data: member k's loader draws from its own generator, seeded as its single trial's.
        mean, std = normalization_stats(self.splits.train_x, cfg0.dataset.normalize)
        self.generators = [torch.Generator(device=self.device).manual_seed(c.train.seed + 1) for c in cfgs]
        self.train_loaders = [
            DeviceLoader(
                self.splits.train_x,
                self.splits.train_y,
                batch_size=tc0.batch_size,
                train=True,
                augment=cfg0.dataset.augment,
                generator=g,
                mean=mean,
                std=std,
                smallest=smallest_training_batch(Shard(), sync_bn=True),
            )  # its single trial's batches
            for g in self.generators
        ]
        # Evaluation draws nothing: one loader feeds every member (the first conv shares it).
        eval_batch = max(tc0.batch_size, 1024 * 32 * 32 // (cfg0.dataset.image_size**2))
        common = dict(batch_size=eval_batch, mean=mean, std=std, channels_last=self.speed.channels_last)
        self.val_loader = DeviceLoader(self.splits.val_x, self.splits.val_y, **common)
        self.test_loader = DeviceLoader(self.splits.test_x, self.splits.test_y, **common)

        self.steps_per_epoch = len(self.train_loaders[0])
        self.epochs = planned_epochs(tc0, self.steps_per_epoch)
        self.total_steps = self.epochs * self.steps_per_epoch
        self.epoch = 0
        self.statuses = [Status.RUNNING] * self.size
        self.histories: list[list[dict[str, float]]] = [[] for _ in range(self.size)]
        self._responses: dict[int, tuple[int, list[float]]] = {}  # member → (epoch, layer response std)

        # Per-member state of the members outside the fused model: all of them, until stacked.
        self._store: dict[int, dict] = {}
        for k, m in enumerate(models):
            sd = m.state_dict()
            self._store[k] = {
                "params": {n: sd[n].detach().clone() for n in self._param_names},
                "buffers": {n: sd[n].detach().clone() for n in self._buffer_names},
                "momentum": {n: torch.zeros_like(sd[n]) for n in self._param_names},
                "started": False,  # has it taken a step (torch's SGD: the first sets buf = d_p)
                "scale": _SCALE_INIT,
                "growth_tracker": 0,
                "rng": rng_states[k],  # its random layers' RNG (see _MemberRNG)
            }
        del models, reference
        self._slots: list[int] = []
        self._restack(list(range(self.size)))

    # --- the fused state -------------------------------------------------------------------
    def _restack(self, members: list[int]) -> None:
        """Put the state of ``members`` (from the store) into the fused model, and move every
        member that was fused but is not in ``members`` out to the store."""
        for k, state in self._unstack().items():
            self._store[k] = state
        self._slots = list(members)
        ka, dev = len(members), self.device
        states = [self._store.pop(k) for k in members]
        for module in self._fused.modules():
            if isinstance(module, (_Grouped, _GroupedPad)):
                module.members = ka
        self._rng.states = [s["rng"] for s in states]
        for name, module in self._randoms.items():
            module.rates = [self._rates[k].get(name, 0.0) for k in members]
        if not ka:
            return

        def blocks(key: str, names: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            """One flat tensor holding each tensor as a contiguous K×… block, and those blocks."""
            flat = torch.cat([torch.stack([s[key][n] for s in states]).reshape(-1) for n in names]).to(dev)
            views, offset = {}, 0
            for n in names:
                size = ka * self._shapes[n].numel()
                views[n] = flat[offset : offset + size].view(ka, *self._shapes[n])
                offset += size
            return flat, views

        # Weights, gradients, momentum: one flat tensor each. The model's parameters are views of
        # the first; autograd accumulates into their .grad, views of the second.
        self._pflat, pviews = blocks("params", self._param_names)
        self._mflat, mviews = blocks("momentum", self._param_names)
        self._gflat = torch.zeros_like(self._pflat)
        gviews = {}
        offset = 0
        for n in self._param_names:
            size = ka * self._shapes[n].numel()
            gviews[n] = self._gflat[offset : offset + size].view(ka, *self._shapes[n])
            offset += size
        self._pviews, self._mviews, self._gviews = pviews, mviews, gviews
        for n in self._param_names:
            module_name, _, attr = n.rpartition(".")
            param = nn.Parameter(pviews[n])  # shares pviews[n]'s memory
            param.grad = gviews[n]
            self._fused.get_submodule(module_name).register_parameter(attr, param)
        # Buffers (BN statistics): one flat tensor per dtype, a snapshot of it, and the member
        # of each element, so freezing dead members' statistics is one torch.where per dtype.
        self._bflat = []
        buffers: dict[str, torch.Tensor] = {}
        for dtype in dict.fromkeys(self._dtypes[n] for n in self._buffer_names):
            names = [n for n in self._buffer_names if self._dtypes[n] == dtype]
            flat, views = blocks("buffers", names)
            owner = torch.cat([torch.arange(ka, device=dev).repeat_interleave(self._shapes[n].numel()) for n in names])
            self._bflat.append((flat, torch.empty_like(flat), owner))
            buffers.update(views)
        self._bviews = buffers
        for n, view in buffers.items():
            module_name, _, attr = n.rpartition(".")
            self._fused.get_submodule(module_name)._buffers[attr] = view

        # What torch's fused SGD kernel gets per member: views of its slices, by weight-decay
        # group (Trainer._param_groups: no decay on 1-d parameters without bn_weight_decay).
        self._sgd_groups = []
        for i, k in enumerate(members):
            tc = self.cfgs[k].train
            groups = []
            for names, wd in (
                (self._decayed, tc.weight_decay),
                (self._not_decayed, tc.weight_decay if tc.bn_weight_decay else 0.0),
            ):
                if names:
                    groups.append(
                        (
                            [pviews[n][i] for n in names],
                            [gviews[n][i] for n in names],
                            [mviews[n][i] for n in names] if tc.momentum != 0 else [],
                            wd,
                        )
                    )
            self._sgd_groups.append(groups)
        self._started = [s["started"] for s in states]
        f32 = dict(device=dev, dtype=torch.float32)
        self._scale = torch.tensor([s["scale"] for s in states], **f32)
        self._growth_tracker = torch.tensor([s["growth_tracker"] for s in states], device=dev, dtype=torch.int32)
        self._found_inf = torch.zeros(ka, **f32)  # fp16: a member's gradients overflowed this step
        self._skip = torch.zeros(ka, **f32)  # the kernel's found_inf: 1 = leave this member as it is
        self._dead = torch.zeros(ka, device=dev, dtype=torch.bool)  # diverged, not yet taken out
        self._one = torch.ones((), **f32)
        self._label_smoothing = [self.cfgs[k].train.label_smoothing for k in members]
        limits = [self.cfgs[k].train.divergence_factor * math.log(self.num_classes) for k in members]
        self._limit = torch.tensor([x if x > 0 else math.inf for x in limits], **f32)

    def _unstack(self, only: int | None = None) -> dict[int, dict]:
        """Member → its state (copies), for every member now in the fused model (or ``only``)."""
        out = {}
        for i, k in enumerate(self._slots):
            if only is not None and k != only:
                continue
            out[k] = {
                "params": {n: self._pviews[n][i].clone() for n in self._param_names},
                "buffers": {n: self._bviews[n][i].clone() for n in self._buffer_names},
                "momentum": {n: self._mviews[n][i].clone() for n in self._param_names},
                "started": self._started[i],
                "scale": float(self._scale[i]),
                "growth_tracker": int(self._growth_tracker[i]),
                "rng": self._rng.states[i].clone(),
            }
        return out

    def _member_state(self, k: int) -> dict:
        """Member k's state (copies), wherever it is."""
        if k in self._slots:
            return self._unstack(only=k)[k]
        return copy.deepcopy(self._store[k])

    def active(self) -> list[int]:
        """The members still training (in the fused model)."""
        return list(self._slots)

    def freeze(self, k: int, status: Status | str = Status.STOPPED_EARLY) -> None:
        """Stop member ``k`` (e.g. ASHA stopped it): its state stays as it is now, it leaves the
        fused model and ends with ``status``. Call between epochs (from the report callback).
        A member already stopped keeps its first status."""
        status = Status(status)
        if status == Status.RUNNING:
            raise ValueError("freeze needs a final status, not running")
        if not 0 <= k < self.size:
            raise IndexError(f"member {k} of an array of {self.size}")
        if k in self._slots:
            self.statuses[k] = status
            self._restack([j for j in self._slots if j != k])

    # --- one step --------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits K×B×classes. ``x``: B×(K·C)×H×W (each member's batch) or B×C×H×W (shared)."""
        if self.speed.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._fused(x)

    def _losses(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each member's loss (K), computed as its single trial's criterion computes it."""
        return torch.stack(
            [F.cross_entropy(logits[i], y[i], label_smoothing=eps) for i, eps in enumerate(self._label_smoothing)]
        )

    @torch.no_grad()
    def _sgd_step(self, lrs: list[float]) -> None:
        """One SGD step of every member not flagged in ``self._skip``.

        torch.optim.SGD has one lr (momentum, weight decay) per param group; the members need
        their own, so each member's slices go through the kernel torch.optim.SGD(fused=True)
        runs, once per member and weight-decay group: the same arithmetic as its single trial
        (d_p = g + wd·p; buf = d_p at the first step, then m·buf + d_p; step = d_p + m·buf
        with Nesterov, else buf; p −= lr·step). ``found_inf`` = 1 makes the kernel skip a
        member entirely, on the device: a diverged member's NaN is never read into anything.
        fp16: the kernel also divides the gradients by the member's loss scale, as it does for
        torch's GradScaler."""
        for i, groups in enumerate(self._sgd_groups):
            tc = self.cfgs[self._slots[i]].train
            for params, grads, bufs, wd in groups:
                torch_compat.fused_sgd_(
                    params,
                    grads,
                    bufs,
                    weight_decay=wd,
                    momentum=tc.momentum,
                    lr=lrs[i],
                    dampening=0.0,
                    nesterov=tc.nesterov,
                    maximize=False,
                    is_first_step=not self._started[i],
                    grad_scale=self._scale[i : i + 1] if self.fp16 else None,
                    found_inf=self._skip[i : i + 1],
                )
            self._started[i] = True

    @torch.no_grad()
    def _check_overflow(self) -> None:
        """fp16: GradScaler._check_inf_per_device per member (its gradients, still scaled)."""
        self._found_inf.zero_()
        for i, groups in enumerate(self._sgd_groups):
            grads = [g for group in groups for g in group[1]]
            torch_compat.unscale_and_check_(grads, self._found_inf[i : i + 1], self._one)

    @torch.no_grad()
    def _update_scales(self) -> None:
        """fp16: GradScaler.update per member."""
        for i in range(len(self._slots)):
            torch_compat.update_scale_(
                self._scale[i : i + 1],
                self._growth_tracker[i : i + 1],
                self._found_inf[i : i + 1],
                _SCALE_GROWTH,
                _SCALE_BACKOFF,
                _SCALE_INTERVAL,
            )

    def _step(self, x: torch.Tensor, y: torch.Tensor, lrs: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step of every member: (losses K, logits K×B×classes), both detached."""
        for flat, snapshot, _ in self._bflat:
            snapshot.copy_(flat)
        with self._autocast():
            logits = self._forward(x)
            losses = self._losses(logits, y)
        self._gflat.zero_()
        (losses * self._scale if self.fp16 else losses).sum().backward()
        with torch.no_grad():
            losses = losses.detach()
            # Trainer's test, at every step: a non-finite loss or one above the member's limit.
            self._dead |= ~torch.isfinite(losses) | (losses.float() > self._limit)
            if self.fp16:
                self._check_overflow()
                torch.maximum(self._found_inf, self._dead.float(), out=self._skip)
            else:
                self._skip.copy_(self._dead)
            self._sgd_step(lrs)
            if self.fp16:
                self._update_scales()
            alive = ~self._dead
            for flat, snapshot, owner in self._bflat:  # a dead member's BN statistics stay as they were
                torch.where(alive[owner], flat, snapshot, out=flat)
        return losses, logits.detach()

    # --- epochs ----------------------------------------------------------------------------
    @staticmethod
    def _batch(iters: list) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch of every member's loader, as the fused model takes it: B×(K·C)×H×W, K×B."""
        batches = [next(it) for it in iters]
        return torch.stack([b[0] for b in batches], 1).flatten(1, 2), torch.stack([b[1] for b in batches])

    def train_steps(self, steps: int) -> int:
        """``steps`` training steps of every active member (at most an epoch's), outside the run's
        epochs, as ``Trainer.train_steps``: for timing (resnet_core.calibrate); the weights change.
        Returns the images each member trained."""
        self._fused.train()
        iters = [iter(self.train_loaders[k]) for k in self._slots]
        seen = 0
        for step in range(min(steps, self.steps_per_epoch)):
            x, y = self._batch(iters)
            self._step(x, y, [self._lr(k, step) for k in self._slots])
            seen += y.shape[1]
        return seen

    def _train_epoch(self) -> tuple[dict[int, dict[str, float]], list[int]]:
        """One pass of every active member over its training data: (member → metrics, for the
        members that finished it; members that diverged in it)."""
        self._fused.train()
        dev, n_steps = self.device, self.steps_per_epoch
        first = self.epoch * n_steps
        ka = len(self._slots)
        epoch_lr = {k: self._lr(k, first) for k in self._slots}
        loss_sum = torch.zeros(ka, device=dev, dtype=torch.float64)
        max_loss = torch.zeros(ka, device=dev)
        wrong = torch.zeros(ka, device=dev, dtype=torch.long)
        iters = [iter(self.train_loaders[k]) for k in self._slots]
        diverged: list[int] = []
        watch = _DivergenceWatch(dev)
        seen = 0
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        for step in range(n_steps):
            x, y = self._batch(iters)
            losses, logits = self._step(x, y, [self._lr(k, first + step) for k in self._slots])
            loss_sum += losses.double() * y.shape[1]
            max_loss = torch.maximum(max_loss, losses.float())
            wrong += (logits.argmax(-1) != y).sum(1)
            seen += y.shape[1]
            last = step == n_steps - 1
            if last or ((step + 1) % watch.EVERY == 0 and watch.check(self._dead.any())):
                gone = self._dead.nonzero().flatten().tolist()
                if gone:
                    diverged += [self._slots[i] for i in gone]
                    keep = [i for i in range(len(self._slots)) if i not in gone]
                    for i in gone:
                        self.statuses[self._slots[i]] = Status.DIVERGED
                    self._restack([self._slots[i] for i in keep])
                    iters = [iters[i] for i in keep]
                    loss_sum, max_loss, wrong = loss_sum[keep], max_loss[keep], wrong[keep]
                    if not self._slots:
                        return {}, diverged
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - start
        losses, errors = loss_sum.tolist(), wrong.tolist()
        return {
            k: {
                M.TRAIN_LOSS: losses[i] / seen,
                M.TRAIN_ERROR: errors[i] / seen,
                M.LR: epoch_lr[k],
                M.IMAGES_PER_SECOND: seen / seconds,  # this member's images; the array did K× as many
                M.EPOCH_SECONDS: seconds,
            }
            for i, k in enumerate(self._slots)
        }, diverged

    def _lr(self, k: int, step: int) -> float:
        """Member k's lr at optimizer step ``step``, as its single trial's LambdaLR gives it."""
        tc = self.cfgs[k].train
        return tc.lr * lr_factor(step, self.total_steps, tc)

    @torch.no_grad()
    def evaluate(self, loader: DeviceLoader) -> dict[int, tuple[float, float]]:
        """member → (mean loss, error) of the single original view of each image, for every
        member in the fused model (eval mode: each member's running BN statistics)."""
        self._fused.eval()
        ka = len(self._slots)
        loss_sum = torch.zeros(ka, device=self.device, dtype=torch.float64)
        wrong = torch.zeros(ka, device=self.device, dtype=torch.long)
        seen = 0
        for x, y in loader:
            with self._autocast():
                logits = self._forward(x)
            for i in range(ka):
                loss_sum[i] += F.cross_entropy(logits[i].float(), y, reduction="sum").double()
            wrong += (logits.argmax(-1) != y).sum(1)
            seen += len(y)
        losses, errors = loss_sum.tolist(), wrong.tolist()
        return {k: (losses[i] / max(seen, 1), errors[i] / max(seen, 1)) for i, k in enumerate(self._slots)}

    def run(self, report: Callable[[ArrayEpochReport], None] | None = None) -> list[dict[str, Any]]:
        """Train every member to the last epoch, as ``Trainer.run`` trains one: a member that
        diverges is frozen and the others go on; ``report`` gets each epoch's metrics of every
        member still training. Returns each member's result (``result(k)``)."""
        while self.epoch < self.epochs and self._slots:
            train_metrics, diverged = self._train_epoch()
            if not self._slots:  # every member diverged within the epoch
                break
            self.epoch += 1
            val = self.evaluate(self.val_loader)
            test = self.evaluate(self.test_loader)  # reported only, never used to choose
            metrics = {}
            for k, tm in train_metrics.items():
                metrics[k] = {
                    M.EPOCH: self.epoch,
                    M.ITERATION: self.epoch * self.steps_per_epoch,
                    **tm,
                    M.VAL_LOSS: val[k][0],
                    M.VAL_ERROR: val[k][1],
                    M.TEST_ERROR: test[k][1],
                }
                self.histories[k].append(metrics[k])
            if report is not None:
                report(ArrayEpochReport(self.epoch, self.epochs, metrics, list(self.statuses), diverged, self))
        if self.epoch >= self.epochs:
            for k in self._slots:
                self.statuses[k] = Status.COMPLETED
        return self.results()

    # --- members as single trials ----------------------------------------------------------
    def member_model(self, k: int) -> nn.Module:
        """An ordinary model (the single trial's) with member k's weights and BN statistics, on
        the array's device, in train mode; building it draws no random numbers."""
        with torch.device("meta"):
            model = build_model(self.cfgs[k].model, num_classes=self.num_classes)
        state = self._member_state(k)
        model.load_state_dict({**state["params"], **state["buffers"]}, assign=True)
        return model

    def layer_response_std(self, k: int) -> list[float]:
        """2015 Fig. 7 for member k on the val split (as Trainer.layer_response_std); measured
        once per epoch (a report and the result may both ask for it)."""
        cached = self._responses.get(k)
        if cached is None or cached[0] != self.epoch:
            cached = self._responses[k] = (
                self.epoch,
                layer_responses(self.member_model(k), (x for x, _ in self.val_loader)),
            )
        return list(cached[1])

    def result(self, k: int) -> dict[str, Any]:
        """Member k's result, shaped as ``Trainer.result()`` (plus its place in the array)."""
        cfg = self.cfgs[k]
        return {
            **M.run_result(
                status=self.statuses[k],
                name=cfg.model.name,
                epochs=self.epochs,
                history=self.histories[k],
                layer_response_std=[] if self.statuses[k] == Status.DIVERGED else self.layer_response_std(k),
                final={},  # arrays hold data in memory: no 10-crop test
                params=self.params_count,
                device=str(self.device),
                speed=f"{self.speed} array={self.size}",
                config=cfg.to_flat(),
            ),
            "array_member": k,
            "array_size": self.size,
        }

    def results(self) -> list[dict[str, Any]]:
        return [self.result(k) for k in range(self.size)]

    # --- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """A snapshot (copies) of everything an exact resume needs: every member's weights, BN
        statistics, momentum, loss scale, RNG and loader generator, status and history."""
        fused = self._unstack()
        members = []
        for k in range(self.size):
            state = fused[k] if k in fused else self._store[k]
            members.append(
                {
                    "model": {**state["params"], **state["buffers"]},
                    "momentum": state["momentum"],
                    "started": state["started"],
                    "scale": state["scale"],
                    "growth_tracker": state["growth_tracker"],
                    "rng": state["rng"],
                    "loader_rng": self.generators[k].get_state(),
                    "status": str(self.statuses[k]),
                    "history": self.histories[k],
                }
            )
        return copy.deepcopy(
            {
                "array": self.size,
                "epoch": self.epoch,
                "configs": [c.to_flat() for c in self.cfgs],
                "members": members,
            }
        )

    def load_state_dict(self, state: dict) -> None:
        if state.get("array") != self.size:
            raise ValueError(f"the checkpoint is of an array of {state.get('array')} members, not {self.size}")
        seeds = [c.get("train.seed") for c in state.get("configs", [])]
        if seeds and seeds != [c.train.seed for c in self.cfgs]:
            raise ValueError(
                f"the checkpoint's members have seeds {seeds}, this array's "
                f"{[c.train.seed for c in self.cfgs]}: not the same members in the same order"
            )
        store = {}
        for k, member in enumerate(state["members"]):
            model = {n: t.to(self.device) for n, t in member["model"].items()}
            store[k] = {
                "params": {n: model[n].clone() for n in self._param_names},
                "buffers": {n: model[n].clone() for n in self._buffer_names},
                "momentum": {n: t.to(self.device).clone() for n, t in member["momentum"].items()},
                "started": bool(member["started"]),
                "scale": float(member["scale"]),
                "growth_tracker": int(member["growth_tracker"]),
                "rng": member["rng"].cpu().clone(),
            }
            self.generators[k].set_state(member["loader_rng"].cpu())
            self.statuses[k] = Status(member["status"])
            self.histories[k] = [dict(h) for h in member["history"]]
        self._slots = []  # the fused state is replaced, not saved
        self._responses = {}
        self._store = store
        self.epoch = state["epoch"]
        self._restack([k for k in range(self.size) if self.statuses[k] == Status.RUNNING])

    def member_state_dict(self, k: int) -> dict:
        """Member k's state in ``Trainer.state_dict()``'s form: ``Trainer(cfgs[k])`` can
        ``load_state_dict`` it and go on as the single trial would (model, SGD momentum,
        scheduler, scaler, loader generator, RNG, history)."""
        cfg, state = self.cfgs[k], self._member_state(k)
        tc = cfg.train
        model = self.member_model(k)
        if tc.bn_weight_decay:
            groups = [{"params": list(model.parameters()), "weight_decay": tc.weight_decay}]
        else:
            groups = [
                {"params": [p for p in model.parameters() if p.ndim > 1], "weight_decay": tc.weight_decay},
                {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0},
            ]
        kwargs = dict(lr=tc.lr, momentum=tc.momentum, nesterov=tc.nesterov)
        optimizer = None
        if tc.fused_sgd:  # as Trainer._sgd
            try:
                optimizer = torch.optim.SGD(groups, fused=True, **kwargs)
            except RuntimeError:
                pass
        if optimizer is None:
            optimizer = torch.optim.SGD(groups, foreach=self.device.type != "cpu", **kwargs)
        if state["started"] and tc.momentum != 0:
            named = dict(model.named_parameters())
            for n in self._param_names:
                optimizer.state[named[n]] = {"momentum_buffer": state["momentum"][n].clone()}
        steps = len(self.histories[k]) * self.steps_per_epoch
        for group in optimizer.param_groups:
            group["initial_lr"] = tc.lr
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, self.total_steps, tc), last_epoch=steps - 1
        )
        scheduler_state = scheduler.state_dict()
        scheduler_state["_step_count"] = steps + 1  # as if stepped once per iteration
        scaler = torch.amp.GradScaler(self.device.type, init_scale=state["scale"], enabled=self.fp16)
        if self.fp16:  # GradScaler's own state format: it takes the tracker at its first step
            scaler.load_state_dict({**scaler.state_dict(), "_growth_tracker": int(state["growth_tracker"])})
        cuda = self.device.type == "cuda"
        cuda_rng = None
        if cuda:
            cuda_rng = torch.cuda.get_rng_state_all()
            cuda_rng[self.device.index or 0] = state["rng"]
        return copy.deepcopy(
            {
                "epoch": len(self.histories[k]),
                "config": cfg.to_flat(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler_state,
                "scaler": scaler.state_dict(),
                "loader_rng": self.generators[k].get_state(),
                "torch_rng": torch.get_rng_state() if cuda else state["rng"],
                "cuda_rng": cuda_rng,
                "history": self.histories[k],
            }
        )


def train_array(
    cfgs: Sequence[RunConfig],
    *,
    report: Callable[[ArrayEpochReport], None] | None = None,
    resume: dict | None = None,
    splits: Splits | None = None,
) -> list[dict[str, Any]]:
    """Train ``cfgs`` as one array (from ``resume``'s state when given); one result per member."""
    trainer = ArrayTrainer(cfgs, splits=splits)
    if resume is not None:
        trainer.load_state_dict(resume)
    return trainer.run(report)
