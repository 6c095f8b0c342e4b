"""The ModelRunner emulator's faithfulness rules (providers/modelrunner/emulator.py), over real HTTP against an
in-process sandbox: input types refused as a JSON-typed (zod) service refuses them, documented defaults and
explicit nulls accepted where allowed, an empty events filter honoured, and cancel answering in every state
exactly as the status URL does while cancelling nothing."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from editq.providers.modelrunner import emulator
from editq.providers.modelrunner.emulator import js_numbers
from editq.sandbox.config import SandboxConfig
from editq.sandbox.runner import Job, JobOutcome
from editq.sandbox.testing import running_sandbox
from tests.sandbox_proc import wait_for

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODEL = "openai/gpt-image-2/edit"
IMAGE = "data:image/png;base64," + base64.b64encode((EXAMPLES / "mug.png").read_bytes()).decode()
FAST = {"latency_s": 0.05, "jitter_s": 0.0, "concurrency": 8, "job_failure_rate": 0.0, "render": "cached"}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[str]:
    real_edit = emulator.ModelRunnerProvider._edit

    async def edit(self: emulator.ModelRunnerProvider, job: Job) -> JobOutcome:
        if job.payload.prompt == "crash":  # the emulated model crashes: the request ends FAILED
            raise RuntimeError("model crashed")
        return await real_edit(self, job)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(emulator.ModelRunnerProvider, "_edit", edit)
        with running_sandbox(SandboxConfig(seed=5, **FAST)) as url:
            yield url


@pytest.fixture()
def http(sandbox: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox + "/modelrunner", headers={"Authorization": "Key test"}, timeout=30) as c:
        assert c.patch(sandbox + "/_sandbox/config", json=FAST).status_code == 200
        yield c


def _submit(http: httpx.Client, **fields: Any) -> dict[str, Any]:
    resp = http.post(f"/{MODEL}", json={"prompt": "sepia", "image_urls": [IMAGE], "quality": "low", **fields})
    assert resp.status_code == 201, resp.text
    sub: dict[str, Any] = resp.json()
    return sub


def _status(http: httpx.Client, sub: dict[str, Any]) -> str:
    status: str = http.get(sub["status_url"]).json()["status"]
    return status


def _settled(http: httpx.Client, sub: dict[str, Any]) -> str:
    return wait_for(lambda: (s if (s := _status(http, sub)) in ("COMPLETED", "FAILED") else None),
                    what=f"{sub['request_id']} settled")


# ---- types -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("field", "value", "code"), [
    ("num_images", "2", "int_type"),
    ("num_images", True, "int_type"),
    ("num_images", 1.5, "int_type"),
    ("sync_mode", "true", "bool_type"),
    ("sync_mode", 1, "bool_type"),
    ("prompt", 5, "string_type"),
    ("image_urls", IMAGE, "list_type"),
    ("mask_url", 5, "string_type"),
    ("quality", None, "literal_error"),
    ("num_images", None, "int_type"),
    ("output_format", None, "literal_error"),
    ("image_size", None, "value_error"),
])
def test_loosely_typed_inputs_are_refused(http: httpx.Client, field: str, value: Any, code: str) -> None:
    resp = http.post(f"/{MODEL}", json={"prompt": "x", "image_urls": [IMAGE], field: value})
    assert resp.status_code == 400
    (issue,) = resp.json()["error"]
    assert (issue["path"], issue["code"]) == ([field], code)
    # the issues again under details.validationErrors: where @modelrunner/client reads them (ValidationError)
    assert resp.json()["details"] == {"code": "VALIDATION_ERROR", "validationErrors": [issue]}


def test_integral_numbers_are_integers_as_in_json() -> None:
    assert js_numbers({"n": 2.0, "x": [1.0, 1.5], "b": True, "s": {"w": 1024.0}}) == \
        {"n": 2, "x": [1, 1.5], "b": True, "s": {"w": 1024}}


def test_integral_float_num_images_is_accepted(http: httpx.Client) -> None:
    sub = _submit(http, num_images=2.0, image_size={"width": 1024.0, "height": 1024})
    assert _settled(http, sub) == "COMPLETED"
    assert len(http.get(sub["response_url"]).json()["output"]["images"]) == 2


# ---- defaults and nulls ----------------------------------------------------------------------------------
def test_documented_defaults_and_explicit_nulls_are_accepted(http: httpx.Client, sandbox: str) -> None:
    sub = _submit(http, image_size="auto", quality="high", num_images=1, output_format="png", sync_mode=False,
                  mask_url=None, webhook=None, webhook_events_filter=None, metadata=None)
    assert sub["status"] == "IN_QUEUE" and sub.get("webhook_events_filter") is None
    assert _settled(http, sub) == "COMPLETED"
    result = http.get(sub["response_url"]).json()
    assert (result["billingStatus"], result["metadata"]) == ("charged", {})
    assert result["totalPrice"] == "0.22"  # quality high, the documented default, priced as such
    entry = httpx.get(f"{sandbox}/_sandbox/requests/{sub['request_id']}").json()
    assert entry["webhook_url"] is None


def test_the_default_events_filter_is_completed(http: httpx.Client) -> None:
    sub = _submit(http, webhook="http://127.0.0.1:9/x")
    assert sub["webhook_events_filter"] == ["completed"]
    assert _submit(http, webhook="http://127.0.0.1:9/x", webhook_events_filter=[])["webhook_events_filter"] == []


def test_an_empty_events_filter_delivers_nothing() -> None:
    assert emulator.events_of({}) == ["completed"]
    assert emulator.events_of({"webhook_events_filter": None}) == ["completed"]
    assert emulator.events_of({"webhook_events_filter": []}) == []
    assert emulator.events_of({"webhook_events_filter": ["start"]}) == ["start"]


# ---- cancel ----------------------------------------------------------------------------------------------
def _cancel_matches_status(http: httpx.Client, sub: dict[str, Any], code: int, status: str) -> None:
    for method in ("PUT", "GET"):
        cancel = http.request(method, sub["cancel_url"])
        state = http.get(sub["status_url"])
        assert (cancel.status_code, cancel.json()["status"]) == (code, status), cancel.text
        assert (state.status_code, state.json()["status"]) == (code, status)


def test_cancel_answers_the_current_status_in_every_state(http: httpx.Client, sandbox: str) -> None:
    done = _submit(http)
    crashed = _submit(http, prompt="crash")
    assert http.patch(f"{sandbox}/_sandbox/config", json={"job_failure_rate": 1.0}).status_code == 200
    failed_at_provider = _submit(http)
    for sub in (done, crashed, failed_at_provider):
        _settled(http, sub)
    _cancel_matches_status(http, done, 200, "COMPLETED")
    _cancel_matches_status(http, failed_at_provider, 200, "COMPLETED")
    _cancel_matches_status(http, crashed, 400, "FAILED")
    assert "error" in http.put(crashed["cancel_url"]).json()
    # still COMPLETED and charged / failed as before: cancel changed nothing
    assert http.get(done["response_url"]).json()["billingStatus"] == "charged"
    assert http.get(failed_at_provider["response_url"]).status_code == 422

    # one running, one queued behind it (concurrency 1, a long latency)
    patch = {"job_failure_rate": 0.0, "latency_s": 60.0, "concurrency": 1}
    assert http.patch(f"{sandbox}/_sandbox/config", json=patch).status_code == 200
    running = _submit(http)
    wait_for(lambda: _status(http, running) == "IN_PROGRESS", what="running")
    queued = _submit(http)
    assert _status(http, queued) == "IN_QUEUE"
    _cancel_matches_status(http, running, 200, "IN_PROGRESS")
    _cancel_matches_status(http, queued, 200, "IN_QUEUE")

    unknown = {"cancel_url": f"{sandbox}/modelrunner/{MODEL}/requests/nope/cancel",
               "status_url": f"{sandbox}/modelrunner/{MODEL}/requests/nope/status"}
    _cancel_matches_status_error(http, unknown, 404)
    assert httpx.put(running["cancel_url"]).status_code == 401
    assert _status(http, running) == "IN_PROGRESS" and _status(http, queued) == "IN_QUEUE"


def _cancel_matches_status_error(http: httpx.Client, sub: dict[str, str], code: int) -> None:
    for method in ("PUT", "GET"):
        cancel = http.request(method, sub["cancel_url"])
        assert cancel.status_code == http.get(sub["status_url"]).status_code == code
        assert cancel.json()["error"] == "Request not found"
