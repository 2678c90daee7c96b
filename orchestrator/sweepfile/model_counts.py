"""Model counts for the plan and `describe`: parameters, multiply-adds and activations, exact and
kept on disk (the count cache), and the size limits a trial is checked against before anything
is built or loaded."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnet_core.config import ModelConfig, RunConfig, num_classes, planned_epochs, split_sizes, steps_per_epoch
from resnet_core.errors import ConfigError

__all__ = [
    "COUNT_CACHE",
    "CountCache",
    "Footprint",
    "check_model_size",
    "check_trial_size",
    "model_description",
    "model_footprint",
]

# Size limits, checked from the settings before anything is built or loaded: far above real use
# (ResNet-1202 on CIFAR or ImageNet, wide ResNets, ImageNet at the papers' 640 px), far below
# what ends in a MemoryError after minutes.
MAX_DEPTH = 2_500  # about twice the papers' deepest net (1202)
MAX_WIDTH = 64  # wide ResNets use up to 10-12
MAX_IMAGE_SIZE = 1_024  # the papers test at up to 640 px
MAX_CLASSES = 100_000  # ImageNet-21k has 21,841
MAX_EPOCHS = 100_000
MAX_TRIAL_BYTES = 2**40  # 1 TiB: several times what one device holds, and a trial runs on one
GIB = 2**30


@dataclass(frozen=True)
class Footprint:
    """What the plan and the size check need of a model (ModelCounts' share)."""

    params: int
    macs: int  # multiply-adds of one image's forward pass
    activations: int  # values the layers output for one image: about what training keeps for backward


@functools.lru_cache(maxsize=256)
def model_footprint(model: ModelConfig, classes: int, image_size: int) -> Footprint:
    """Exact counts, kept in the count cache by the model's full configuration (see
    CountCache): a plan of known models needs no torch."""
    key = repr((model, classes, image_size))
    cached = COUNT_CACHE.get(key)
    if cached is not None:
        return Footprint(*cached)
    footprint = _count(model, classes, image_size)
    COUNT_CACHE.put(key, dataclasses.astuple(footprint))
    return footprint


def model_description(model: ModelConfig, *, input_size: int | None, classes: int | None) -> dict:
    """`resnet-sweep describe`'s numbers (resnet_core.analysis.describe_model), kept in the count
    cache like the plan's: describing a model described before imports no torch."""
    key = repr(("describe", model, classes, input_size))
    cached = COUNT_CACHE.get(key)
    if isinstance(cached, dict):
        return cached
    from resnet_core.analysis import describe_model

    info = describe_model(model, input_size=input_size, num_classes=classes)
    COUNT_CACHE.put(key, info)
    return info


class CountCache:
    """Model counts on disk (~/.cache/resnet-sweep/model-counts.json, or under $XDG_CACHE_HOME),
    keyed by the model's full configuration and valid for one version of the model code and of
    torch: counting a model means importing torch (≈ 1–2 s). A cache that cannot be read or
    written is simply not used."""

    FILE = "model-counts.json"
    # What the entries depend on besides torch's version: resnet_core's source files (and others, by path).
    SOURCES: tuple[str, ...] = ("blocks.py", "resnet.py", "analysis.py", "config.py")
    EXTRA_SOURCES: tuple[Path, ...] = ()

    def __init__(self) -> None:
        self._entries: dict[str, list[int]] | None = None

    @functools.cached_property
    def path(self) -> Path:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "resnet-sweep" / self.FILE

    @functools.cached_property
    def version(self) -> str:
        """The code the entries came from (its source files) and torch's version: entries of
        another are not these."""
        from importlib.metadata import version

        import resnet_core

        digest = hashlib.sha256(version("torch").encode())
        folder = Path(resnet_core.__file__).parent
        for path in [folder / name for name in self.SOURCES] + list(self.EXTRA_SOURCES):
            digest.update(path.read_bytes())
        return digest.hexdigest()[:16]

    def _read(self) -> dict[str, Any]:
        """The entries on disk: none where the file is missing, cut off, of another version or
        not the cache's shape."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if (
            not isinstance(data, dict)
            or data.get("version") != self.version
            or not isinstance(data.get("counts"), dict)
        ):
            return {}
        return data["counts"]

    def _load(self) -> dict[str, Any]:
        if self._entries is None:
            self._entries = self._read()
        return self._entries

    def get(self, key: str) -> Any:
        return self._load().get(key)

    def put(self, key: str, counts: Any) -> None:
        """``counts``: anything JSON holds (a tuple is kept as a list)."""
        value = list(counts) if isinstance(counts, tuple) else counts
        self._load()[key] = value
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Under a lock, the file read again and this entry added: what another process put
            # since this one read it stays. Written whole and renamed: a reader sees one file or
            # the other.
            with _locked(self.path.with_name(f".{self.path.name}.lock")):
                entries = {**self._read(), key: value}
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
                tmp.write_text(json.dumps({"version": self.version, "counts": entries}))
                os.replace(tmp, self.path)
            self._entries = {**entries, **self._entries}
        except OSError:
            pass


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` while the block runs (POSIX flock; without fcntl, none: a
    lost cache entry only costs counting it again)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


COUNT_CACHE = CountCache()


def _count(model: ModelConfig, classes: int, image_size: int) -> Footprint:
    """Exact counts (resnet_core.analysis.count_model): what the model's blocks add is counted
    once per process, so `describe`'s size check and its description share it."""
    from resnet_core.analysis import count_model

    counts = count_model(model, input_size=image_size, num_classes=classes)
    return Footprint(counts.params, counts.macs, counts.activations)


def check_model_size(model: ModelConfig, *, classes: int, image_size: int, batch: int = 1, data_bytes: int = 0) -> None:
    """ConfigError naming the field when the model, trained on ``batch`` images with
    ``data_bytes`` of data on the device, is too big: decided from the settings alone."""
    depth_field = "model.stages" if model.stages is not None else "model.depth"
    for key, value, limit in (
        (depth_field, model.depth, MAX_DEPTH),
        ("model.width", model.width, MAX_WIDTH),
        ("dataset.image_size", image_size, MAX_IMAGE_SIZE),
        ("model.num_classes", classes, MAX_CLASSES),
    ):
        if value > limit:
            raise ConfigError(key, f"{value:,} is over the limit of {limit:,}")
    footprint = model_footprint(model, classes, image_size)
    # fp32 weights, gradients and momentum (+ the update's temporaries); layer outputs and their gradients.
    parts = {
        "model.width" if model.width > 1 else depth_field: (16 * footprint.params, f"{footprint.params:,} parameters"),
        "train.batch_size": (
            8 * footprint.activations * batch,
            f"activations of {batch:,} image(s) at {image_size} px",
        ),
        "dataset.image_size": (data_bytes, "the data"),
    }
    total = sum(size for size, _ in parts.values())
    if total > MAX_TRIAL_BYTES:
        biggest = max(parts, key=lambda k: parts[k][0])
        shown = ", ".join(f"{what} {_gib(size)}" for size, what in parts.values() if size)
        raise ConfigError(
            biggest,
            f"a trial would need {_gib(total)} ({shown}), over the limit of "
            f"{MAX_TRIAL_BYTES // GIB:,} GiB (a trial runs on one device)",
        )


def _gib(size: int) -> str:
    return f"≈ {size / GIB:,.0f} GiB" if size >= GIB else "< 1 GiB"


def check_trial_size(run: RunConfig) -> None:
    """check_model_size for one trial of ``run``, and its epochs."""
    data = run.dataset
    train, val, test = split_sizes(data)
    if data.synthetic_classes > MAX_CLASSES:
        raise ConfigError(
            "dataset.synthetic_classes", f"{data.synthetic_classes:,} is over the limit of {MAX_CLASSES:,}"
        )
    epochs = planned_epochs(run.train, steps_per_epoch(train, run.train.batch_size))
    if epochs > MAX_EPOCHS:
        key = "train.iterations" if run.train.iterations is not None else "train.epochs"
        raise ConfigError(key, f"{epochs:,} epochs is over the limit of {MAX_EPOCHS:,}")
    in_memory = 0 if data.from_folder else (train + val + test) * 3 * data.image_size**2  # folders stream
    check_model_size(
        run.model,
        classes=num_classes(data),
        image_size=data.image_size,
        batch=min(run.train.batch_size, train),
        data_bytes=in_memory,
    )
