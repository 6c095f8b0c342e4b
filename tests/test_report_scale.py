"""The report at 10,000 jobs: one light page of lazily loaded thumbnails, in real headless chromium."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from editq.producer.report_model import build
from editq.producer.report_render import contact_sheets, render_html
from tests.browser import chromium
from tests.test_variants import entry

JOBS, PER_GROUP = 10_000, 4


def _thumb_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (96, 96), (40, 120, 200)).save(buf, "JPEG")
    return buf.getvalue()


def test_ten_thousand_jobs_are_one_light_lazy_page(tmp_path: Path) -> None:
    entries = [entry(f"job{i:05d}", f"sku-{i // PER_GROUP:04d}", "ABCD"[i % PER_GROUP],
                     state="failed" if i % 97 == 0 else "succeeded") for i in range(JOBS)]
    report = build("b-scale", entries)
    assert (report.summary.jobs, report.summary.groups) == (JOBS, JOBS // PER_GROUP)
    data = _thumb_bytes()
    (tmp_path / "thumbs").mkdir()
    for thumb in report.thumbs():
        (tmp_path / thumb.path).write_bytes(data)
    html = render_html(report)
    index = tmp_path / "index.html"
    index.write_text(html)
    assert len(html) < 15 * 1024 * 1024 and "base64" not in html
    assert html.count('loading="lazy"') == len(report.rows) + JOBS - JOBS // 97 - 1
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(index.as_uri(), wait_until="load", timeout=120_000)
        assert page.locator("figure.cell").count() == JOBS
        # outputs only: the test's groups share one input image, which the browser loads once for all rows
        loaded = ("() => Array.from(document.querySelectorAll('figure.cell img'))"
                  ".filter(i => i.complete && i.naturalWidth > 0).length")
        first = page.evaluate(loaded)
        assert 0 < first < 200  # only what is near the viewport was fetched, not 10,000 images
        last = page.locator("section.row").last
        last.scroll_into_view_if_needed()
        page.wait_for_function("(row) => Array.from(row.querySelectorAll('img')).every(i => i.complete && "
                               "i.naturalWidth > 0)", arg=last.element_handle(), timeout=30_000)
        assert page.evaluate(loaded) < 400


def test_contact_sheet_pages(tmp_path: Path) -> None:
    entries = [entry(f"j{i}", f"g{i // 2}", "AB"[i % 2]) for i in range(10)]
    report = build("b", entries)
    (tmp_path / "thumbs").mkdir()
    for thumb in report.thumbs():
        (tmp_path / thumb.path).write_bytes(_thumb_bytes())
    pages = contact_sheets(report, tmp_path, rows_per_page=2)
    assert [p.name for p in pages] == ["contact-sheet.png", "contact-sheet-2.png", "contact-sheet-3.png"]
    with Image.open(pages[0]) as first, Image.open(pages[-1]) as last:
        assert first.height > last.height and first.width == last.width  # 2 rows, then the 1 left
        # the first output's thumbnail is pasted at its cell (input column, then variant A)
        pixel = first.convert("RGB").getpixel((8 + 168 + 80, 30 + 80))
        assert all(abs(a - b) <= 4 for a, b in zip(pixel, (40, 120, 200), strict=True)), pixel  # JPEG, near
        assert first.width == 8 + 3 * 168  # the input and two variants a row
