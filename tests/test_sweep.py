"""The sweep's pure parts (the providers' list requests and pages, the window, which jobs are handed over) and
the sandbox's emulation of the two lists over HTTP: fal's request history and Replicate's list of predictions."""

from __future__ import annotations

import base64
import io
import json
import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image

from editq.providers.fal import FalSettings
from editq.providers.fal import protocol as fal
from editq.providers.replicate import emulator as replicate_emulator
from editq.providers.replicate import protocol as replicate
from editq.providers.spec import credential_hosts
from editq.providers.types import Answer, Listed, ProviderRequest
from editq.sandbox.runner import Job, JobState
from editq.worker.errors import ProviderError
from editq.worker.sweep import waiting, window
from tests.factories import patched_sandbox
from tests.sandbox_proc import sandbox_process, wait_for

T0 = 1_780_000_000.0  # 2026-05-28T20:26:40Z


def _answer(status: int, body: Any) -> Answer:
    return Answer(status, {"content-type": "application/json"}, json.dumps(body).encode())


# ---- fal: the request history ---------------------------------------------------------------------------------
def test_fal_history_request_names_the_endpoints_and_the_window() -> None:
    req = fal.history_request("https://api.fal.ai/v1/", ["openai/gpt-image-2/edit", "fal-ai/x"], T0, T0 + 90.5)
    assert (req.method, req.url) == ("GET", "https://api.fal.ai/v1/models/requests/by-endpoint")
    assert req.params == {"endpoint_id": "openai/gpt-image-2/edit,fal-ai/x", "start": "2026-05-28T20:26:40.000Z",
                          "end": "2026-05-28T20:28:10.500Z", "limit": "100"}
    assert "status" not in req.params and "expand" not in req.params


def test_fal_history_page_and_its_cursor() -> None:
    req = fal.history_request("https://api.fal.ai/v1", ["openai/gpt-image-2/edit"], T0, T0 + 60)
    page = fal.parse_history(_answer(200, {"items": [
        {"request_id": "a", "ended_at": "2026-05-28T20:26:45Z", "status_code": 200},
        {"request_id": "b", "ended_at": None, "status_code": None},  # not finished (if fal lists such)
        {"request_id": "", "ended_at": "2026-05-28T20:26:45Z"}, "junk",
    ], "next_cursor": "Mg==", "has_more": True}), req)
    assert page.items == [Listed("a", True, T0 + 5), Listed("b", False, None)]
    assert page.next is not None and page.next.url == req.url
    assert page.next.params == {**req.params, "cursor": "Mg=="}
    last = fal.parse_history(_answer(200, {"items": [], "next_cursor": None, "has_more": False}), page.next)
    assert last.items == [] and last.next is None
    with pytest.raises(ProviderError) as refused:
        fal.parse_history(_answer(401, {"detail": "Unauthorized"}), req)
    assert refused.value.status_code == 401
    with pytest.raises(ProviderError, match="malformed"):
        fal.parse_history(_answer(200, {"nope": 1}), req)


def test_fal_sends_its_key_to_the_history_host_and_the_sweep_can_be_turned_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("EDITQ_FAL_")]:  # a session stack points them at the sandbox
        monkeypatch.delenv(name)
    settings = FalSettings(api_key="k")
    assert "api.fal.ai" in credential_hosts(settings)
    assert fal.FalProtocol(settings).history_request(T0, T0 + 1) is not None
    off = FalSettings(api_key="k", sweep=False)
    assert "api.fal.ai" not in credential_hosts(off)
    assert fal.FalProtocol(off).history_request(T0, T0 + 1) is None


# ---- Replicate: the list of predictions -----------------------------------------------------------------------
def test_replicate_list_request_and_page() -> None:
    req = replicate.list_request(T0, T0 + 30)
    assert (req.method, req.url) == ("GET", "/v1/predictions")
    assert req.params == {"created_after": "2026-05-28T20:26:40.000Z", "created_before": "2026-05-28T20:27:10.000Z"}
    base = "https://api.replicate.com"
    body = {"next": f"{base}/v1/predictions?cursor=abc", "previous": None, "results": [
        {"id": "p1", "status": "succeeded", "created_at": "2026-05-28T20:26:41.000Z"},
        {"id": "p2", "status": "processing", "created_at": "2026-05-28T20:26:42Z"},
        {"id": "p3", "status": "canceled", "created_at": None}, {"status": "failed"},
    ]}
    page = replicate.parse_list(_answer(200, body), base)
    assert page.items == [Listed("p1", True, T0 + 1), Listed("p2", False, T0 + 2), Listed("p3", True, None)]
    assert page.next == ProviderRequest("GET", f"{base}/v1/predictions?cursor=abc", what="list")
    # a next page on another host is not followed (the token would go there)
    elsewhere = replicate.parse_list(_answer(200, {**body, "next": "https://evil.example/v1/predictions?c=1"}), base)
    assert elsewhere.next is None
    with pytest.raises(ProviderError) as throttled:
        replicate.parse_list(_answer(429, {"detail": "Request was throttled. Your rate limit resets in ~3s."}), base)
    assert throttled.value.retry_after_s == 3.0


# ---- the worker's part ----------------------------------------------------------------------------------------
def test_the_window_starts_before_the_oldest_job_the_provider_holds() -> None:
    assert window(T0, T0 + 100, 60, 3600) == (T0 - 60, T0 + 100)
    assert window(T0, T0 + 7200, 60, 3600) == (T0 + 3600, T0 + 7200)  # never further back than the lookback


def test_only_finished_requests_of_jobs_still_waiting_are_handed_over() -> None:
    items = [Listed("a", True), Listed("b", False), Listed("c", True), Listed("d", True), Listed("e", True),
             Listed("a2", True)]
    jobs = ["j1", "j2", "j3", None, "j5", "j1"]
    states = ["submitted", "submitted", "ready", "", "submitting", "submitted"]
    # b: still running; c: its webhook came (ready); d: not ours; e: its id is being recorded (the next
    # sweep or the safety net gets it); j1 once
    assert waiting(items, jobs, states) == ["j1"]


# ---- the sandbox's lists over HTTP ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sandbox() -> Iterator[str]:
    with sandbox_process("--seed", "13", keep_sandbox_env=True) as url:
        yield url


@pytest.fixture
def sb(sandbox: str) -> Iterator[str]:
    yield from patched_sandbox(sandbox, {"latency_s": 0.05, "jitter_s": 0.0, "concurrency": 8, "render": "cached",
                                         "submit_5xx_rate": 0.0, "submit_429_rate": 0.0, "submit_timeout_rate": 0.0,
                                         "job_failure_rate": 0.0})


def _png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 120, 200)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def test_sandbox_fal_history(sb: str) -> None:
    key = {"Authorization": "Key sandbox-test"}
    url = f"{sb}/fal-api/v1/models/requests/by-endpoint"
    start = time.time() - 1
    ids = []
    for i in range(3):
        body = {"prompt": f"history {i}", "image_urls": [_png()]}
        ids.append(httpx.post(f"{sb}/fal/openai/gpt-image-2/edit", json=body, headers=key).json()["request_id"])
    wait_for(lambda: all(httpx.get(f"{sb}/fal/openai/gpt-image-2/requests/{r}/status", headers=key).status_code == 200
                         for r in ids), what="fal requests completed")
    end = time.time() + 1
    window = {"endpoint_id": "openai/gpt-image-2/edit", "start": _iso(start), "end": _iso(end)}

    assert httpx.get(url, params=window).status_code == 401
    assert httpx.get(url, params={"start": _iso(start)}, headers=key).status_code == 422  # endpoint_id required
    assert httpx.get(url, params={**window, "limit": "101"}, headers=key).status_code == 422
    first = httpx.get(url, params={**window, "limit": "2"}, headers=key).json()
    assert first["has_more"] is True and first["next_cursor"] == base64.b64encode(b"2").decode()
    second = httpx.get(url, params={**window, "limit": "2", "cursor": first["next_cursor"]}, headers=key).json()
    assert second["has_more"] is False and second["next_cursor"] is None
    listed = first["items"] + second["items"]
    assert sorted(i["request_id"] for i in listed) == sorted(ids)
    ends = [i["ended_at"] for i in listed]
    assert ends == sorted(ends, reverse=True)  # newest end first
    item = listed[0]
    assert set(item) == {"request_id", "endpoint_id", "started_at", "sent_at", "ended_at", "status_code", "duration"}
    assert item["endpoint_id"] == "openai/gpt-image-2/edit" and item["status_code"] == 200
    expanded = httpx.get(url, params={**window, "expand": "payloads", "request_id": ids[0]}, headers=key).json()
    (one,) = expanded["items"]
    assert one["request_id"] == ids[0] and one["json_output"]["images"]
    # the window selects on the end time (end exclusive); another endpoint and a status filter select nothing
    later = httpx.get(url, params={**window, "start": _iso(end)}, headers=key).json()
    assert later["items"] == []
    other = httpx.get(url, params={**window, "endpoint_id": "fal-ai/other"}, headers=key).json()
    assert other["items"] == []
    errors = httpx.get(url, params={**window, "status": "error"}, headers=key).json()
    assert errors["items"] == []
    assert httpx.get(url, params={**window, "status": "bogus"}, headers=key).status_code == 422


def test_sandbox_replicate_list_filters_and_cursor(sb: str) -> None:
    auth = {"Authorization": "Bearer r8_list-token"}
    start = time.time() - 0.5
    ids = []
    for i in range(3):
        created = httpx.post(f"{sb}/replicate/v1/models/openai/gpt-image-2/predictions", headers=auth,
                             json={"input": {"prompt": f"list {i}", "input_images": [_png()]}})
        assert created.status_code == 201
        ids.append(created.json()["id"])
    end = time.time() + 0.5
    url = f"{sb}/replicate/v1/predictions"
    assert httpx.get(url).status_code == 401
    listing = httpx.get(url, params={"created_after": _iso(start), "created_before": _iso(end)}, headers=auth).json()
    assert [p["id"] for p in listing["results"]] == ids[::-1]  # newest first, only the window
    assert listing["next"] is None and listing["previous"] is None
    assert set(listing["results"][0]) >= {"id", "status", "created_at", "completed_at", "output", "urls"}
    before = httpx.get(url, params={"created_before": _iso(start)}, headers=auth).json()
    assert not set(ids) & {p["id"] for p in before["results"]}
    assert httpx.get(url, params={"source": "web"}, headers=auth).json()["results"] == []
    assert httpx.get(url, params={"created_after": "yesterday"}, headers=auth).status_code == 400
    assert httpx.get(url, params={"cursor": "not-a-cursor"}, headers=auth).status_code == 400


def _job(pid: str, at: float) -> Job:
    async def work(_: Job) -> Any:
        raise AssertionError

    job = Job(provider="replicate", request_id=pid, model="openai/gpt-image-2", work=work)
    job.received_at, job.state = at, JobState.COMPLETED
    return job


def test_replicate_keyset_pages_do_not_shift_when_predictions_are_created_meanwhile() -> None:
    size = replicate_emulator.PAGE_SIZE
    jobs = [_job(f"p{i:04d}", T0 + i) for i in range(size + 30)]
    page, older, newer = replicate_emulator.list_page(jobs, None)
    assert [j.request_id for j in page] == [f"p{i:04d}" for i in range(size + 29, 29, -1)]
    assert older is not None and newer is None
    jobs += [_job(f"q{i}", T0 + 10_000 + i) for i in range(5)]  # created while the client pages
    cursor = replicate_emulator.decode_cursor(older)
    rest, more, back = replicate_emulator.list_page(jobs, cursor)
    assert [j.request_id for j in rest] == [f"p{i:04d}" for i in range(29, -1, -1)]
    assert more is None and back is not None
    again, _, _ = replicate_emulator.list_page(jobs, replicate_emulator.decode_cursor(back))
    assert [j.request_id for j in again][-1] == f"p{30:04d}" and len(again) == size
    query = parse_qs(urlsplit(f"http://x/?cursor={older}").query)
    assert replicate_emulator.decode_cursor(query["cursor"][0]) == cursor
