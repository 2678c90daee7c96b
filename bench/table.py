"""What every benchmark prints: a plain-text table on stdout and, with --out, the same table as
markdown appended to a file (for docs/benchmarks.md), under a title that says what and where."""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path


def machine(device: str = "cpu") -> str:
    """The card's name, or the CPU and its torch threads; with torch's version and today's date."""
    import torch

    if device.startswith("cuda"):
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads"
    return f"{where}, torch {torch.__version__}, {datetime.now(timezone.utc):%Y-%m-%d}"


def _numeric(cell: str) -> bool:
    return cell[:1].isdigit() or (cell[:1] in "-+–" and cell[1:2].isdigit())


def format_text(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    cells = [columns, *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    right = [all(_numeric(r[i]) or r[i] in ("–", "-") for r in rows) for i in range(len(columns))]
    lines = [
        "  ".join(c.rjust(w) if right[i] else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(title: str, command: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    right = [all(_numeric(r[i]) or r[i] in ("–", "-") for r in rows) for i in range(len(columns))]
    lines = [
        f"#### {title}",
        "",
        f"`{command}`",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---:" if r else "---" for r in right) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n\n"


def emit(
    title: str,
    columns: tuple[str, ...],
    rows: list[tuple[str, ...]],
    out: Path | None,
    argv: list[str] | None,
    name: str,
) -> None:
    """Print the table; append it as markdown to ``out`` with the command that made it."""
    print()
    print(title)
    print(format_text(columns, rows), flush=True)
    if out is not None:
        args = sys.argv[1:] if argv is None else argv
        command = f"python bench {name} " + " ".join(args)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(format_markdown(title, command.strip(), columns, rows))


def parse_with_smoke_test(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    smoke_test: dict,
    smoke_help: str = "a tiny run that checks the benchmark works",
) -> argparse.Namespace:
    """Adds --out and --smoke-test to ``parser`` and parses ``argv``; --smoke-test sets the
    arguments named in ``smoke_test`` to its values."""
    parser.add_argument("--out", type=Path, help="also append the table as markdown to this file")
    parser.add_argument("--smoke-test", action="store_true", help=smoke_help)
    args = parser.parse_args(argv)
    if args.smoke_test:
        for key, value in smoke_test.items():
            setattr(args, key, value)
    return args


def check_args(parser: argparse.ArgumentParser, minimums: dict[str, tuple[int, int]], depths=()) -> None:
    """A usage error (exit 2) for a value below its minimum (``{"--flag": (value, least)}``) or a
    depth that is not a CIFAR ResNet's."""
    from resnet_core.config import ModelConfig
    from resnet_core.errors import ConfigError

    for flag, (value, least) in minimums.items():
        if value < least:
            parser.error(f"{flag}: {value} must be at least {least}")
    for depth in depths:
        try:
            ModelConfig(depth=depth)
        except ConfigError as err:
            parser.error(f"--depth: {err.reason}")
