"""The sandbox's faults after admission (sandbox/http_faults.py) and its late / redirected webhooks, over HTTP."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from editq.sandbox.http_faults import route_kind
from tests.sandbox_proc import sandbox_process, wait_for
from tests.webhook_peer import Peer

AUTH = {"Authorization": "Key sandbox-test"}
EDIT = "/fal/openai/gpt-image-2/edit"
PROVIDERS = ["fal", "replicate", "openai"]


def _data_uri() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 90, 200)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _submit(c: httpx.Client, webhook: str | None = None) -> httpx.Response:
    params = {"fal_webhook": webhook} if webhook else {}
    return c.post(EDIT, json={"prompt": "make it blue", "image_urls": [_data_uri()]}, headers=AUTH, params=params)


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("GET", "/files/0123.png", ("download", "")),
    ("HEAD", "/files/0123.png", None),
    ("GET", "/fal/openai/gpt-image-2/edit/requests/x/status", ("poll", "fal")),
    ("GET", "/replicate/v1/predictions/abc", ("poll", "replicate")),
    ("POST", "/fal/openai/gpt-image-2/edit", ("submit", "fal")),
    ("POST", "/openai/v1/images/edits", ("submit", "openai")),
    ("POST", "/replicate/v1/predictions/abc/cancel", None),
    ("PUT", "/fal/openai/gpt-image-2/edit/requests/x/cancel", None),
    ("GET", "/_sandbox/stats", None),
    ("POST", "/files/upload", None),
    ("GET", "/nobody/v1/x", None),
])
def test_route_kinds(method: str, path: str, expected: tuple[str, str] | None) -> None:
    assert route_kind(method, path, PROVIDERS) == expected


def test_poll_and_download_faults_answer_503_and_429_without_reaching_the_route() -> None:
    with sandbox_process() as url, httpx.Client(base_url=url, timeout=10) as c:
        sub = _submit(c).json()
        status_url = sub["status_url"]
        done = wait_for(lambda: (r := c.get(status_url, headers=AUTH)).status_code == 200 and r.json(), what="done")
        assert done["status"] == "COMPLETED"
        image_url = c.get(sub["response_url"], headers=AUTH).json()["images"][0]["url"]
        assert c.get(image_url).status_code == 200

        c.patch("/_sandbox/config", json={"poll_5xx_rate": 1.0})
        assert c.get(status_url, headers=AUTH).status_code == 503
        c.patch("/_sandbox/config", json={"poll_5xx_rate": 0.0, "poll_429_rate": 1.0, "retry_after_s": 3})
        r = c.get(status_url, headers=AUTH)
        assert (r.status_code, r.headers["retry-after"]) == (429, "3")
        c.patch("/_sandbox/config", json={"poll_429_rate": 0.0, "download_5xx_rate": 1.0})
        assert c.get(image_url).status_code == 503
        c.patch("/_sandbox/config", json={"download_5xx_rate": 0.0, "download_429_rate": 1.0})
        assert c.get(image_url).status_code == 429
        # a per-provider override switches the poll fault off for fal only
        c.patch("/_sandbox/config", json={"download_429_rate": 0.0, "poll_5xx_rate": 1.0,
                                          "provider_faults": {"fal": {"poll_5xx_rate": 0.0}}})
        assert c.get(status_url, headers=AUTH).status_code == 200
        c.patch("/_sandbox/config", json={"download_429_rate": 0.0, "provider_faults": {}})
        assert c.get(image_url).status_code == 200  # only polls are faulted now: the file is served
        totals = c.get("/_sandbox/stats").json()["totals"]
        assert totals["rejected"] == {"poll_5xx": 1, "poll_429": 1}
        assert totals["file_faults"] == {"download_5xx": 1, "download_429": 1}


def test_submit_reset_accepts_the_request_then_drops_the_connection() -> None:
    with sandbox_process("--submit-reset-rate", "1") as url, httpx.Client(base_url=url, timeout=10) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            _submit(c)
        log = c.get("/_sandbox/requests", params={"provider": "fal"}).json()
        assert log["count"] == 1  # accepted: it runs (and would be billed) though the client saw no answer
        wait_for(lambda: c.get("/_sandbox/requests", params={"provider": "fal", "status": "completed"}).json()["count"],
                 what="the accepted request to complete")
        assert c.get("/_sandbox/stats").json()["providers"]["fal"]["rejected"] == {"submit_reset": 1}
        # a refused submit is answered as it is (nothing accepted, nothing to reset)
        c.patch("/_sandbox/config", json={"submit_5xx_rate": 1.0})
        assert _submit(c).status_code == 503


def test_late_and_redirected_webhooks() -> None:
    peer = Peer()
    try:
        with sandbox_process("--webhook-redirect-rate", "1", "--webhook-retry-attempts", "1",
                             "--webhook-retry-backoff-s", "0") as url, httpx.Client(base_url=url, timeout=10) as c:
            rid = _submit(c, peer.url + "/hook").json()["request_id"]

            def record() -> dict | None:
                hook = c.get(f"/_sandbox/requests/{rid}").json()["webhook"]
                return hook if hook and hook["attempts"] >= 2 else None

            hook = wait_for(record, what="both delivery attempts")
            assert hook["redirected"] and hook["delivered"] == 0 and hook["last_status"] == 307
            assert peer.deliveries == []  # the sender does not follow the redirect

            c.patch("/_sandbox/config", json={"webhook_redirect_rate": 0.0, "webhook_late_rate": 1.0,
                                              "webhook_late_s": 600})
            rid = _submit(c, peer.url + "/late").json()["request_id"]
            wait_for(lambda: c.get(f"/_sandbox/requests/{rid}").json()["status"] == "COMPLETED", what="completion")
            entry = c.get(f"/_sandbox/requests/{rid}").json()
            assert entry["webhook"]["late"] and entry["webhook"]["attempts"] == 0  # held, not sent
            webhooks = c.get("/_sandbox/stats").json()["totals"]["webhooks"]
            assert (webhooks["late"], webhooks["redirected"], webhooks["pending"]) == (1, 1, 1)
            c.patch("/_sandbox/config", json={"webhook_late_rate": 0.0})
            rid = _submit(c, peer.url + "/on-time").json()["request_id"]
            wait_for(lambda: any(p == "/on-time" for p, _, _ in peer.deliveries), what="an on-time delivery")
    finally:
        peer.close()
