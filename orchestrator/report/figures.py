"""Matplotlib figures: a trial's learning curve and layer responses (logged on its MLflow run),
and the report's figures in the papers' conventions (2015 Fig. 6 and Fig. 7)."""

from __future__ import annotations

import io

from matplotlib.figure import Figure
from PIL import Image

__all__ = ["PALETTE", "error_curves", "layer_responses", "learning_curve", "response_panels"]

# Okabe & Ito's colour-blind-safe palette (yellow last: faint on white).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
DPI = 110


def _png(fig) -> bytes:
    # Agg's PNGs carry no date: the same numbers give the same file.
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _to_image(fig) -> Image.Image:
    return Image.open(io.BytesIO(_png(fig))).convert("RGB")


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


def error_curves(
    panels: dict[str, dict[str, dict[str, list[tuple[float, float]]]]], *, x_label: str, colours: dict[str, str]
) -> bytes:
    """2015 Fig. 6: one panel per family (plain, residual) on the same axes; a colour per net,
    training error dashed, test error solid (val thin and faint). ``panels``: panel title → net
    label → curve name (train/val/test) → (x, error fraction) points."""
    fig = Figure(figsize=(5.2 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels), sharex=True, sharey=True, squeeze=False)[0]
    styles = {"train": dict(ls="--", lw=1.4), "val": dict(ls="-", lw=0.9, alpha=0.45), "test": dict(ls="-", lw=2.0)}
    top = 0.0
    for ax, (title, nets) in zip(axes, panels.items()):
        for label, curves in nets.items():
            for kind, points in curves.items():
                if points:
                    xs, ys = zip(*points)
                    ys = [100 * y for y in ys]
                    top = max(top, max(ys))
                    ax.plot(
                        xs,
                        ys,
                        color=colours[label],
                        label=f"{label} ({kind})" if kind != "val" else None,
                        **styles[kind],
                    )
        ax.set_title(title)
        ax.set_xlabel(x_label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2 if len(nets) > 3 else 1)
    axes[0].set_ylabel("error (%)")
    axes[0].set_ylim(0, min(100.0, top * 1.05) or 1.0)
    fig.text(
        0.5,
        -0.04,
        "dashed: training error; bold: test error; faint: val error (chooses the epoch)",
        ha="center",
        fontsize=8,
    )
    return _png(fig)


def response_panels(nets: dict[str, tuple[list[float], bool]], *, colours: dict[str, str]) -> bytes:
    """2015 Fig. 7: the std of every 3×3 layer's response, by layer index (top) and sorted by
    magnitude (bottom); residual nets solid, plain nets dashed. ``nets``: label → (stds, residual)."""
    fig = Figure(figsize=(8, 6.4))
    by_index, by_size = fig.subplots(2, 1)
    for label, (stds, residual) in nets.items():
        style = dict(color=colours[label], ls="-" if residual else "--", lw=1.4, label=label)
        by_index.plot(range(1, len(stds) + 1), stds, **style)
        by_size.plot(range(1, len(stds) + 1), sorted(stds, reverse=True), **style)
    by_index.set_xlabel("layer index (original order)")
    by_size.set_xlabel("layer index (sorted by magnitude)")
    for ax in (by_index, by_size):
        ax.set_ylabel("std of response")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return _png(fig)
