"""`resnet-sweep report`: the papers' tables and figures for one sweep, read back from MLflow.

Table 6 (error by depth, plain and residual, with the paper's numbers where the recipe is the
paper's), Fig. 6 (training curves), Fig. 7 (layer responses), Table 3 (shortcut options A/B/C),
original vs pre-activation blocks (2016), any other varied setting, Optuna's importances, ASHA's
rungs, and what the sweep shows against each claim of the papers. Written as index.md (with
PNG and CSV files beside it) and one self-contained report.html, and logged on the sweep's
parent run. Nothing here reads the Tune folder: a report can be made from any machine that
reaches the tracking server.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import trial_table
from orchestrator.tracking.records import SweepRecord, TrialRecord
from orchestrator.vocabulary import REPORT_FOLDER, describe_status
from resnet_core import metrics as M
from resnet_core.config import FOLDER_DATASETS as FOLDERS
from resnet_core.metrics import Status

__all__ = ["Report", "build_report", "report_sweep", "write_report"]

SEED = "train.seed"
DEPTH, RESIDUAL, SHORTCUT, BLOCK = "model.depth", "model.residual", "model.shortcut", "model.block"
# 2015 Table 6 (CIFAR-10 test error %, ResNets with option A shortcuts, the best of 5 runs for 110).
PAPER_TABLE6 = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
# 2016 Table 3 (CIFAR-10 / CIFAR-100 test error %, bottleneck nets): original vs pre-activation.
PAPER_2016 = {
    ("bottleneck", 164): (5.93, 25.16),
    ("preact-bottleneck", 164): (5.46, 24.33),
    ("bottleneck", 1001): (7.61, 27.82),
    ("preact-bottleneck", 1001): (4.92, 22.71),
}
# The paper's CIFAR recipe (2015 §4.2): the reference columns are shown only for trials that used it.
PAPER_RECIPE = {
    "train.batch_size": 128,
    "train.lr": 0.1,
    "train.momentum": 0.9,
    "train.weight_decay": 1e-4,
    "train.schedule": "multistep",
    "train.milestones": (0.5, 0.75),
    "train.gamma": 0.1,
    "train.label_smoothing": 0.0,
    "dataset.augment": True,
    "model.width": 1,
    "model.drop_path": 0.0,
    "model.dropout": 0.0,
    "model.zero_init_last": False,
}
PAPER_ITERATIONS = 64_000
# 2015 Tables 2 and 3: ImageNet val, 10-crop testing, (top-1, top-5) error %; None: not reported.
# Keyed by shortcut option ("plain": no shortcuts) and depth; Table 2's ResNets use option A, the
# bottleneck nets option B (§4.1, "Deeper Bottleneck Architectures").
PAPER_IMAGENET = {
    ("plain", 18): (27.94, None),
    ("plain", 34): (28.54, 10.02),
    ("A", 18): (27.88, None),
    ("A", 34): (25.03, 7.76),
    ("B", 34): (24.52, 7.46),
    ("C", 34): (24.19, 7.40),
    ("B", 50): (22.85, 6.71),
    ("B", 101): (21.75, 6.05),
    ("B", 152): (21.43, 5.71),
}
# The paper's ImageNet recipe (2015 §3.4) and model (§3.3, Table 1: basic blocks up to 34 layers,
# bottlenecks with the stride on the first 1×1 from 50): the reference columns are shown only for
# trials that used it, for at least IMAGENET_EPOCHS epochs (the paper: lr ÷10 on plateaus, up to
# 60×10^4 iterations of 256, ≈ 120 epochs; any ÷10 milestones are a reading of it).
IMAGENET_RECIPE = {
    "dataset.augment": True,
    "dataset.image_size": 224,
    "dataset.scale_range": (256, 480),
    "dataset.lighting": 0.1,
    "dataset.normalize": "pixel-mean",
    "dataset.train_limit": None,
    "dataset.eval_limit": None,
    "train.batch_size": 256,
    "train.lr": 0.1,
    "train.momentum": 0.9,
    "train.nesterov": False,
    "train.weight_decay": 1e-4,
    "train.bn_weight_decay": True,
    "train.schedule": "multistep",
    "train.gamma": 0.1,
    "train.warmup_iterations": 0,
    "train.label_smoothing": 0.0,
    "model.width": 1,
    "model.stages": None,
    "model.drop_path": 0.0,
    "model.dropout": 0.0,
    "model.zero_init_last": False,
    "model.bottleneck_stride": "1x1",
}
IMAGENET_EPOCHS = 90


# --- statistics over seeds -----------------------------------------------------------------------
@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n−1; None for one run) of an error, in %."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, fractions: list[float]) -> Stat | None:
        values = [100 * v for v in fractions]
        if not values:
            return None
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))

    def __str__(self) -> str:
        spread = f" ± {self.std:.2f}" if self.std is not None else ""
        return f"{self.mean:.2f}{spread} (n={self.n})"


def _test_errors(trials: list[TrialRecord]) -> list[float]:
    return [t.best[M.TEST_ERROR] for t in trials if t.best is not None]


def _train_errors(trials: list[TrialRecord]) -> list[float]:
    return [t.final_train_error for t in trials if t.final_train_error is not None]


# --- the report as blocks, rendered to Markdown and HTML -------------------------------------------
@dataclass
class Table:
    slug: str  # file name of its CSV
    columns: list[str]
    rows: list[list[Any]]  # str, int, float (a fraction, shown in %), Stat or None
    caption: str = ""

    def numeric(self, column: int) -> bool:
        """Numbers are right-aligned, words left."""
        values = [r[column] for r in self.rows if r[column] is not None]
        return bool(values) and all(isinstance(v, (int, float, Stat)) for v in values)

    def cell(self, value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float) and not isinstance(value, _Num):
            return f"{100 * value:.2f}"
        return str(value)

    def csv_text(self) -> str:
        """Numbers in full: a Stat column becomes its mean, std and n; fractions become %."""
        header: list[str] = []
        for i, name in enumerate(self.columns):
            if any(isinstance(r[i], Stat) for r in self.rows):
                header += [f"{name} mean", f"{name} std", f"{name} n"]
            else:
                header.append(name)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        for r in self.rows:
            line: list[Any] = []
            for i, value in enumerate(r):
                if any(isinstance(x[i], Stat) for x in self.rows):
                    line += [value.mean, "" if value.std is None else value.std, value.n] if value else ["", "", 0]
                else:
                    line.append(_csv_value(value))
            writer.writerow(line)
        return out.getvalue()


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, _Num):
        return repr(float(value))
    if isinstance(value, _Count):
        return int(value)
    return repr(100 * value) if isinstance(value, float) else value


@dataclass
class Figure:
    file: str
    png: bytes
    caption: str


@dataclass
class Report:
    title: str
    blocks: list = field(default_factory=list)  # ("h2", text) | ("p", text) | Table | Figure

    def h2(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def add(self, item) -> None:
        self.blocks.append(item)

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for block in self.blocks:
            if isinstance(block, Table):
                out.append("| " + " | ".join(block.columns) + " |")
                out.append(
                    "|" + "|".join("---:" if block.numeric(i) else "---" for i in range(len(block.columns))) + "|"
                )
                out += ["| " + " | ".join(block.cell(v).replace("|", "\\|") for v in r) + " |" for r in block.rows]
                out += ["", f"{block.caption} ([{block.slug}.csv]({block.slug}.csv))".strip(), ""]
            elif isinstance(block, Figure):
                out += [f"![{block.caption}]({block.file})", "", block.caption, ""]
            elif block[0] == "h2":
                out += [f"## {block[1]}", ""]
            else:
                out += [block[1], ""]
        return "\n".join(out)

    def html(self) -> str:
        body = [f"<h1>{_inline(self.title)}</h1>"]
        for block in self.blocks:
            if isinstance(block, Table):
                head = "".join(f"<th>{_inline(c)}</th>" for c in block.columns)
                align = [" class=num" if block.numeric(i) else "" for i in range(len(block.columns))]
                rows = "".join(
                    "<tr>" + "".join(f"<td{a}>{html.escape(block.cell(v))}</td>" for a, v in zip(align, r)) + "</tr>"
                    for r in block.rows
                )
                body.append(
                    f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
                    f"<p class=caption>{_inline(block.caption)}</p>"
                )
            elif isinstance(block, Figure):
                data = base64.b64encode(block.png).decode()
                body.append(
                    f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{_inline(block.caption)}</figcaption></figure>"
                )
            elif block[0] == "h2":
                body.append(f"<h2>{_inline(block[1])}</h2>")
            else:
                body.append(f"<p>{_inline(block[1])}</p>")
        return (
            "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body)
            + "\n</body></html>\n"
        )


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;"
    "text-align:left;vertical-align:top}td.num{text-align:right}th{background:#f3f3f3}"
    "img{max-width:100%}.caption,figcaption{color:#555;font-size:.9em}code{background:#f3f3f3}"
)


def _inline(text: str) -> str:
    """The little Markdown the report's own text uses (**bold**, `code`), as HTML."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


# --- naming and grouping the sweep's nets --------------------------------------------------------------
def varying_keys(trials: list[TrialRecord]) -> list[str]:
    """Config keys whose values differ between trials (the seed aside), in a stable order."""
    keys = sorted({k for t in trials for k in t.config})
    return [k for k in keys if k != SEED and len({repr(t.config.get(k)) for t in trials}) > 1]


def _short(key: str) -> str:
    return key.split(".", 1)[-1]


def net_label(config: dict, varying: list[str]) -> str:
    """plain-56, ResNet-56 (A), ResNet-164 (preact-bottleneck), … and any other varied setting."""
    residual = config.get(RESIDUAL, True)
    label = f"{'ResNet' if residual else 'plain'}-{config.get(DEPTH)}"
    if BLOCK in varying or config.get(BLOCK) not in (None, "basic"):
        label += f" {config.get(BLOCK)}"
    if residual and SHORTCUT in varying:
        label += f" ({config.get(SHORTCUT)})"
    others = [k for k in varying if k not in (DEPTH, RESIDUAL, BLOCK, SHORTCUT, "model.n")]
    return label + "".join(f", {_short(k)}={_fmt(config.get(k))}" for k in others)


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _groups(trials: list[TrialRecord], varying: list[str]) -> dict[str, list[TrialRecord]]:
    """Trials of the same net and recipe (all but the seed) under one label, in sweep order."""
    groups: dict[str, list[TrialRecord]] = {}
    for t in sorted(trials, key=lambda t: _order(t.config, varying)):
        groups.setdefault(net_label(t.config, varying), []).append(t)
    return groups


def _order(config: dict, varying: list[str]) -> tuple:
    """Plain before residual, then by depth and the other varied settings."""
    return (bool(config.get(RESIDUAL, True)), config.get(DEPTH) or 0, *(_by_value(config.get(k)) for k in varying))


def _by_value(value: Any) -> tuple:
    """Numbers in numeric order (1e-05 < 0.0001), then everything else by its text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, repr(value))


def _completed(trials: list[TrialRecord]) -> list[TrialRecord]:
    return [t for t in trials if t.status == str(Status.COMPLETED)]


def _params(config: dict) -> int | None:
    """The net's parameter count, from its config: the plan's count (cached by full config)."""
    from orchestrator.sweepfile.space import model_footprint
    from resnet_core.config import RunConfig, num_classes

    try:
        cfg = RunConfig.from_flat(config)
        return model_footprint(cfg.model, num_classes(cfg.dataset), cfg.dataset.image_size).params
    except Exception:
        return None


def _same(value: Any, paper: Any) -> bool:
    """A logged setting equals the paper's: MLflow gives sequences back as lists."""
    return (tuple(value) if isinstance(value, list) else value) == paper


def _differences(config: dict, recipe: dict) -> list[str]:
    return [f"{_short(k)} {_fmt(config.get(k))}" for k, v in recipe.items() if k in config and not _same(config[k], v)]


def _paper_recipe(config: dict) -> list[str]:
    """How the trial's recipe differs from the paper's CIFAR recipe (empty: it is the paper's)."""
    differs = _differences(config, PAPER_RECIPE)
    if (
        config.get("train.epochs") is not None
        or (config.get("train.iterations") or PAPER_ITERATIONS) != PAPER_ITERATIONS
    ):
        differs.append("not 64k iterations")
    if config.get("dataset.name") not in ("cifar10", "cifar100"):
        differs.insert(0, f"data set {config.get('dataset.name')}")
    return differs


def _paper_error(config: dict) -> float | None:
    """The paper's test error (%) for this net, when it reports one for this data set."""
    data, depth, block = config.get("dataset.name"), config.get(DEPTH), config.get(BLOCK)
    if not config.get(RESIDUAL, True):
        return None  # the papers give plain nets' errors only as curves (Fig. 6)
    if data == "cifar10" and block == "basic" and config.get(SHORTCUT) == "A":
        return PAPER_TABLE6.get(depth)
    column = {"cifar10": 0, "cifar100": 1}.get(data)
    paper = PAPER_2016.get((block, depth))
    return paper[column] if paper and column is not None else None


def _imagenet_recipe(config: dict) -> list[str]:
    """How the trial's recipe or model differs from the paper's on ImageNet (empty: it is the paper's)."""
    from resnet_core.config import RunConfig, planned_epochs, split_sizes, steps_per_epoch

    differs = _differences(config, IMAGENET_RECIPE)
    if config.get("dataset.name") != "imagenet":
        differs.insert(0, f"data set {config.get('dataset.name')}")
    if config.get(BLOCK) != ("bottleneck" if (config.get(DEPTH) or 0) >= 50 else "basic"):
        differs.append(f"block {config.get(BLOCK)}")
    try:
        train = RunConfig.from_flat(config).train
        epochs = planned_epochs(
            train, steps_per_epoch(split_sizes(RunConfig.from_flat(config).dataset)[0], train.batch_size)
        )
    except Exception:
        return differs or ["settings this version cannot read"]
    if epochs < IMAGENET_EPOCHS:
        differs.append(f"{epochs} epochs (under {IMAGENET_EPOCHS})")
    return differs


def _paper_imagenet(config: dict) -> tuple[float | None, float | None] | None:
    """2015 Tables 2/3's (top-1, top-5) 10-crop errors (%) for this net, when it reports them."""
    option = config.get(SHORTCUT) if config.get(RESIDUAL, True) else "plain"
    return PAPER_IMAGENET.get((option, config.get(DEPTH)))


# --- sections ----------------------------------------------------------------------------------------
def _table6(report: Report, groups: dict[str, list[TrialRecord]], varying: list[str], tables: dict) -> None:
    rows_by_key: dict[tuple, dict] = {}
    for label, trials in groups.items():
        config = trials[0].config
        key = (config.get(DEPTH), *(_by_value(config.get(k)) for k in varying if k not in (DEPTH, RESIDUAL)))
        rows_by_key.setdefault(key, {})["residual" if config.get(RESIDUAL, True) else "plain"] = (label, trials)
    rows, notes, unfinished = [], set(), 0
    for key in sorted(rows_by_key, key=lambda k: (k[0] or 0, k[1:])):
        pair = rows_by_key[key]
        label, trials = pair.get("residual") or pair["plain"]
        config = trials[0].config
        differs = _paper_recipe(config)
        paper = _paper_error(config)
        if paper is not None and differs:
            notes.add(", ".join(differs))
            paper = None
        params = _params(config)
        row = [label.replace("ResNet-", "").replace("plain-", ""), _Count(params) if params is not None else None]
        for family in ("plain", "residual"):
            done = _completed(pair[family][1]) if family in pair else []
            row += [Stat.of(_test_errors(done)), Stat.of(_train_errors(done))]
        if any(row[2:6]):
            rows.append(row + [_percent(paper)])
        else:
            unfinished += 1
    table = Table(
        "table6",
        [
            "net",
            "params",
            "plain test err %",
            "plain train err %",
            "residual test err %",
            "residual train err %",
            "paper test err %",
        ],
        rows,
        "Test error at the epoch chosen on val; train error at the last epoch; mean ± std (n−1) over "
        "completed trials (seeds). Paper: 2015 Table 6 (CIFAR-10, option A) and 2016 Table 3.",
    )
    report.h2("Table 6: error by depth, plain and residual")
    report.add(table)
    if unfinished:
        report.p(
            f"{unfinished} more net(s) have no completed trial yet (stopped early, failed or running): see Trials."
        )
    datasets = {t.config.get("dataset.name") for ts in groups.values() for t in ts} - {"cifar10", "cifar100"}
    if datasets & set(FOLDERS):
        report.p(
            "For image folders this table has the test set's centre crop at the epoch chosen on val; the paper's "
            "ImageNet errors are 10-crop, beside ours in the next table."
        )
    if datasets - set(FOLDERS):
        report.p(
            f"The papers report CIFAR-10/100 and ImageNet; this sweep trains on "
            f"{', '.join(sorted(map(str, datasets - set(FOLDERS))))}: no paper numbers to set beside these."
        )
    elif notes:
        report.p(
            "The paper's numbers are left out: these trials do not use the paper's CIFAR recipe "
            f"({'; '.join(sorted(notes))})."
        )
    tables["table6"] = table


def _ten_crop(report: Report, groups: dict[str, list[TrialRecord]], tables: dict) -> None:
    """Image folders: the final model's 10-crop test errors (top-1, top-5), beside 2015 Tables 2
    and 3 where the trials used the paper's ImageNet recipe and model."""
    rows, notes = [], set()
    for label, trials in groups.items():
        config = trials[0].config
        if config.get("dataset.name") not in FOLDERS:
            continue
        done = _completed(trials)
        top1, top5 = ([t.final[key] for t in done if key in t.final] for key in M.FINAL_METRICS)
        paper = _paper_imagenet(config)
        differs = _imagenet_recipe(config)
        if paper is not None and differs:
            notes.add(", ".join(differs))
            paper = None
        params = _params(config)
        rows.append(
            [
                label,
                _Count(params) if params is not None else None,
                Stat.of(top1),
                Stat.of(top5),
                Stat.of(_test_errors(done)),
                *map(_percent, paper or (None, None)),
            ]
        )
    if not rows:
        return
    table = Table(
        "ten_crop",
        [
            "net",
            "params",
            "top-1 10-crop err %",
            "top-5 10-crop err %",
            "top-1 centre-crop err %",
            "paper top-1 %",
            "paper top-5 %",
        ],
        rows,
        "The final model on the test set (the official val images): 10 crops, the four corners and the "
        "centre and their flips, softmax averaged; centre crop: the epoch chosen on val. Mean ± std (n−1) "
        "over completed trials. Paper: 2015 Table 2 (top-1) and Table 3 (10-crop).",
    )
    report.h2("10-crop test error (2015 Tables 2 and 3)")
    report.add(table)
    if notes:
        report.p(
            "The paper's numbers are left out where the trials do not use its ImageNet recipe and model "
            f"({'; '.join(sorted(notes))})."
        )
    tables["ten_crop"] = table


def _x_axis(trials: list[TrialRecord]) -> tuple[str, Callable[[dict], float]]:
    if all(M.ITERATION in h for t in trials for h in t.history):
        return "iterations", lambda h: h[M.ITERATION]
    return "epochs", lambda h: h[M.EPOCH]  # runs logged before the iteration metric existed


def _mean_curve(trials: list[TrialRecord], key: str, x: Callable[[dict], float]) -> list[tuple[float, float]]:
    points: dict[float, list[float]] = {}
    for t in trials:
        for h in t.history:
            if h.get(key) is not None:
                points.setdefault(x(h), []).append(h[key])
    return [(k, statistics.fmean(v)) for k, v in sorted(points.items())]


def _colours(labels: list[str]) -> dict[str, str]:
    """One colour per net apart from plain/residual, so plain-56 and ResNet-56 match."""
    from orchestrator.report.figures import PALETTE

    stems = list(dict.fromkeys(re.sub(r"^(ResNet|plain)-", "", label) for label in labels))
    colour = {stem: PALETTE[i % len(PALETTE)] for i, stem in enumerate(stems)}
    return {label: colour[re.sub(r"^(ResNet|plain)-", "", label)] for label in labels}


def _figure6(report: Report, groups: dict[str, list[TrialRecord]]) -> None:
    from orchestrator.report.figures import error_curves

    trials = [t for ts in groups.values() for t in ts if t.history]
    if not trials:
        return
    x_label, x = _x_axis(trials)
    panels: dict[str, dict] = {}
    for label, group in groups.items():
        family = "residual nets" if group[0].config.get(RESIDUAL, True) else "plain nets"
        shown = _completed(group) or group  # seeds that dropped out would make the mean jump
        curves = {
            kind: _mean_curve(shown, key, x)
            for kind, key in (("train", M.TRAIN_ERROR), ("val", M.VAL_ERROR), ("test", M.TEST_ERROR))
        }
        panels.setdefault(family, {})[label] = curves
    panels = dict(sorted(panels.items(), key=lambda kv: kv[0] != "plain nets"))
    png = error_curves(panels, x_label=x_label, colours=_colours(list(groups)))
    report.h2("Figure 6: training curves")
    report.add(
        Figure(
            "fig6.png",
            png,
            f"Error (%) against {x_label}, mean over completed seeds; dashed: training error, bold: "
            "test error, faint: val error (2015 Fig. 6 conventions).",
        )
    )


def _responses(trials: list[TrialRecord]) -> list[float] | None:
    """Mean over seeds of each layer's response std."""
    runs = [t.responses for t in trials if t.responses]
    if not runs or len({len(r) for r in runs}) != 1:
        return None
    return [statistics.fmean(layer) for layer in zip(*runs)]


def _figure7(report: Report, groups: dict[str, list[TrialRecord]], tables: dict) -> None:
    from orchestrator.report.figures import response_panels

    nets = {
        label: (r, bool(group[0].config.get(RESIDUAL, True)))
        for label, group in groups.items()
        if (r := _responses(_completed(group)))
    }
    if not nets:
        return
    report.h2("Figure 7: layer responses")
    report.add(
        Figure(
            "fig7.png",
            response_panels(nets, colours=_colours(list(nets))),
            "Std of each 3×3 layer's response (after BN, before ReLU/addition; eval mode, on the val "
            "split), by layer index (top) and sorted by magnitude (bottom); plain dashed, residual solid "
            "(2015 Fig. 7).",
        )
    )
    rows = [
        [label, len(r), *(_Num(f(r)) for f in (statistics.fmean, statistics.median, max, min))]
        for label, (r, _) in nets.items()
    ]
    table = Table(
        "fig7",
        ["net", "3×3 layers", "mean std", "median std", "max std", "min std"],
        rows,
        "Response std per net (mean over seeds of each layer, then over layers). A few large early "
        "layers move the mean; the median and the sorted curve are the sturdier comparison.",
    )
    report.add(table)
    tables["fig7"] = table


class _Count(int):
    """A parameter count: shown as the paper does (0.27M), written in full."""

    def __str__(self) -> str:
        return f"{self / 1e6:.2f}M" if self >= 10_000 else str(int(self))


class _Num(float):
    """A plain number (not an error fraction): shown and written as it is."""

    def __str__(self) -> str:
        return f"{float(self):.3f}"


class _Percent(_Num):
    """A number already in % (the papers' errors): shown as they print it, written as it is."""

    def __str__(self) -> str:
        return f"{float(self):.2f}"


def _percent(value: float | None) -> _Percent | None:
    return None if value is None else _Percent(value)


def _pivot(
    report: Report,
    trials: list[TrialRecord],
    varying: list[str],
    key: str,
    title: str,
    slug: str,
    caption: str,
    tables: dict,
) -> None:
    """Test error for each value of ``key`` (columns) against the nets otherwise alike (rows)."""
    rest = [k for k in varying if k != key]
    values = sorted(
        {repr(t.config.get(key)): t.config.get(key) for t in trials}.items(), key=lambda kv: _by_value(kv[1])
    )
    rows: dict[str, dict[str, list[TrialRecord]]] = {}
    for t in sorted(trials, key=lambda t: _order(t.config, rest)):
        rows.setdefault(net_label(t.config, rest), {}).setdefault(repr(t.config.get(key)), []).append(t)
    table_rows = []
    for label, cells in rows.items():
        stats = [Stat.of(_test_errors(_completed(cells.get(r, [])))) for r, _ in values]
        if any(stats):  # nets with no completed trial have nothing to compare
            table_rows.append([label, *stats])
    table = Table(slug, ["net", *(f"{_fmt(v)} test err %" for _, v in values)], table_rows, caption)
    report.h2(title)
    report.add(table)
    tables[slug] = table


def _optuna(report: Report, record: SweepRecord, parsed, metric: str, tables: dict) -> None:
    import optuna

    from orchestrator.sweepfile.space import optuna_space

    report.h2("Search: what mattered (Optuna)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    probe = optuna.create_study()
    optuna_space(parsed)(probe.ask())
    distributions = probe.trials[0].distributions
    scored = [
        (t, min(h[metric] for h in t.history if h.get(metric) is not None))
        for t in record.trials
        if any(h.get(metric) is not None for h in t.history)
    ]
    study = optuna.create_study(direction="minimize")
    for t, value in scored:
        params = {k: v for k in distributions if (v := _searched(t.config, k)) is not None}
        if len(params) == len(distributions):
            study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
    values = {t.value for t in study.trials}
    if len(values) < 2:
        report.p(
            f"No importances: they need trials with at least two different values of {metric}; this sweep has "
            f"{len(study.trials)} trial(s) with {len(values)}."
        )
    else:
        try:
            importances = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
            )
        except (RuntimeError, ValueError) as err:  # fANOVA on a degenerate set of trials
            report.p(f"No importances: Optuna's fANOVA could not weigh these {len(study.trials)} trials ({err}).")
        else:
            table = Table(
                "importance",
                ["hyperparameter", "importance"],
                [[k, _Num(v)] for k, v in importances.items()],
                f"Optuna's fANOVA importance (seed 0) of each searched setting for the best {metric} of "
                f"{len(study.trials)} trials (trials stopped early count with the epochs they trained).",
            )
            report.add(table)
            tables["importance"] = table
    if scored:
        best_trial, best_value = min(scored, key=lambda tv: (tv[1], tv[0].name))
        shown = ", ".join(f"{k} = {_fmt(_searched(best_trial.config, k))}" for k in distributions)
        report.p(
            f"Best configuration (lowest {metric}, chosen on val): **{best_trial.name}** with {shown}: "
            f"{metric} {_metric_text(metric, best_value)}."
        )


def _metric_text(metric: str, value: float) -> str:
    return f"{100 * value:.2f}%" if metric.endswith("error") else f"{value:.4f}"


def _searched(config: dict, key: str) -> Any:
    """A searched setting's value in a trial's config; ``model.n`` (blocks per stage) is logged
    resolved, as model.depth."""
    if key != "model.n":
        return config.get(key)
    from resnet_core.config import RunConfig

    try:
        return RunConfig.from_flat(config).model.blocks_per_stage[0]
    except Exception:
        return None


def asha_rungs(grace: int, factor: float, max_t: int) -> list[int]:
    """The epochs where ASHA decides: Ray's AsyncHyperBandScheduler (one bracket) puts rungs at
    grace·factor^k and records a trial at its first result at or past one."""
    import numpy as np  # np.log as Ray computes it: the same rung count at exact powers (log 9 / log 3)

    count = int(np.log(max_t / grace) / np.log(factor) + 1)
    return sorted({math.ceil(grace * factor**k) for k in range(count)})


def _asha(report: Report, record: SweepRecord, spec, metric: str, tables: dict) -> None:
    epochs_per_trial = int(record.plan.get("epochs_per_trial") or max((t.epochs for t in record.trials), default=0))
    max_t = spec.scheduler.max_t or epochs_per_trial
    # At max_t a trial simply ends: Ray stops it before its bracket compares anything.
    rungs = [r for r in asha_rungs(spec.scheduler.grace_period, spec.scheduler.reduction_factor, max_t) if r < max_t]
    rows = []
    for rung in rungs:
        values = {
            t.run_id: h[metric]
            for t in record.trials
            for h in t.history
            if h[M.EPOCH] == rung and h.get(metric) is not None
        }
        stopped = [t for t in record.trials if t.status == str(Status.STOPPED_EARLY) and t.stopped_at == rung]
        cutoff = _quantile(sorted(values.values()), 1 / spec.scheduler.reduction_factor) if values else None
        if cutoff is not None and not metric.endswith("error"):
            cutoff = _Num(cutoff)  # a loss: shown as it is, not in %
        rows.append([rung, len(values), cutoff, len(stopped), ", ".join(t.name for t in stopped) or "–"])
    unit = " %" if metric.endswith("error") else ""
    table = Table(
        "asha",
        ["rung (epoch)", "trials reached", f"cut-off {metric}{unit}", "stopped here", "who"],
        rows,
        f"ASHA keeps the best 1/{_fmt(spec.scheduler.reduction_factor)} at each rung; the cut-off shown "
        f"is that quantile over every trial that reached the rung (ASHA decides as results arrive, over "
        f"those recorded so far, so an early trial may have passed a stricter or looser bar).",
    )
    report.h2("Early stopping: ASHA's rungs")
    report.add(table)
    spent = sum(t.epochs for t in record.trials)
    grid = int(record.plan.get("num_trials") or len(record.trials)) * epochs_per_trial
    if grid:
        report.p(f"Epochs trained: **{spent}** of the full grid's {grid} ({spent / grid:.0%}).")
    tables["asha"] = table


def _quantile(values: list[float], q: float) -> float:
    """numpy's default (linear) percentile, as ASHA computes its cut-off."""
    pos = q * (len(values) - 1)
    low = int(pos)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (pos - low)


def _trials_table(report: Report, record: SweepRecord, stopped_by: str, tables: dict) -> None:
    rows = []
    for t in record.trials:
        row = trial_table.row(t.name, describe_status(t.status, t.epochs, stopped_by), t.epochs, t.history)
        rows.append(
            [
                t.name,
                row["status"],
                t.epochs,
                row.get("best_epoch"),
                row.get("train_error"),
                row.get("val_error"),
                row.get("test_error"),
            ]
        )
    table = Table(
        "trials",
        ["trial", "status", "epochs", "best epoch", "train err %", "val err %", "test err %"],
        rows,
        trial_table.NOTE,
    )
    report.h2("Trials")
    report.add(table)
    for t in record.trials:
        if t.error:
            report.p(f"`{t.name}` ({t.status}): {t.error} (the whole trace: artifact error.txt of its run)")
    tables["trials"] = table


# --- what the sweep shows ------------------------------------------------------------------------------
REPRODUCED, NOT_REPRODUCED, NOT_TESTED = "reproduced", "not reproduced", "not tested by this sweep"
WITHIN_NOISE = "not reproduced (difference within noise)"
ERROR_MARGIN = 0.005  # half a point of error: differences below it are not taken as a result
RESPONSE_MARGIN = 0.02  # of the response std (relative)


def _verdict(lower: list[float], higher: list[float], margin: float, images: int | None = None) -> str:
    """Whether ``lower`` (what the paper says is lower) is lower by more than the noise: the
    margin, or twice the standard error of the difference, from the spread over seeds or, for an
    error rate measured on ``images`` images, from that sample's size (whichever is larger)."""

    def se2(xs: list[float]) -> float:
        seeds = statistics.variance(xs) / len(xs) if len(xs) > 1 else 0.0
        if images:
            p = statistics.fmean(xs)
            return max(seeds, p * (1 - p) / images)
        return seeds

    gap = statistics.fmean(higher) - statistics.fmean(lower)
    noise = max(margin, 2 * math.sqrt(se2(lower) + se2(higher)))
    if gap > noise:
        return REPRODUCED
    return NOT_REPRODUCED if gap < -noise else WITHIN_NOISE


def _families(trials: list[TrialRecord], varying: list[str], key: str) -> list[dict[Any, list[TrialRecord]]]:
    """Completed trials that differ only in ``key`` (and the seed): one dict value → trials per
    family, so a claim compares like with like."""
    fixed = [k for k in varying if k not in (key, SEED, "model.n")]
    families: dict[tuple, dict[Any, list[TrialRecord]]] = {}
    for t in _completed(trials):
        family = tuple(repr(t.config.get(k)) for k in fixed)
        families.setdefault(family, {}).setdefault(t.config.get(key), []).append(t)
    return [f for f in families.values() if len(f) > 1]


def _combine(compared: list[tuple[int, str]]) -> str:
    """Every comparison must agree with the paper; one against it is against it."""
    verdicts = [v for _, v in compared]
    if all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    return NOT_REPRODUCED if NOT_REPRODUCED in verdicts else WITHIN_NOISE


def _deepest(compared: list[tuple[int, str]]) -> str:
    """A claim about deep nets (shallow plain nets train fine too): the deepest pairs decide."""
    deepest = max(depth for depth, _ in compared)
    return _combine([(d, v) for d, v in compared if d == deepest])


def _images(trials: list[TrialRecord], split: int) -> int | None:
    """How many images an error rate of these trials was measured on (0 train, 2 test)."""
    from resnet_core.config import RunConfig, split_sizes

    try:
        return split_sizes(RunConfig.from_flat(trials[0].config).dataset)[split]
    except Exception:
        return None


def _claims(trials: list[TrialRecord], varying: list[str]) -> list[list[str]]:
    """Each claim of the papers this tool reproduces, judged on this sweep's completed trials,
    comparing nets that differ only in what the claim is about."""

    def pct(xs: list[float]) -> str:
        return f"{100 * statistics.fmean(xs):.2f}%"

    def std(xs: list[float]) -> str:
        return f"{statistics.fmean(xs):.3f}"

    def responses(ts: list[TrialRecord]) -> list[float]:
        return [statistics.fmean(t.responses) for t in ts if t.responses]

    def judge(
        key: str,
        pick,
        what,
        lower_first: bool,
        margin,
        shown,
        missing: str,
        *,
        residual: bool | None = None,
        split: int | None = None,
        decide=_combine,
    ):
        """Compares, in each family along ``key``, the two trial sets ``pick`` chooses, on the
        samples ``what`` gives (error rates on the ``split`` images, or none); the paper says the
        first is lower (``lower_first``)."""
        lines, compared = [], []
        for family in _families(trials, varying, key):
            if residual is not None and bool(next(iter(family.values()))[0].config.get(RESIDUAL, True)) != residual:
                continue
            chosen = pick(family)
            if chosen is None:
                continue
            (a_name, a), (b_name, b) = chosen
            xa, xb = what(a), what(b)
            if not xa or not xb:
                continue
            low, high = (xa, xb) if lower_first else (xb, xa)
            images = _images(a, split) if split is not None else None
            compared.append((a[0].config.get(DEPTH) or 0, _verdict(low, high, margin(low + high), images)))
            lines.append(f"{a_name} {shown(xa)} vs {b_name} {shown(xb)}")
        if not compared:
            return [NOT_TESTED, missing]
        if len({v for _, v in compared}) > 1:
            short = {WITHIN_NOISE: "within noise"}
            lines = [f"{line} ({short.get(v, v)})" for line, (_, v) in zip(lines, compared)]
        more = f" … ({len(lines)} comparisons)" if len(lines) > 4 else ""
        return [decide(compared), "; ".join(lines[:4]) + more]

    def ends(family: dict) -> tuple | None:  # the shallowest and the deepest net
        depths = sorted(d for d in family if d is not None)
        label = lambda d: net_label(family[d][0].config, [])  # noqa: E731
        return (
            ((label(depths[-1]), family[depths[-1]]), (label(depths[0]), family[depths[0]]))
            if len(depths) > 1
            else None
        )

    def plain_and_residual(family: dict) -> tuple | None:
        if True not in family or False not in family:
            return None
        label = lambda r: net_label(family[r][0].config, [])  # noqa: E731
        return (label(True), family[True]), (label(False), family[False])

    def identity_and_projection(family: dict) -> tuple | None:
        projections = [t for o in ("B", "C") for t in family.get(o, [])]
        return (("B/C", projections), ("A", family["A"])) if "A" in family and projections else None

    def preact_and_original(family: dict) -> tuple | None:
        for block in ("basic", "bottleneck"):
            if block in family and f"preact-{block}" in family:
                return (f"preact-{block}", family[f"preact-{block}"]), (block, family[block])
        return None

    train = lambda ts: _train_errors(ts)  # noqa: E731
    test = lambda ts: _test_errors(ts)  # noqa: E731
    errors = lambda xs: ERROR_MARGIN  # noqa: E731
    relative = lambda xs: RESPONSE_MARGIN * statistics.fmean(xs)  # noqa: E731
    claims = [
        # deeper plain: higher training error (the first of ends() is the deeper net)
        judge(DEPTH, ends, train, False, errors, pct, "needs plain nets of two depths", residual=False, split=0),
        judge(
            RESIDUAL,
            plain_and_residual,
            train,
            True,
            errors,
            pct,
            "needs plain and residual nets alike otherwise",
            split=0,
            decide=_deepest,
        ),
        judge(DEPTH, ends, test, True, errors, pct, "needs residual nets of two depths", residual=True, split=2),
        judge(
            RESIDUAL,
            plain_and_residual,
            responses,
            True,
            relative,
            std,
            "needs the layer responses of plain and residual nets alike otherwise",
        ),
        judge(
            DEPTH,
            ends,
            responses,
            True,
            relative,
            std,
            "needs the layer responses of residual nets of two depths",
            residual=True,
        ),
        judge(
            SHORTCUT,
            identity_and_projection,
            test,
            True,
            errors,
            pct,
            "needs option A and a projection option (B or C) on nets alike otherwise",
            residual=True,
            split=2,
        ),
        judge(BLOCK, preact_and_original, test, True, errors, pct, "needs original and pre-activation blocks", split=2),
    ]
    return [[claim, *verdict] for claim, verdict in zip(CLAIMS, claims)]


CLAIMS = (
    "Degradation: a deeper plain net has higher training error (2015 §4.1, Fig. 6)",
    "Shortcuts remove the degradation: the deepest residual net has lower training error than its plain "
    "counterpart (2015 Fig. 6)",
    "Deeper ResNets have lower test error (2015 Table 6)",
    "ResNets have smaller layer responses than their plain counterparts (mean std; 2015 Fig. 7)",
    "A deeper ResNet has smaller responses (2015 Fig. 7)",
    "Projection shortcuts (B, C) are marginally better than identity (A) (2015 Table 3)",
    "Pre-activation blocks have lower test error than the original ones (2016 Table 3)",
)


# --- the whole report ------------------------------------------------------------------------------------
def build_report(record: SweepRecord) -> tuple[Report, dict[str, Table]]:
    from orchestrator.sweepfile.spec import parse_spec

    parsed = parse_spec(record.spec_text, source="sweep.yaml")
    spec = parsed.spec
    metric = spec.metric.name
    report = Report(f"{record.name}: {spec.description or 'sweep report'}")
    trials = record.trials
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    planned = int(record.plan.get("num_trials") or len(trials))
    first = trials[0].config if trials else {}
    report.p(
        f"Sweep **{record.name}** (MLflow experiment `{record.experiment}`), {record.status or 'running'}: "
        f"{len(trials)} of {planned} planned trials in MLflow ("
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + "). "
        f"Data set {first.get('dataset.name', '?')}; the epoch of each trial is the one with the lowest val "
        f"error, never chosen on the test set (the sweep's search and early stopping use {metric}). Errors are in %."
    )
    tables: dict[str, Table] = {}
    varying = varying_keys(trials)
    groups = _groups(trials, varying)
    claims_at = len(report.blocks)
    _table6(report, groups, varying, tables)
    _ten_crop(report, groups, tables)
    _figure6(report, groups)
    _figure7(report, groups, tables)
    residual = [t for t in trials if t.config.get(RESIDUAL, True)]
    if SHORTCUT in varying_keys(residual):
        _pivot(
            report,
            residual,
            varying_keys(residual),
            SHORTCUT,
            "Table 3: shortcut options A/B/C",
            "shortcuts",
            "A: identity with zero-padding; B: projections where the shape changes; C: projections everywhere "
            "(2015 §3.3). Test error %, mean ± std (n−1) over completed trials.",
            tables,
        )
    if BLOCK in varying:
        _pivot(
            report,
            trials,
            varying,
            BLOCK,
            "Original vs pre-activation blocks (2016)",
            "blocks",
            "Test error %, mean ± std (n−1) over completed trials.",
            tables,
        )
    for key in varying:
        if key not in (DEPTH, RESIDUAL, SHORTCUT, BLOCK, "model.n") and spec.search.algorithm != "optuna":
            _pivot(
                report,
                trials,
                varying,
                key,
                f"Test error by {key}",
                f"by_{_short(key)}",
                "Test error %, mean ± std (n−1) over completed trials.",
                tables,
            )
    if spec.search.algorithm == "optuna":
        _optuna(report, record, parsed, metric, tables)
    if spec.scheduler.name == "asha":
        _asha(report, record, spec, metric, tables)
    _trials_table(report, record, "ASHA" if spec.scheduler.name == "asha" else "budget", tables)
    claims = Table(
        "claims",
        ["claim of the papers", "this sweep", "evidence"],
        _claims(trials, varying),
        f"Judged on completed trials. A difference counts when it is larger than {100 * ERROR_MARGIN:g} "
        f"points of error ({100 * RESPONSE_MARGIN:g}% of a response std) and than twice its standard "
        f"error (from the spread over seeds, or for an error rate from the number of images it was "
        f"measured on, whichever is larger); one seed per net is one draw.",
    )
    tables["claims"] = claims
    report.blocks[claims_at:claims_at] = [("h2", "What this sweep shows"), claims]
    return report, tables


# Every file a report may hold besides index.md and report.html (by_KEY.csv aside).
STALE = {
    "fig6.png",
    "fig7.png",
    "table6.csv",
    "ten_crop.csv",
    "fig7.csv",
    "shortcuts.csv",
    "blocks.csv",
    "importance.csv",
    "asha.csv",
    "trials.csv",
    "claims.csv",
}


def write_report(record: SweepRecord, out: Path) -> list[Path]:
    """index.md, report.html, the figures and a CSV per table in ``out``; the files written."""
    report, tables = build_report(record)
    out.mkdir(parents=True, exist_ok=True)
    files = {"index.md": report.markdown().encode(), "report.html": report.html().encode()}
    files.update({f"{slug}.csv": t.csv_text().encode() for slug, t in tables.items()})
    files.update({b.file: b.png for b in report.blocks if isinstance(b, Figure)})
    for name, data in files.items():
        (out / name).write_bytes(data)
    for old in out.iterdir():  # a section an earlier report had and this one has not (MLflow keeps its copy)
        if (
            old.name not in files
            and (old.name in STALE or old.name.startswith("by_"))
            and old.suffix in (".csv", ".png")
        ):
            old.unlink()
    return [out / name for name in files]


def report_sweep(tracking_uri: str | None, name: str, *, out: str | None = None, experiment: str | None = None) -> Path:
    """Reads the sweep ``name`` from MLflow, writes its report (default ./reports/NAME) and logs
    the files on the sweep's parent run (artifacts report/; a new report replaces them)."""
    from orchestrator.tracking.records import open_record

    client, record = open_record(tracking_uri, name, experiment)
    folder = Path(out).expanduser() if out else Path.cwd() / "reports" / record.name
    try:
        written = write_report(record, folder)
    except OSError as err:
        raise OSError(f"cannot write the report in {folder}: {err.strerror or err}") from None
    for path in written:
        client.log_artifact(record.parent_id, str(path), REPORT_FOLDER)
    return folder
