"""Matplotlib figures: a trial's learning curve and layer responses (logged on its MLflow run),
the report's figures in the papers' conventions (2015 Fig. 6 and Fig. 7), and its views of
accuracy against cost (Pareto) and of a search (parallel coordinates)."""

from __future__ import annotations

import io

from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter
from PIL import Image

__all__ = [
    "PALETTE",
    "error_curves",
    "layer_responses",
    "learning_curve",
    "parallel_coordinates",
    "pareto_panels",
    "response_panels",
]

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


def pareto_panels(
    panels: dict[str, tuple[list[tuple[float, float]], list[tuple[float, float]], list[tuple[float, float, str]]]],
) -> bytes:
    """Error against cost, a panel per cost: ``panels``: x label → (the completed trials' (cost,
    error %) points, the stopped ones' (hollow), the front's (cost, error %, trial) in order of
    cost, marked, named and joined as a staircase). Log x where the costs span a decade."""
    fig = Figure(figsize=(4.4 * len(panels), 3.9))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (label, (points, stopped, front)) in zip(axes, panels.items()):
        ax.scatter(*zip(*points), s=22, color=PALETTE[0], alpha=0.6, label="completed trial")
        if stopped:
            ax.scatter(*zip(*stopped), s=22, facecolors="none", edgecolors="#888888", label="stopped early")
        xs, ys, _ = zip(*front)
        # The staircase bounds what the front dominates: right of and above each of its points.
        ax.step(xs, ys, where="post", color=PALETTE[1], lw=1.2)
        ax.scatter(xs, ys, s=48, color=PALETTE[1], zorder=3, label="non-dominated")
        for x, y, name in front:
            ax.annotate(name, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6)
        costs = [x for x, _ in points + stopped]
        if min(costs) > 0 and max(costs) / min(costs) >= 10:
            ax.set_xscale("log")
        if max(costs) >= 10_000:  # counts: 250k, 1.5M rather than 250000 (they would run together)
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test error (%)")
    axes[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _png(fig)


def parallel_coordinates(
    axes: list[tuple[str, list[tuple[float, str]]]], lines: list[tuple[list[float], bool]], *, metric: str
) -> bytes:
    """A vertical axis per searched setting and the metric last, each already scaled to [0, 1]
    by the caller (``axes``: label → ticks as (position, text)); a line per trial (``lines``: its
    positions, whether it was stopped early: dashed), coloured by its metric (dark: lower)."""
    # Drawn by hand on normalized axes: pandas.plotting.parallel_coordinates has no log or
    # categorical axes, and a searched lr spans decades.
    from matplotlib import colormaps

    colour = colormaps["viridis"]
    fig = Figure(figsize=(max(6.0, 2.3 * len(axes)), 4.6))
    ax = fig.subplots()
    xs = list(range(len(axes)))
    for ys, stopped in sorted(lines, key=lambda line: -line[0][-1]):  # the best drawn last, on top
        ax.plot(xs, ys, color=colour(ys[-1]), lw=1.4, ls="--" if stopped else "-", alpha=0.9)
    for x, (_, ticks) in zip(xs, axes):
        ax.axvline(x, color="#444444", lw=0.9)
        for pos, text in ticks:
            ax.plot([x - 0.03, x], [pos, pos], color="#444444", lw=0.9)
            ax.text(x - 0.05, pos, text, ha="right", va="center", fontsize=7)
    ax.set_xticks(xs, [label for label, _ in axes], fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.6, len(axes) - 0.8)
    ax.set_ylim(-0.05, 1.05)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(f"searched settings against {metric} (dark: lower)", fontsize=9)
    fig.tight_layout()
    return _png(fig)
