"""The training loop: the paper's recipe by default (2015 §3.4, §4.2), device-resident or streamed data,
exact checkpoint/resume, divergence handling, and the layer responses of Fig. 7. One process, or
several training one run data-parallel (DDP: resnet_core.distributed).

It reports each epoch through a callback and knows nothing of Ray or MLflow.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import metrics as M
from .analysis import count_params, layer_responses
from .config import PAPER_ITERATIONS, PRECISIONS, SCHEDULES, RunConfig, TrainConfig, planned_epochs, steps_per_epoch
from .data import Splits, make_loaders
from .distributed import Shard, sync_batchnorm
from .errors import ConfigError
from .metrics import Status
from .resnet import build_model

__all__ = [
    "PAPER_ITERATIONS",
    "PRECISIONS",
    "SCHEDULES",
    "EpochReport",
    "RunConfig",
    "Speed",
    "TrainConfig",
    "Trainer",
    "lr_factor",
    "planned_epochs",
    "resolve_device",
    "steps_per_epoch",
    "train",
]


def resolve_device(name: str) -> torch.device:
    """The training device. Checked here, where the run happens (a sweep's driver may have no GPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError("train.device", f"{name!r} is not available here ({torch.cuda.device_count()} CUDA devices)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device", f"{name!r} is not available here")
    return device


@dataclass(frozen=True)
class Speed:
    """The speed levers of a run as resolved on its device ("auto" decided)."""

    precision: str
    channels_last: bool
    compile: bool | str
    fused_sgd: bool

    @classmethod
    def resolve(cls, tc: TrainConfig, device: torch.device) -> Speed:
        cuda = device.type == "cuda"
        precision = tc.precision
        if precision == "auto":
            precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
        channels_last = cuda if tc.channels_last == "auto" else bool(tc.channels_last)
        return cls(precision, channels_last, tc.compile, tc.fused_sgd)

    def __str__(self) -> str:
        """One line for MLflow and logs, e.g. ``bf16 channels_last fused-sgd``."""
        words = [self.precision]
        if self.channels_last:
            words.append("channels_last")
        if self.compile:
            words.append("compile" if self.compile is True else f"compile={self.compile}")
        if self.fused_sgd:
            words.append("fused-sgd")
        return " ".join(words)


class _DivergenceWatch:
    """Reads the device's "diverged" flag without stalling a GPU: each check starts a copy of
    the flag into pinned host memory and reads the copy the previous check started, once it has
    arrived. A diverging run stops at most two checks late; the epoch's end reads the flag
    directly, so none is missed. On CPU the flag is read at once (there is nothing to stall)."""

    EVERY = 50  # steps between checks

    def __init__(self, device: torch.device) -> None:
        cuda = device.type == "cuda"
        self.host = torch.zeros((), dtype=torch.bool, pin_memory=cuda)
        self.copied = torch.cuda.Event() if cuda else None
        self.pending = False

    def check(self, flag: torch.Tensor) -> bool:
        if self.copied is None:
            return bool(flag)
        seen = False
        if self.pending and self.copied.query():
            seen, self.pending = bool(self.host), False
        if not self.pending:
            self.host.copy_(flag, non_blocking=True)
            self.copied.record()
            self.pending = True
        return seen


def lr_factor(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` at optimizer step ``step`` (0-based). After warm-up it is exactly
    the schedule's value, so the lr truly returns to ``cfg.lr`` (the MultiStepLR pitfall)."""
    if step < cfg.warmup_iterations:
        return cfg.warmup_lr / cfg.lr
    if cfg.schedule == "multistep":
        passed = sum(step >= round(m * total_steps) for m in cfg.milestones)
        return cfg.gamma**passed
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return 1.0


@dataclass
class EpochReport:
    """What the trainer hands its callback after each epoch."""

    epoch: int
    epochs: int
    metrics: dict[str, float]
    trainer: Trainer

    def checkpoint(self) -> dict:
        """The full training state after this epoch (for ``Trainer.load_state_dict``)."""
        return self.trainer.state_dict()


class Trainer:
    """One training run. ``run()`` trains to the end (or divergence) and returns the result."""

    def __init__(self, cfg: RunConfig, *, splits: Splits | None = None, shard: Shard = Shard()) -> None:
        """``shard``: this process's place when several train the run data-parallel (torch's
        process group set up): each trains on its part of every batch of ``cfg.train.batch_size``."""
        self.cfg = cfg
        tc = cfg.train
        self.shard = shard
        self.device = resolve_device(tc.device)
        self.speed = Speed.resolve(tc, self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(tc.seed + 1)
        loaders = make_loaders(
            cfg, self.device, self.generator, channels_last=self.speed.channels_last, splits=splits, shard=shard
        )
        self.splits, self.num_classes = loaders.splits, loaders.num_classes
        self.train_loader, self.val_loader, self.test_loader = loaders.train, loaders.val, loaders.test
        self.ten_crop_loader = loaders.ten_crop

        torch.manual_seed(tc.seed)
        self.model = build_model(cfg.model, num_classes=self.num_classes).to(self.device)
        if self.speed.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = self.infer = self.model  # training's forward; evaluation's
        if shard.distributed:
            if tc.sync_bn:
                self.model = sync_batchnorm(self.model, self.device)
            # Buffers need no broadcast: the running statistics are the same in every process
            # with sync_bn; without, each process's own until the epoch's end averages them
            # (_average_bn_statistics), so every process evaluates and checkpoints one model.
            self.forward = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None, forward_sync_buffers=False
            )
            self.infer = self.model  # evaluation runs no collectives: processes may see different numbers of batches
        if self.speed.compile:
            mode = None if self.speed.compile is True else self.speed.compile
            self.forward = torch.compile(self.forward, mode=mode)
            self.infer = self.forward if not shard.distributed else torch.compile(self.model, mode=mode)

        self.epochs = planned_epochs(tc, len(self.train_loader))
        self.total_steps = self.epochs * len(self.train_loader)

        self.optimizer = self._sgd()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, self.total_steps, tc)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.speed.precision == "fp16")
        self.criterion = nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing)
        self.criterion_sum = nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing, reduction="sum")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.speed.precision)
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.status = Status.RUNNING
        self._measured: dict[str, tuple[int, Any]] = {}  # what _once_per_epoch measured: (epoch, value)

    def _sgd(self) -> torch.optim.SGD:
        """The paper's SGD; fused into one kernel per step where torch has one for the device,
        else its multi-tensor (foreach) form. Both compute the same update."""
        tc = self.cfg.train
        kwargs = dict(lr=tc.lr, momentum=tc.momentum, nesterov=tc.nesterov)
        if self.speed.fused_sgd:
            try:
                return torch.optim.SGD(self._param_groups(), fused=True, **kwargs)
            except RuntimeError:  # no fused kernel for this device
                pass
        return torch.optim.SGD(self._param_groups(), foreach=self.device.type != "cpu", **kwargs)

    def _param_groups(self) -> list[dict]:
        tc = self.cfg.train
        if tc.bn_weight_decay:
            return [{"params": list(self.model.parameters()), "weight_decay": tc.weight_decay}]
        decay = [p for p in self.model.parameters() if p.ndim > 1]
        no_decay = [p for p in self.model.parameters() if p.ndim <= 1]
        return [
            {"params": decay, "weight_decay": tc.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def _new_step(self) -> None:
        """Tells torch.compile's CUDA graphs that the last step's outputs are done with."""
        if self.speed.compile:
            torch.compiler.cudagraph_mark_step_begin()

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    # --- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """A snapshot (deep copy) of everything a resume needs, loader position included."""
        return copy.deepcopy(
            {
                "epoch": self.epoch,
                "config": self.cfg.to_flat(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "loader_rng": self.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
                "history": self.history,
            }
        )

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["loader_rng"].cpu())  # RNG states are CPU byte tensors
        torch.set_rng_state(state["torch_rng"].cpu())
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.epoch = state["epoch"]
        self.history = list(state["history"])

    # --- the loop --------------------------------------------------------------------------
    def _diverged(self, loss_sum: torch.Tensor, max_loss: torch.Tensor) -> torch.Tensor:
        """On the device, so asking costs no host sync (see _DivergenceWatch)."""
        limit = self.cfg.train.divergence_factor * math.log(self.num_classes)
        blown = ~torch.isfinite(loss_sum)
        return blown | (max_loss > limit) if limit > 0 else blown

    def _loss(
        self, logits: torch.Tensor, y: torch.Tensor, global_size: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the loss to backpropagate, its sum over this process's images, their mean). Data
        parallel, each process's part of the batch weighs by its share of the global batch:
        DDP averages the processes' gradients, which then equal the global batch mean's."""
        if not self.shard.distributed:
            loss = self.criterion(logits, y)
            return loss, loss.detach().double() * len(y), loss.detach().float()
        summed = self.criterion_sum(logits, y)
        mean = summed.detach().float() / max(len(y), 1)
        return summed * (self.shard.size / global_size), summed.detach().double(), mean

    def _step(self, x: torch.Tensor, y: torch.Tensor, global_size: int) -> tuple[torch.Tensor, ...]:
        """One optimizer step on the batch (x, y): (its logits, its loss's sum, its mean) (_loss)."""
        self._new_step()
        with self._autocast():
            logits = self.forward(x)
            loss, batch_sum, batch_mean = self._loss(logits, y, global_size)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return logits, batch_sum, batch_mean

    def train_steps(self, steps: int) -> int:
        """``steps`` optimizer steps (at most an epoch's) on batches drawn as an epoch draws them,
        outside the run's epochs: for timing the trainer (resnet_core.calibrate); the weights
        change. Returns the images trained."""
        self.model.train()
        sizes = self.train_loader.sizes()
        seen = 0
        for step, (x, y) in zip(range(steps), self.train_loader):
            self._step(x, y, sizes[step])
            seen += len(y)
        return seen

    def _train_epoch(self) -> dict[str, float] | None:
        """One pass over the training split; None when the run diverged."""
        self.model.train()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        max_loss = torch.zeros((), device=self.device)
        wrong = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        watch = _DivergenceWatch(self.device)
        lr = self.optimizer.param_groups[0]["lr"]
        sizes = self.train_loader.sizes()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        for step, (x, y) in enumerate(self.train_loader, 1):
            logits, batch_sum, batch_mean = self._step(x, y, sizes[step - 1])
            loss_sum += batch_sum
            max_loss = torch.maximum(max_loss, batch_mean)
            wrong += (logits.detach().argmax(1) != y).sum()
            seen += len(y)
            if step % watch.EVERY == 0 and self._stop(watch, loss_sum, max_loss):
                return None
        if self.shard.any(self._diverged(loss_sum, max_loss)):
            return None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        if self.shard.distributed and not self.cfg.train.sync_bn:
            self._average_bn_statistics()
        loss_sum, wrong, seen = self.shard.sum(
            torch.stack([loss_sum, wrong.double(), torch.tensor(float(seen), dtype=torch.float64, device=self.device)])
        ).tolist()
        return {
            M.TRAIN_LOSS: loss_sum / seen,
            M.TRAIN_ERROR: wrong / seen,
            M.LR: lr,
            M.IMAGES_PER_SECOND: seen / seconds,
            M.EPOCH_SECONDS: seconds,
        }

    def _average_bn_statistics(self) -> None:
        """Each process's batch-norm running statistics replaced by their mean over all: what
        every process then evaluates and checkpoints is one model (timm's distribute_bn does the
        same), and a checkpoint of any process resumes them all exactly."""
        buffers = [m for m in self.model.modules() if isinstance(m, nn.BatchNorm2d) and m.track_running_stats]
        stats = [b for m in buffers for b in (m.running_mean, m.running_var)]
        if not stats:
            return
        flat = torch.cat([t.double().reshape(-1) for t in stats])
        self.shard.sum(flat).div_(self.shard.size)
        for t, mean in zip(stats, flat.split([t.numel() for t in stats])):
            t.copy_(mean.view_as(t))

    def _stop(self, watch: _DivergenceWatch, loss_sum: torch.Tensor, max_loss: torch.Tensor) -> bool:
        """Whether the run diverged, asked every watch.EVERY steps. Data-parallel processes ask
        all at once and read the answer at once, so they stop at the same step."""
        if self.shard.distributed:
            return self.shard.any(self._diverged(loss_sum, max_loss))
        return watch.check(self._diverged(loss_sum, max_loss))

    def _summed(self, *values: torch.Tensor) -> list[float]:
        """``values`` (device scalars or vectors) summed over the data-parallel processes, as floats."""
        flat = torch.cat([v.double().reshape(-1) for v in values])
        return self.shard.sum(flat).tolist()

    @torch.no_grad()
    def evaluate(self, loader) -> tuple[float, float]:
        """(mean loss, error) of the single original view of each image."""
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        wrong = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        for x, y in loader:
            self._new_step()
            with self._autocast():
                logits = self.infer(x)
            loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum").double()
            wrong += (logits.argmax(1) != y).sum()
            seen += len(y)
        loss_sum, wrong, seen = self._summed(loss_sum, wrong, torch.tensor(seen, device=self.device))
        return loss_sum / max(seen, 1), wrong / max(seen, 1)

    @torch.no_grad()
    def evaluate_ten_crop(self, loader) -> dict[str, float]:
        """10-crop testing (2015 Table 3) on a loader of ten crops per image: the class
        probabilities (softmax) averaged over each image's crops, as AlexNet averages its
        predictions (Krizhevsky et al. 2012 §4.1); top-1 and top-5 errors."""
        self.model.eval()
        wrong = torch.zeros(2, device=self.device, dtype=torch.long)
        seen = 0
        for x, y in loader:
            self._new_step()
            with self._autocast():
                logits = self.infer(x)
            probs = logits.float().softmax(1).unflatten(0, (len(y), -1)).mean(1)
            top5 = probs.topk(min(5, probs.shape[1]), 1).indices
            wrong += torch.stack([(top5[:, 0] != y).sum(), (top5 != y[:, None]).all(1).sum()])
            seen += len(y)
        top1_wrong, top5_wrong, seen = self._summed(wrong, torch.tensor(seen, device=self.device))
        return {M.TEST_ERROR_10CROP: top1_wrong / max(seen, 1), M.TEST_TOP5_ERROR_10CROP: top5_wrong / max(seen, 1)}

    def best_epoch(self) -> dict[str, float] | None:
        """The best epoch so far (M.best_epoch: lowest val error, never test)."""
        return M.best_epoch(self.history)

    def run(self, report: Callable[[EpochReport], None] | None = None) -> dict[str, Any]:
        """Train from the current epoch to the last (or until the loss diverges) and return the
        result (``result()``). After each epoch ``report`` gets its metrics and this trainer, so a
        caller can checkpoint (``state_dict``) or stop: the Tune trial reports and checkpoints
        there. The test split is evaluated every epoch for the record only (2015 §4.2)."""
        while self.epoch < self.epochs:
            train_metrics = self._train_epoch()
            if train_metrics is None:
                self.status = Status.DIVERGED
                break
            self.epoch += 1
            val_loss, val_error = self.evaluate(self.val_loader)
            _, test_error = self.evaluate(self.test_loader)  # reported only, never used to choose
            epoch_metrics = {
                M.EPOCH: self.epoch,
                M.ITERATION: self.epoch * len(self.train_loader),
                **train_metrics,
                M.VAL_LOSS: val_loss,
                M.VAL_ERROR: val_error,
                M.TEST_ERROR: test_error,
            }
            self.history.append(epoch_metrics)
            if report is not None:
                report(EpochReport(self.epoch, self.epochs, epoch_metrics, self))
        else:
            self.status = Status.COMPLETED
        return self.result()

    def _once_per_epoch(self, name: str, measure: Callable[[], Any]) -> Any:
        """``measure()`` once per epoch: the last epoch's report and the result both ask."""
        if self._measured.get(name, (None,))[0] != self.epoch:
            self._measured[name] = (self.epoch, measure())
        return copy.copy(self._measured[name][1])

    def layer_response_std(self) -> list[float]:
        """2015 Fig. 7 on the val split (held out from training, never the test set)."""
        # Data parallel: each process has its part of val; the sums are over all of them.
        return self._once_per_epoch(
            "responses",
            lambda: layer_responses(self.model, (x for x, _ in self.val_loader), reduce=self._summed_on_device),
        )

    def _summed_on_device(self, totals: torch.Tensor) -> torch.Tensor:
        """CPU ``totals`` summed over the data-parallel processes (on the device: NCCL's way)."""
        return self.shard.sum(totals.to(self.device)).cpu()

    def final_metrics(self) -> dict[str, float]:
        """The per-run metrics of the model as it is (metrics.FINAL_METRICS): 10-crop test errors
        for image folders; none for data held in memory."""
        if self.ten_crop_loader is None:
            return {}
        return self._once_per_epoch("final", lambda: self.evaluate_ten_crop(self.ten_crop_loader))

    def result(self) -> dict[str, Any]:
        """The run's result (metrics.run_result): `train --json`'s output and a trial's last report."""
        diverged = self.status == Status.DIVERGED
        return M.run_result(
            status=self.status,
            name=self.cfg.model.name,
            epochs=self.epochs,
            history=self.history,
            layer_response_std=[] if diverged else self.layer_response_std(),
            final={} if diverged else self.final_metrics(),
            params=count_params(self.model),
            device=str(self.device),
            speed=str(self.speed),
            config=self.cfg.to_flat(),
        )


def train(
    cfg: RunConfig,
    *,
    report: Callable[[EpochReport], None] | None = None,
    resume: dict | None = None,
    splits: Splits | None = None,
) -> dict[str, Any]:
    """Train one run of ``cfg`` (from ``resume``'s state when given) and return its result."""
    trainer = Trainer(cfg, splits=splits)
    if resume is not None:
        trainer.load_state_dict(resume)
    return trainer.run(report)
