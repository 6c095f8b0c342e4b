"""The report and the review app in real headless chromium, on a batch run through the sandbox."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page

from editq.producer.report import write_report
from editq.producer.review import ReviewSession, create_app
from editq.producer.review_log import ReviewLog
from editq.producer.stack import LocalStack
from tests.browser import chromium, load_every_image, serve
from tests.conftest import ROOT
from tests.e2e import manifests_by_cid

DOCS = ROOT / "docs"
# EDITQ_UPDATE_SCREENSHOTS=1 rewrites docs/report.png and docs/review.png; otherwise they go to the test's folder
UPDATE_DOCS = os.environ.get("EDITQ_UPDATE_SCREENSHOTS") == "1"


def shot(page: Page, name: str, tmp_path: Path) -> None:
    path = (DOCS if UPDATE_DOCS else tmp_path) / name
    page.screenshot(path=str(path))
    size = page.viewport_size
    assert size is not None
    with Image.open(path) as im:
        assert im.size == (size["width"], size["height"])


JOBS, GROUPS, SUCCEEDED = 9, 4, 8


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def _page(browser: Browser) -> Page:
    return browser.new_page(viewport={"width": 1500, "height": 1000})


def assert_grid(page: Page) -> list[dict]:  # type: ignore[type-arg]
    """Every image of the grid decoded (naturalWidth > 0): one input per group, one output per succeeded job."""
    assert page.locator("section.row").count() == GROUPS
    assert page.locator("figure.cell").count() == JOBS
    images = load_every_image(page)
    assert len(images) == GROUPS + SUCCEEDED
    assert all(img["w"] > 0 and img["h"] > 0 for img in images), images
    failed = page.locator('figure.cell[data-state="failed"]')
    assert failed.count() == 1 and "moderation_blocked" in failed.inner_text()
    assert failed.locator("img").count() == 0  # the failure is shown where the output would be
    return images


def test_static_report_renders_every_image_from_disk(live: LocalStack, variant_batch: str, browser: Browser,
                                                     tmp_path: Path) -> None:
    files = write_report(variant_batch, tmp_path / "report")
    assert files.report is not None and files.missing == []
    # one thumbnail per distinct image: the sandbox answers identical requests with identical bytes
    assert files.thumbs == len(files.report.thumbs()) >= GROUPS + 1
    html = files.index.read_text()
    assert "<img loading=\"lazy\"" in html and "base64" not in html  # thumbnails by path, nothing inline
    page = _page(browser)
    page.goto(files.index.as_uri())
    images = assert_grid(page)
    assert all(not img["src"].startswith(("http", "/")) for img in images)  # relative paths: opens from disk
    assert "jobs 9" in page.locator("#summary").inner_text()
    labels = page.eval_on_selector_all('section[data-group="bottle"] figure.cell',
                                       "els => els.map(e => e.innerText.split('\\n')[0].trim())")
    assert labels == ["A · fal", "A · replicate", "A · openai"]
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "report.png", tmp_path)
    (sheet,) = files.sheets
    with Image.open(sheet) as im:
        assert im.format == "PNG" and im.width >= 4 * 160 and im.height >= GROUPS * 160


def _wait_saved(page: Page, n: int) -> None:
    page.wait_for_function(f"document.getElementById('saved').textContent === 'saved {n} decision(s) to S3'")


def _keys_to_group(page: Page, group: str) -> None:
    """Move the review focus to `group`'s row with j/k only."""
    groups = page.eval_on_selector_all("section.row", "els => els.map(e => e.dataset.group)")
    target = groups.index(group)
    current = page.evaluate("window.editqReview.position()[0]")
    for _ in range(abs(target - current)):
        page.keyboard.press("j" if target > current else "k")
    assert page.locator("section.row.current").get_attribute("data-group") == group


def test_review_pick_by_keyboard_is_saved_to_s3_and_shown_after_reload(
        live: LocalStack, variant_batch: str, browser: Browser, tmp_path: Path) -> None:
    from editq.worker.storage import get_storage

    storage = get_storage()
    jobs = manifests_by_cid(variant_batch)
    session = ReviewSession(variant_batch, storage, tmp_path / "cache", "reviewer@test")
    before = len(session.log.decisions)
    with serve(create_app(session)) as url:
        page = _page(browser)
        page.goto(url)
        assert_grid(page)
        page.evaluate("window.scrollTo(0, 0)")
        _keys_to_group(page, "sneaker")
        page.keyboard.press("2")  # pick the second variant of the group
        page.wait_for_function("document.getElementById('saved').textContent.startsWith('saved')")
        s2 = page.locator(f'figure.cell[data-job="{jobs["sneaker-s2"]["job_id"]}"]')
        assert "picked" in (s2.get_attribute("class") or "")

        log = ReviewLog(storage, variant_batch)
        decisions = log.load()
        assert len(decisions) == before + 1
        last = decisions[-1]
        assert (last.action, last.job_id, last.group, last.label, last.by) == (
            "pick", jobs["sneaker-s2"]["job_id"], "sneaker", "s2", "reviewer@test")

        page.click("#bulk-reject-failed")
        _wait_saved(page, before + 2)
        failed = page.locator('figure.cell[data-state="failed"]')
        assert "rejected" in (failed.get_attribute("class") or "")
        page.select_option("#bulk-label", "A")
        page.click("#bulk-approve")
        _wait_saved(page, before + 5)
        assert page.locator('section[data-group="bottle"] figure.cell.approved').count() == 3
        bulk = log.load()[-4:]
        assert [d.bulk for d in bulk] == ["reject all failed"] + ["approve label A"] * 3
        assert bulk[0].job_id == jobs["watch-blocked"]["job_id"] and bulk[0].action == "reject"

        page.reload()  # reopening resumes: the decisions come back from S3
        assert "picked" in (page.locator(f'figure.cell[data-job="{jobs["sneaker-s2"]["job_id"]}"]')
                            .get_attribute("class") or "")
        assert page.locator("figure.cell.rejected").count() == 1
        page.set_viewport_size({"width": 1500, "height": 1320})
        page.evaluate("window.scrollTo(0, 0)")
        shot(page, "review.png", tmp_path)

    files = write_report(variant_batch, tmp_path / "report")
    page = _page(browser)
    page.goto(files.index.as_uri())
    cell = page.locator(f'figure.cell[data-job="{jobs["sneaker-s2"]["job_id"]}"]')
    assert "picked" in (cell.get_attribute("class") or "") and "★ picked" in page.evaluate(
        "(el) => getComputedStyle(el.querySelector('.badge'), '::after').content", cell.element_handle())
    assert "rejected" in (page.locator('figure.cell[data-state="failed"]').get_attribute("class") or "")
