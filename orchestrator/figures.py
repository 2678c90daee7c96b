"""Matplotlib figures logged to MLflow: learning curves (2015 Fig. 6 style) and layer
responses (Fig. 7)."""
from __future__ import annotations

import io

from matplotlib.figure import Figure
from PIL import Image

__all__ = ["layer_responses", "learning_curve"]


def _to_image(fig) -> Image.Image:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def learning_curve(curves: dict[str, list[tuple[int, float]]], title: str = "") -> Image.Image:
    """Error (%) per epoch; training error dashed, as in 2015 Fig. 6."""
    # Figure, not pyplot: no global figure registry in a driver that draws for every trial.
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for key, points in curves.items():
        if points:
            steps, values = zip(*sorted(points))
            ax.plot(steps, [100 * v for v in values], "--" if key.startswith("train") else "-", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _to_image(fig)


def layer_responses(stds: list[float], title: str = "") -> Image.Image:
    """Std of each 3×3 layer's response, in depth order (2015 Fig. 7, top)."""
    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    ax.plot(range(1, len(stds) + 1), stds, marker=".")
    ax.set_xlabel("layer index (original order)")
    ax.set_ylabel("std")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _to_image(fig)
