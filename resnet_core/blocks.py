"""Residual blocks and shortcuts of He et al. 2015 (§3.3, §4.1–4.2) and 2016 (pre-activation).

Every block takes ``(in_channels, planes, stride)`` and exposes ``out_channels``; the shortcut
option and ``residual`` are choices, not subclasses (``residual=False`` is the paper's plain net:
the same layers with no shortcut at all).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BLOCKS",
    "BasicBlock",
    "Bottleneck",
    "PadShortcut",
    "PreActBasicBlock",
    "PreActBottleneck",
    "ResponseTap",
    "make_shortcut",
]


class ResponseTap(nn.Identity):
    """A measuring point for the layer responses of 2015 Fig. 7: a 3×3 conv's output after BN,
    before ReLU/addition. It computes nothing; ``analysis.layer_responses`` hooks it."""


class PadShortcut(nn.Module):
    """Option A (2015 §3.3): identity with stride-``s`` subsampling and zero-padded extra channels.
    Parameter-free. Written by hand: torchvision has no such layer."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x


def _drop_path(p: float) -> nn.Module:
    """Stochastic depth on the residual branch (torchvision's); imported only when used, so
    building and counting models does not load torchvision (about 0.8 s)."""
    if p <= 0:
        return nn.Identity()
    from torchvision.ops import StochasticDepth

    return StochasticDepth(p, "row")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def make_shortcut(
    option: str, in_channels: int, out_channels: int, stride: int, *, residual: bool, preact: bool
) -> nn.Module | None:
    """The shortcut of one block: ``None`` for a plain net; A pads, B projects only where the shape
    changes, C projects everywhere (2015 §4.1, Table 3). Pre-activation projections are a bare
    1×1 conv, as in the 2016 paper's code; post-activation ones are conv + BN, as in torchvision."""
    if not residual:
        return None
    reshapes = stride != 1 or in_channels != out_channels
    if option == "C" or (option == "B" and reshapes):
        if preact:
            return conv1x1(in_channels, out_channels, stride)
        return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))
    if option == "A" and reshapes:
        return PadShortcut(in_channels, out_channels, stride)
    return nn.Identity()


def _is_projection(shortcut: nn.Module | None) -> bool:
    return shortcut is not None and not isinstance(shortcut, (nn.Identity, PadShortcut))


class _Block(nn.Module):
    """What all blocks share: shortcut, stochastic depth on the residual branch, the addition."""

    expansion = 1
    preact = False

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int,
        *,
        shortcut: str,
        residual: bool,
        drop_path: float = 0.0,
        bottleneck_stride: str = "1x1",
    ) -> None:
        super().__init__()
        self.out_channels = planes * self.expansion
        self.shortcut = make_shortcut(
            shortcut, in_channels, self.out_channels, stride, residual=residual, preact=self.preact
        )
        # Stochastic depth (Huang et al. 2016) drops whole residual branches per sample.
        self.drop_path = _drop_path(drop_path)

    def preact_identity(self, x: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        """Pre-activation blocks: projections read the pre-activated input, identity reads ``x``."""
        if self.shortcut is None:
            return x
        return self.shortcut(pre if _is_projection(self.shortcut) else x)

    def add_shortcut(self, branch: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            return branch
        return self.drop_path(branch) + identity


class BasicBlock(_Block):
    """Two 3×3 convs (2015 Fig. 2 left): conv-BN-ReLU-conv-BN, add, ReLU."""

    def __init__(self, in_channels: int, planes: int, stride: int, **kw) -> None:
        super().__init__(in_channels, planes, stride, **kw)
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.tap1 = ResponseTap()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.tap2 = ResponseTap()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.tap1(self.bn1(self.conv1(x))))
        out = self.tap2(self.bn2(self.conv2(out)))
        return self.relu(self.add_shortcut(out, identity))

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)


class Bottleneck(_Block):
    """1×1 reduce, 3×3, 1×1 expand ×4 (2015 Fig. 5 right). The paper strides the first 1×1;
    torchvision ("v1.5") strides the 3×3: ``bottleneck_stride`` picks."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, **kw) -> None:
        super().__init__(in_channels, planes, stride, **kw)
        s1, s3 = (stride, 1) if kw.get("bottleneck_stride", "1x1") == "1x1" else (1, stride)
        self.conv1 = conv1x1(in_channels, planes, s1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, s3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.tap2 = ResponseTap()
        self.conv3 = conv1x1(planes, self.out_channels)
        self.bn3 = nn.BatchNorm2d(self.out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.tap2(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        return self.relu(self.add_shortcut(out, identity))

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)


class PreActBasicBlock(_Block):
    """2016 Fig. 1(b)/4(e): BN-ReLU-conv-BN-ReLU-conv, then the addition with nothing after it.
    Projection shortcuts read the pre-activated input, as in the paper's code."""

    preact = True

    def __init__(self, in_channels: int, planes: int, stride: int, **kw) -> None:
        super().__init__(in_channels, planes, stride, **kw)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.tap1 = ResponseTap()
        self.conv2 = conv3x3(planes, planes)
        self.tap2 = ResponseTap()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        identity = self.preact_identity(x, pre)
        out = self.relu(self.tap1(self.bn2(self.conv1(pre))))
        out = self.tap2(self.conv2(out))
        return self.add_shortcut(out, identity)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.weight)


class PreActBottleneck(_Block):
    """2016 pre-activation bottleneck: (BN-ReLU-conv) × {1×1, 3×3, 1×1 ×4}, then the addition."""

    expansion = 4
    preact = True

    def __init__(self, in_channels: int, planes: int, stride: int, **kw) -> None:
        super().__init__(in_channels, planes, stride, **kw)
        s1, s3 = (stride, 1) if kw.get("bottleneck_stride", "1x1") == "1x1" else (1, stride)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv1x1(in_channels, planes, s1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, s3)
        self.bn3 = nn.BatchNorm2d(planes)
        self.tap2 = ResponseTap()
        self.conv3 = conv1x1(planes, self.out_channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        identity = self.preact_identity(x, pre)
        out = self.relu(self.bn2(self.conv1(pre)))
        out = self.relu(self.tap2(self.bn3(self.conv2(out))))
        out = self.conv3(out)
        return self.add_shortcut(out, identity)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.weight)


# The names users write (YAML `model.block`, CLI `--block`) → block classes.
BLOCKS: dict[str, type[_Block]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "preact-basic": PreActBasicBlock,
    "preact-bottleneck": PreActBottleneck,
}
