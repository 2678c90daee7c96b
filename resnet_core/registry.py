"""Named variants as data (2015 Tables 1 and 6, 2016 Table 3): name → model settings."""

from __future__ import annotations

__all__ = ["IMAGENET_STAGES", "VARIANTS"]

# Blocks per stage of the ImageNet nets (2015 Table 1), keyed by depth.
IMAGENET_STAGES: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}

VARIANTS: dict[str, dict] = {
    **{f"resnet{d}": dict(arch="cifar", depth=d, block="basic", shortcut="A") for d in (20, 32, 44, 56, 110, 1202)},
    **{
        f"plain{d}": dict(arch="cifar", depth=d, block="basic", shortcut="A", residual=False)
        for d in (20, 32, 44, 56, 110)
    },
    "preact110": dict(arch="cifar", depth=110, block="preact-basic", shortcut="A"),
    "preact164": dict(arch="cifar", depth=164, block="preact-bottleneck", shortcut="B"),
    "preact1001": dict(arch="cifar", depth=1001, block="preact-bottleneck", shortcut="B"),
    **{
        f"resnet{d}": dict(arch="imagenet", depth=d, block="basic" if d < 50 else "bottleneck", shortcut="B")
        for d in IMAGENET_STAGES
    },
}
