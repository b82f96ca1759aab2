"""One self-contained index.html per report folder.

A page is a title plus a list of `Section`s; each section has a heading, optional plain text
(paragraphs split on blank lines), optional images (PNG file names inside the folder) and an
optional `Table`. The page has inline CSS only: no JavaScript, no external resources, so it
opens offline and can be copied around with its folder. All user-supplied text is escaped.

    write_index(out, "Emotion probes: SmolLM2-135M", [
        Section("Probe accuracy", "Linear probe per layer.", images=["probe.png"]),
        Section("Per layer", table=Table(["layer", "acc"], [[0, 0.31], [1, 0.52]])),
    ])
"""

from __future__ import annotations

import datetime as _dt
import html
import math
import re
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any

from emofast.report.files import atomic_path

__all__ = ["Section", "Table", "write_index"]


@dataclass
class Table:
    """A simple table: floats shown with 3 decimals, None as an en dash."""

    columns: list[str]  # header cells
    rows: list[list]  # one list per row, same length as columns

    def __post_init__(self) -> None:
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(f"table row {i} has {len(row)} cells but there are "
                                 f"{len(self.columns)} columns; pad with None for empty cells")


@dataclass
class Section:
    """One block of the page, drawn in order: heading, text, images, table."""

    heading: str
    text: str = ""  # plain text (escaped); blank lines separate paragraphs
    images: list[str] = field(default_factory=list)  # file names relative to the folder
    table: Table | None = None


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       color: #222; background: #fafafa; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 12px; }
h1 { font-size: 1.6em; margin: 0 0 18px; border-bottom: 2px solid #ddd; padding-bottom: 8px; }
h2 { font-size: 1.2em; margin: 28px 0 8px; }
section { background: #fff; border: 1px solid #e4e4e4; border-radius: 6px;
          padding: 4px 18px 14px; margin-bottom: 18px; }
figure { margin: 10px 0; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.8em; color: #666; }
table { border-collapse: collapse; margin: 10px 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 4px 10px; }
th { background: #f0f0f0; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #f8f8f8; }
footer { font-size: 0.8em; color: #777; max-width: 1100px; margin: 0 auto;
         padding: 8px 28px 24px; }
"""


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _cell(x: Any) -> str:
    """Render one table cell: floats to 3 decimals, None as an en dash, the rest as text."""
    if getattr(x, "ndim", None) == 0 and hasattr(x, "item"):  # numpy scalar, 0-d tensor
        x = x.item()
    if x is None:
        return '<td class="num">\u2013</td>'
    if isinstance(x, Real) and not isinstance(x, bool):
        text = f"{x:.3f}" if isinstance(x, float) and math.isfinite(x) else str(x)
        return f'<td class="num">{_esc(text)}</td>'
    return f"<td>{_esc(x)}</td>"


def _table_html(table: Table) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in table.columns)
    body = "\n".join("<tr>" + "".join(_cell(x) for x in row) + "</tr>" for row in table.rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _section_html(section: Section, folder: Path) -> str:
    parts = [f"<section>\n<h2>{_esc(section.heading)}</h2>"]
    for para in re.split(r"\n\s*\n", section.text.strip()):
        if para.strip():
            parts.append(f"<p>{_esc(para.strip())}</p>")
    for name in section.images:
        if Path(name).is_absolute():
            raise ValueError(f"image {name!r} of section {section.heading!r} is an absolute "
                             "path; pass a file name relative to the report folder")
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"image {name!r} of section {section.heading!r} not found in {folder}; "
                "write the plot into the report folder before calling write_index"
            )
        parts.append(f'<figure><img src="{_esc(Path(name).as_posix())}" alt="{_esc(name)}">'
                     f"<figcaption>{_esc(name)}</figcaption></figure>")
    if section.table is not None:
        parts.append(_table_html(section.table))
    parts.append("</section>")
    return "\n".join(parts)


def write_index(dir: str | Path, title: str, sections: list[Section]) -> Path:
    """Write `dir`/index.html for `sections` and return its path.

    Raises FileNotFoundError (naming the file) if a section lists an image missing from `dir`;
    nothing is written in that case. The footer links report.json when it exists in `dir`.
    """
    folder = Path(dir)
    body = "\n".join(_section_html(s, folder) for s in sections)  # checks images first
    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    footer = f"Generated by emofast on {_esc(stamp)}."
    if (folder / "report.json").is_file():
        footer += ' Metrics: <a href="report.json">report.json</a>.'
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<h1>{_esc(title)}</h1>\n{body}\n</main>\n<footer>{footer}</footer>\n</body>\n</html>\n"
    )
    path = folder / "index.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
