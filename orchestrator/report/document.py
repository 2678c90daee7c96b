"""The report as a document: headings, paragraphs, tables and figures, rendered to Markdown, one
self-contained HTML file and a CSV per table. Kept apart from what the sections say, so that one
place decides how a number is shown (two decimals, in %) and how it is written (in full)."""

from __future__ import annotations

import base64
import csv
import html
import io
import re
import statistics
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Count", "Figure", "Number", "Percent", "Report", "Stat", "Table", "percent"]


# --- what a table cell can hold -------------------------------------------------------------------
@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n−1; None for one run) of an error, in %."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, fractions: list[float]) -> Stat | None:
        """The errors of a net's seeds (fractions) as one cell; None where there are none."""
        values = [100 * v for v in fractions]
        if not values:
            return None
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))

    def __str__(self) -> str:
        spread = f" ± {self.std:.2f}" if self.std is not None else ""
        return f"{self.mean:.2f}{spread} (n={self.n})"


class Count(int):
    """A parameter count: shown as the paper does (0.27M), written in full."""

    def __str__(self) -> str:
        return f"{self / 1e6:.2f}M" if self >= 10_000 else str(int(self))


class Number(float):
    """A plain number (not an error fraction): shown and written as it is."""

    def __str__(self) -> str:
        return f"{float(self):.3f}"


class Percent(Number):
    """A number already in % (the papers' errors): shown as they print it, written as it is."""

    def __str__(self) -> str:
        return f"{float(self):.2f}"


def percent(value: float | None) -> Percent | None:
    """A paper's error (or its absence) as a cell."""
    return None if value is None else Percent(value)


# --- the blocks ---------------------------------------------------------------------------------------
@dataclass
class Table:
    slug: str  # file name of its CSV
    columns: list[str]
    rows: list[list[Any]]  # str, int, float (a fraction, shown in %), Stat, Count, Number or None
    caption: str = ""

    def numeric(self, column: int) -> bool:
        """Numbers are right-aligned, words left."""
        values = [r[column] for r in self.rows if r[column] is not None]
        return bool(values) and all(isinstance(v, (int, float, Stat)) for v in values)

    def cell(self, value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float) and not isinstance(value, Number):
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
    if isinstance(value, Number):
        return repr(float(value))
    if isinstance(value, Count):
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
        """index.md: the figures and CSVs are files beside it."""
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
        """report.html: one file to send, the figures inside it."""
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
