"""Rendering the report's grid: the HTML page (static or review) and the PNG contact sheet.

Both read only the Report model and the thumbnails already on disk; nothing here touches S3 or Redis.
"""

from __future__ import annotations

import textwrap
from functools import cache
from pathlib import Path

import jinja2
from PIL import Image, ImageDraw, ImageFont

from editq.producer.report_model import Cell, Report

SHEET_ROWS_PER_PAGE = 40
SHEET_CELL = 160
SHEET_TEXT = 46
SHEET_PAD = 8


def fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 120:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s"


def fmt_cost(value: float | None) -> str:
    return "cost n/a" if value is None else f"${value:.4f}"


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("editq.producer", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        trim_blocks=True, lstrip_blocks=True,
    )
    env.globals.update(fmt_s=fmt_s, fmt_cost=fmt_cost)
    return env


def render_html(report: Report, *, review: bool = False, prefix: str = "") -> str:
    """The grid page. `prefix` goes before every thumbnail path (the review app serves them under /)."""
    return _env().get_template("grid.html.j2").render(report=report, review=review, prefix=prefix)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _paste(sheet: Image.Image, path: Path, x: int, y: int) -> bool:
    try:
        with Image.open(path) as src:
            im = src.convert("RGB")
        im.thumbnail((SHEET_CELL, SHEET_CELL))
        sheet.paste(im, (x + (SHEET_CELL - im.width) // 2, y + (SHEET_CELL - im.height) // 2))
        return True
    except (OSError, ValueError):
        return False


def _caption(cell: Cell) -> list[str]:
    mark = "PICKED" if cell.picked else (cell.decision or "")
    cost = "" if cell.cost_usd is None else f" ${cell.cost_usd:.3f}"
    last = cell.state if cell.failed else fmt_s(cell.latency_s)
    return [f"{cell.label} · {cell.provider}"[:30], f"{cell.size} {cell.quality}{cost}"[:30],
            f"{last} {mark}".strip()[:30]]


def contact_sheets(report: Report, folder: Path, rows_per_page: int = SHEET_ROWS_PER_PAGE) -> list[Path]:
    """The grid as PNG pages (`contact-sheet.png`, then `contact-sheet-2.png`... every `rows_per_page` groups):
    the input with its mask, then each variant with its label, provider, size, quality, cost and state."""
    font, small = _font(14), _font(12)
    width = max((len(r.cells) for r in report.rows), default=0) + 1
    step = SHEET_CELL + SHEET_PAD
    pages: list[Path] = []
    for page, start in enumerate(range(0, max(1, len(report.rows)), rows_per_page), start=1):
        rows = report.rows[start:start + rows_per_page]
        sheet = Image.new("RGB", (SHEET_PAD + width * step, 30 + len(rows) * (step + SHEET_TEXT)), "white")
        draw = ImageDraw.Draw(sheet)
        draw.text((SHEET_PAD, 8), f"batch {report.batch_id} · groups {start + 1}-{start + len(rows)} of "
                  f"{len(report.rows)}", fill="black", font=font)
        for i, row in enumerate(rows):
            y = 30 + i * (step + SHEET_TEXT)
            if row.input is not None:
                _paste(sheet, folder / row.input.path, SHEET_PAD, y)
            draw.text((SHEET_PAD, y + SHEET_CELL + 2), row.group[:28], fill="black", font=small)
            for j, cell in enumerate(row.cells, start=1):
                x = SHEET_PAD + j * step
                if cell.picked:
                    box = (x - 3, y - 3, x + SHEET_CELL + 2, y + SHEET_CELL + SHEET_TEXT - 4)
                    draw.rectangle(box, outline="#f2a900", width=3)
                shown = bool(cell.outputs) and _paste(sheet, folder / cell.outputs[0].path, x, y)
                if not shown:
                    draw.rectangle((x, y, x + SHEET_CELL - 1, y + SHEET_CELL - 1), fill="#fbe3e1")
                    draw.text((x + 8, y + SHEET_CELL // 2 - 16), cell.state.upper(), fill="#b3261e", font=font)
                    for n, part in enumerate(textwrap.wrap(cell.error or "", 24)[:4]):
                        draw.text((x + 8, y + SHEET_CELL // 2 + 4 + 14 * n), part, fill="#b3261e", font=small)
                for n, text in enumerate(_caption(cell)):
                    draw.text((x, y + SHEET_CELL + 2 + n * 14), text, fill="black", font=small)
        path = folder / ("contact-sheet.png" if page == 1 else f"contact-sheet-{page}.png")
        sheet.save(path, optimize=False)
        pages.append(path)
    return pages
