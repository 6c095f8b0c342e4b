"""The sandbox's fal queue protocol, over real HTTP against ``python -m editq.sandbox`` in a subprocess.

Synchronisation is by bounded polling (never by sleeping); jobs that must stay IN_PROGRESS are held
either by a long latency (then cancelled) or by an input URL the test's receiver holds open.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from PIL import Image, ImageChops, ImageDraw

from tests import js_clients, sandbox_proc

APP = "openai/gpt-image-2/edit"
AUTH = {"Authorization": "Key sandbox-test"}
T = TypeVar("T")

BASELINE: dict[str, Any] = {
    "latency_s": 0.05,
    "jitter_s": 0.0,
    "concurrency": 8,
    "submit_5xx_rate": 0.0,
    "submit_429_rate": 0.0,
    "submit_timeout_rate": 0.0,
    "timeout_hold_s": 0.05,
    "retry_after_s": 1.0,
    "job_failure_rate": 0.0,
    "webhook_lost_rate": 0.0,
    "webhook_duplicate_rate": 0.0,
    "webhook_bad_signature_rate": 0.0,
    "webhook_delay_s": 0.0,
    "webhook_retry": True,
    "webhook_retry_attempts": 3,
    "webhook_retry_backoff_s": 0.05,
    "render": "real",
    "fal_user_id": "sandbox-user",
}


def wait_for(check: Callable[[], T | None], timeout: float = 15.0, what: str = "condition") -> T:
    return sandbox_proc.wait_for(check, timeout, what, interval=0.01)


def _png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _sample(size: tuple[int, int] = (256, 192), colour: tuple[int, int, int] = (30, 120, 200)) -> bytes:
    image = Image.new("RGB", size, colour)
    draw = ImageDraw.Draw(image)
    for i in range(0, size[0], 16):
        draw.line([(i, 0), (size[0] - i, size[1])], fill=(255 - i % 255, i % 255, 90), width=3)
    return _png(image)


# --------------------------------------------------------------------------------------------------
# a tiny HTTP peer: webhook receiver + input image host


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Peer:
    base: str
    deliveries: list[Delivery] = field(default_factory=list)
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    gates: dict[str, threading.Event] = field(default_factory=dict)
    fail_first: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hooks(self, request_id: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.headers.get("x-fal-webhook-request-id") == request_id]

    def clear(self) -> None:
        with self.lock:
            self.deliveries.clear()
            self.fail_first.clear()
        for gate in self.gates.values():
            gate.set()
        self.gates.clear()


def _make_handler(peer: Peer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            gate = peer.gates.get(name)
            if gate is not None:
                gate.wait(timeout=30)
            if name in peer.files:
                body, ctype = peer.files[name]
                self._send(200, body, ctype)
            else:
                self._send(404, b"not found")

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with peer.lock:
                peer.deliveries.append(Delivery(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                remaining = peer.fail_first.get(self.path, 0)
                if remaining:
                    peer.fail_first[self.path] = remaining - 1
            self._send(500 if remaining else 200, b"ok")

    return Handler


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    state = Peer(base=f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = _make_handler(state)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    state.clear()
    server.shutdown()
    server.server_close()


# --------------------------------------------------------------------------------------------------
# the sandbox process


@pytest.fixture(scope="module")
def sandbox_url() -> Iterator[str]:
    with sandbox_proc.sandbox_process("--seed", "7", "--render-workers", "4", what="sandbox health") as url:
        yield url


@pytest.fixture()
def client(sandbox_url: str, peer: Peer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox_url, headers=AUTH, timeout=20) as http:
        response = http.patch("/_sandbox/config", json=BASELINE)
        assert response.status_code == 200, response.text
        assert http.post("/_sandbox/reset").status_code == 200
        yield http
        peer.clear()
        # leave nothing running for the next test
        for entry in http.get("/_sandbox/requests").json()["requests"]:
            if entry["status"] != "COMPLETED":
                http.put(f"/fal/openai/gpt-image-2/requests/{entry['request_id']}/cancel")


def submit(http: httpx.Client, body: dict[str, Any], *, webhook: str | None = None,
           headers: dict[str, str] | None = None) -> dict[str, Any]:
    params = {"fal_webhook": webhook} if webhook else None
    response = http.post(f"/fal/{APP}", json=body, params=params, headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def status(http: httpx.Client, sub: dict[str, Any], logs: str = "0") -> httpx.Response:
    return http.get(sub["status_url"], params={"logs": logs})


def wait_completed(http: httpx.Client, sub: dict[str, Any]) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        response = status(http, sub)
        return dict(response.json()) if response.status_code == 200 else None

    return wait_for(done, what=f"completion of {sub['request_id']}")


def stats(http: httpx.Client) -> dict[str, Any]:
    return dict(http.get("/_sandbox/stats").json()["providers"]["fal"])


def jwks_verify(http: httpx.Client, delivery: Delivery) -> bool:
    """Independent check of fal's webhook signature against the served JWKS."""
    keys = http.get("/fal/.well-known/jwks.json").json()["keys"]
    h = delivery.headers
    message = "\n".join([
        h["x-fal-webhook-request-id"], h["x-fal-webhook-user-id"], h["x-fal-webhook-timestamp"],
        hashlib.sha256(delivery.body).hexdigest(),
    ]).encode()
    signature = bytes.fromhex(h["x-fal-webhook-signature"])
    for key in keys:
        assert key["kty"] == "OKP" and key["crv"] == "Ed25519"
        raw = base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4))
        try:
            VerifyKey(raw).verify(message, signature)
            return True
        except BadSignatureError:
            continue
    return False


# --------------------------------------------------------------------------------------------------
# protocol


def test_submit_status_result_roundtrip(client: httpx.Client, peer: Peer) -> None:
    peer.files["held.png"] = (_sample((300, 200), (200, 40, 40)), "image/png")
    peer.gates["held.png"] = gate = threading.Event()
    sub = submit(client, {
        "prompt": 'turn it into a "POSTER"', "image_urls": [_data_uri(_sample()), f"{peer.base}/held.png"],
        "image_size": "landscape_4_3", "num_images": 2, "output_format": "jpeg", "quality": "low",
        "unknown_field": 1,
    })
    rid = sub["request_id"]
    assert sub["status"] == "IN_QUEUE" and isinstance(sub["queue_position"], int)
    base = f"{client.base_url}".rstrip("/") + f"/fal/openai/gpt-image-2/requests/{rid}"
    assert sub["response_url"] == base
    assert sub["status_url"] == base + "/status"
    assert sub["cancel_url"] == base + "/cancel"

    # the second input download is held open: the job must be IN_PROGRESS (202)
    running = wait_for(lambda: (r := status(client, sub, "1")).json()["status"] == "IN_PROGRESS" and r,
                       what="IN_PROGRESS")
    assert running.status_code == 202
    assert isinstance(running.json()["logs"], list)
    assert status(client, sub, "false").json()["logs"] is None
    early = client.get(sub["response_url"])
    assert early.status_code == 400
    gate.set()

    done = wait_completed(client, sub)
    assert done["status"] == "COMPLETED" and "error" not in done
    assert done["metrics"]["inference_time"] > 0
    assert status(client, sub, "true").json()["logs"][-1]["message"] == "Request completed."

    result = client.get(sub["response_url"])
    assert result.status_code == 200
    images = result.json()["images"]
    assert len(images) == 2
    blobs = []
    for image in images:
        assert (image["width"], image["height"]) == (1024, 768)
        assert image["content_type"] == "image/jpeg"
        download = httpx.get(image["url"])
        assert download.status_code == 200
        assert download.headers["content-type"] == "image/jpeg"
        assert int(download.headers["content-length"]) == image["file_size"] == len(download.content)
        decoded = Image.open(io.BytesIO(download.content))
        assert decoded.format == "JPEG" and decoded.size == (1024, 768)
        blobs.append(download.content)
    assert blobs[0] != blobs[1]

    entry = client.get(f"/_sandbox/requests/{rid}").json()
    assert entry["model"] == APP and entry["outcome"] == "ok"
    assert entry["input"]["unknown_field"] == 1
    assert entry["input"]["image_urls"][0].endswith("chars elided>")
    assert entry["received_at"] <= entry["started_at"] <= entry["completed_at"]


def test_masked_edit_over_http_keeps_unmasked_pixels(client: httpx.Client) -> None:
    source = _sample((1024, 1024))  # within GPT Image 2's limits, so "auto" keeps the size
    mask = Image.new("RGBA", (1024, 1024), (0, 0, 0, 255))
    ImageDraw.Draw(mask).rectangle((256, 256, 767, 767), fill=(0, 0, 0, 0))
    sub = submit(client, {"prompt": "make it gold", "image_urls": [_data_uri(source)],
                          "mask_url": _data_uri(_png(mask)), "sync_mode": True})
    wait_completed(client, sub)
    image = client.get(sub["response_url"]).json()["images"][0]
    assert image["url"].startswith("data:image/png;base64,")
    out = Image.open(io.BytesIO(base64.b64decode(image["url"].split(",", 1)[1]))).convert("RGB")
    before = Image.open(io.BytesIO(source)).convert("RGB")
    assert out.size == before.size == (image["width"], image["height"])
    changed = ImageChops.difference(before, out).convert("L").point(lambda v: 255 if v else 0)
    bbox = changed.getbbox()
    assert bbox is not None and bbox[0] >= 256 and bbox[1] >= 256 and bbox[2] <= 768 and bbox[3] <= 768
    inside = changed.crop((256, 256, 768, 768)).histogram()[255]
    assert inside > 512 * 512 // 2


INVALID = [
    ({"image_urls": ["data:,x"]}, ["body", "prompt"]),
    ({"prompt": "  ", "image_urls": ["data:,x"]}, ["body", "prompt"]),
    ({"prompt": "x"}, ["body", "image_urls"]),
    ({"prompt": "x", "image_urls": []}, ["body", "image_urls"]),
    ({"prompt": "x", "image_urls": ["data:,x"] * 17}, ["body", "image_urls"]),
    ({"prompt": "x", "image_urls": [3]}, ["body", "image_urls", 0]),
    ({"prompt": "x", "image_urls": ["data:,x"], "image_size": "huge"}, ["body", "image_size"]),
    ({"prompt": "x", "image_urls": ["data:,x"], "image_size": {"width": 1000, "height": 1000}}, ["body", "image_size"]),
    ({"prompt": "x", "image_urls": ["data:,x"], "image_size": {"width": 4096, "height": 2048}}, ["body", "image_size"]),
    ({"prompt": "x", "image_urls": ["data:,x"], "image_size": {"width": 2880, "height": 3840}}, ["body", "image_size"]),
    ({"prompt": "x", "image_urls": ["data:,x"], "image_size": {"width": 2304, "height": 576}}, ["body", "image_size"]),
    ({"prompt": "x", "image_urls": ["data:,x"], "image_size": {"width": 512, "height": 512}}, ["body", "image_size"]),
    ({"prompt": "x", "image_urls": ["data:,x"], "num_images": 0}, ["body", "num_images"]),
    ({"prompt": "x", "image_urls": ["data:,x"], "num_images": 5}, ["body", "num_images"]),
    ({"prompt": "x", "image_urls": ["data:,x"], "output_format": "gif"}, ["body", "output_format"]),
    ({"prompt": "x", "image_urls": ["data:,x"], "quality": "ultra"}, ["body", "quality"]),
    ([1, 2], ["body"]),
    # types exactly as fal's published schema states them: no string/bool/float coercion
    ({"prompt": "x", "image_urls": ["data:,x"], "num_images": "2"}, ["body", "num_images"]),
    ({"prompt": "x", "image_urls": ["data:,x"], "num_images": True}, ["body", "num_images"]),
    ({"prompt": "x", "image_urls": ["data:,x"], "num_images": 2.5}, ["body", "num_images"]),
    ({"prompt": "x", "image_urls": ["data:,x"], "sync_mode": "true"}, ["body", "sync_mode"]),
    ({"prompt": "x", "image_urls": ["data:,x"], "sync_mode": 1}, ["body", "sync_mode"]),
    ({"prompt": 7, "image_urls": ["data:,x"]}, ["body", "prompt"]),
    ({"prompt": "x", "image_urls": "data:,x"}, ["body", "image_urls"]),
    ({"prompt": "x", "image_urls": ["data:,x"], "image_size": {"width": "1024", "height": 1024}},
     ["body", "image_size"]),
    # explicit null where the schema has no null (required fields, fields with a non-null default)
    ({"prompt": None, "image_urls": ["data:,x"]}, ["body", "prompt"]),
    ({"prompt": "x", "image_urls": None}, ["body", "image_urls"]),
    ({"prompt": "x", "image_urls": [None]}, ["body", "image_urls", 0]),
    ({"prompt": "x", "image_urls": ["data:,x"], "image_size": None}, ["body", "image_size"]),
    ({"prompt": "x", "image_urls": ["data:,x"], "quality": None}, ["body", "quality"]),
    ({"prompt": "x", "image_urls": ["data:,x"], "num_images": None}, ["body", "num_images"]),
    ({"prompt": "x", "image_urls": ["data:,x"], "output_format": None}, ["body", "output_format"]),
    ({"prompt": "x", "image_urls": ["data:,x"], "sync_mode": None}, ["body", "sync_mode"]),
]


@pytest.mark.parametrize(("body", "loc"), INVALID)
def test_validation_errors_use_fals_422_shape(client: httpx.Client, body: Any, loc: list[Any]) -> None:
    response = client.post(f"/fal/{APP}", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail
    assert all(set(d) == {"loc", "msg", "type"} for d in detail)
    assert loc in [d["loc"] for d in detail]
    assert stats(client)["accepted"] == 0
    assert stats(client)["rejected"] == {"validation": 1}


def test_null_is_accepted_where_the_schema_allows_it(client: httpx.Client) -> None:
    # mask_url is optional without a default (null = no mask); 2.0 is a JSON Schema integer
    sub = submit(client, {"prompt": "x", "image_urls": [_data_uri(_sample((1024, 1024)))], "mask_url": None,
                          "num_images": 2.0, "sync_mode": False})
    done = wait_completed(client, sub)
    assert "error" not in done
    images = client.get(sub["response_url"]).json()["images"]
    assert len(images) == 2 and all((i["width"], i["height"]) == (1024, 1024) for i in images)


def test_omitted_fields_take_fals_defaults(client: httpx.Client) -> None:
    source = _sample((1536, 1024))
    sub = submit(client, {"prompt": "defaults", "image_urls": [_data_uri(source)]})
    wait_completed(client, sub)
    logs = [entry["message"] for entry in status(client, sub, "1").json()["logs"]]
    assert ("Editing: 1 image(s), image_size=auto -> 1536x1024, quality=high, output_format=png." in logs), logs
    images = client.get(sub["response_url"]).json()["images"]
    assert len(images) == 1  # num_images 1
    image = images[0]
    assert image["content_type"] == "image/png" and image["url"].startswith("http")  # png, sync_mode false
    content = httpx.get(image["url"]).content
    decoded = Image.open(io.BytesIO(content))
    assert decoded.format == "PNG" and decoded.size == (1536, 1024) == (image["width"], image["height"])


def _within_gpt_image_2_limits(width: int, height: int) -> bool:
    return (width % 16 == 0 and height % 16 == 0 and max(width, height) <= 3840
            and max(width, height) / min(width, height) <= 3 and 655_360 <= width * height <= 8_294_400)


# (image_size, first input's size) -> what is rendered; the decision is in providers/fal/emulator_schema.py
SIZES = [
    ("square_hd", (256, 192), (1024, 1024)),
    ("square", (256, 192), (816, 816)),  # 512x512 is below 655,360 px: scaled up, 1:1 kept
    ("portrait_4_3", (256, 192), (768, 1024)),
    ("portrait_16_9", (256, 192), (608, 1088)),  # 576x1024 is below the minimum: nearest valid ~9:16
    ("landscape_4_3", (256, 192), (1024, 768)),
    ("landscape_16_9", (256, 192), (1088, 608)),
    ("auto", (1536, 1024), (1536, 1024)),  # the first input's size when it is valid
    ("auto", (512, 512), (816, 816)),  # too few pixels: scaled up
    ("auto", (300, 200), (992, 672)),  # too few pixels and not on the 16-grid: nearest valid ~3:2
    ("auto", (1000, 1000), (992, 992)),  # valid pixel count, edges rounded to multiples of 16
    ("auto", (4000, 3000), (3312, 2480)),  # too many pixels: scaled down
    ("auto", (1600, 400), (1408, 480)),  # 4:1 clamped to (nearly) 3:1 and scaled up
]


def test_presets_and_auto_render_sizes_within_gpt_image_2_limits(client: httpx.Client) -> None:
    subs = []
    for preset, first, expected in SIZES:
        body = {"prompt": f"size {preset} {first}", "image_urls": [_data_uri(_sample(first))], "image_size": preset,
                "quality": "low", "output_format": "jpeg"}
        subs.append((submit(client, body), preset, first, expected))
    for sub, preset, first, expected in subs:
        wait_completed(client, sub)
        image = client.get(sub["response_url"]).json()["images"][0]
        content = httpx.get(image["url"]).content
        decoded = Image.open(io.BytesIO(content))
        got = (image["width"], image["height"])
        assert got == expected and decoded.size == got, (preset, first, got, decoded.size)
        assert len(content) == image["file_size"]
        assert _within_gpt_image_2_limits(*got)


def test_cached_render_sizes_match_the_bytes(client: httpx.Client) -> None:
    client.patch("/_sandbox/config", json={"render": "cached"})
    for preset, first, expected in [("square", (64, 64), (816, 816)), ("auto", (512, 512), (816, 816))]:
        sub = submit(client, {"prompt": "x", "image_urls": [_data_uri(_sample(first))], "image_size": preset})
        wait_completed(client, sub)
        image = client.get(sub["response_url"]).json()["images"][0]
        decoded = Image.open(io.BytesIO(httpx.get(image["url"]).content))
        assert decoded.size == (image["width"], image["height"]) == expected


def test_size_fitting_always_lands_within_the_limits() -> None:
    from editq.providers.fal.emulator_schema import output_size

    for width in (1, 15, 16, 100, 333, 512, 577, 1000, 1024, 2047, 3840, 3841, 5000, 9999):
        for height in (1, 17, 64, 250, 512, 768, 1080, 2000, 3840, 7000):
            fitted = output_size((width, height))
            assert _within_gpt_image_2_limits(*fitted), ((width, height), fitted)
            if _within_gpt_image_2_limits(width, height):
                assert fitted == (width, height)
            ratio = min(max(width / height, 1 / 3), 3)
            assert abs(fitted[0] / fitted[1] / ratio - 1) < 0.05, ((width, height), fitted)


def test_valid_custom_size_is_accepted(client: httpx.Client) -> None:
    sub = submit(client, {"prompt": "x", "image_urls": [_data_uri(_sample())],
                          "image_size": {"width": 1536, "height": 1024}, "output_format": "webp"})
    wait_completed(client, sub)
    image = client.get(sub["response_url"]).json()["images"][0]
    assert (image["width"], image["height"], image["content_type"]) == (1536, 1024, "image/webp")
    assert Image.open(io.BytesIO(httpx.get(image["url"]).content)).size == (1536, 1024)


def test_auth_is_required(client: httpx.Client, sandbox_url: str) -> None:
    body = {"prompt": "x", "image_urls": [_data_uri(_sample())]}
    for headers in ({}, {"Authorization": "Bearer abc"}, {"Authorization": "Key"}):
        assert httpx.post(f"{sandbox_url}/fal/{APP}", json=body, headers=headers).status_code == 401
    sub = submit(client, body)
    assert httpx.get(sub["status_url"]).status_code == 401
    assert httpx.get(sub["response_url"]).status_code == 401
    assert httpx.get(f"{sandbox_url}/fal/.well-known/jwks.json").status_code == 200


def test_unknown_ids_and_models_are_404(client: httpx.Client) -> None:
    missing = "/fal/openai/gpt-image-2/requests/00000000-0000-0000-0000-000000000000"
    assert client.get(missing + "/status").status_code == 404
    assert client.get(missing).status_code == 404
    cancel = client.put(missing + "/cancel")
    assert (cancel.status_code, cancel.json()) == (404, {"status": "NOT_FOUND"})
    assert client.post("/fal/openai/not-a-model", json={}).status_code == 404
    sub = submit(client, {"prompt": "x", "image_urls": [_data_uri(_sample())]})
    other_app = sub["status_url"].replace("gpt-image-2", "gpt-image-1")
    assert client.get(other_app).status_code == 404


@pytest.mark.parametrize(("path", "error_type"), [("missing.png", "file_download_error"),
                                                  ("notes.txt", "image_load_error")])
def test_unusable_image_fails_the_job_on_completion(client: httpx.Client, peer: Peer, path: str,
                                                    error_type: str) -> None:
    peer.files["notes.txt"] = (b"hello, not an image", "text/plain")
    sub = submit(client, {"prompt": "x", "image_urls": [_data_uri(_sample()), f"{peer.base}/{path}"]},
                 webhook=f"{peer.base}/hook")
    done = wait_completed(client, sub)
    assert done["error_type"] == error_type and done["error"]
    result = client.get(sub["response_url"])
    assert result.status_code == 422
    assert result.json()["detail"][0]["loc"] == ["body", "image_urls", 1]
    assert result.json()["detail"][0]["type"] == error_type
    hook = wait_for(lambda: peer.hooks(sub["request_id"]), what="error webhook")[0]
    payload = hook.json()
    assert payload["status"] == "ERROR" and payload["error"] == "Invalid status code: 422"
    assert payload["payload"] == result.json()
    assert jwks_verify(client, hook)


def test_unreachable_host_fails_the_job(client: httpx.Client) -> None:
    sub = submit(client, {"prompt": "x", "image_urls": [f"http://127.0.0.1:{sandbox_proc.free_port()}/gone.png"]})
    done = wait_completed(client, sub)
    assert done["error_type"] == "file_download_error"
    assert client.get(sub["response_url"]).status_code == 422
    assert stats(client)["failed"] == 1


def test_cancel_in_progress_and_already_completed(client: httpx.Client) -> None:
    client.patch("/_sandbox/config", json={"latency_s": 60})
    sub = submit(client, {"prompt": "x", "image_urls": [_data_uri(_sample())]})
    wait_for(lambda: status(client, sub).json()["status"] == "IN_PROGRESS", what="IN_PROGRESS")
    cancel = client.put(sub["cancel_url"])
    assert (cancel.status_code, cancel.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
    done = wait_completed(client, sub)
    assert done["error_type"] == "request_cancelled"
    assert client.get(sub["response_url"]).status_code == 400
    again = client.put(sub["cancel_url"])
    assert (again.status_code, again.json()) == (400, {"status": "ALREADY_COMPLETED"})
    assert stats(client)["cancelled"] == 1


def test_cancel_in_every_state_and_what_follows(client: httpx.Client) -> None:
    client.patch("/_sandbox/config", json={"concurrency": 1, "latency_s": 60})
    body = {"prompt": "x", "image_urls": [_data_uri(_sample())]}
    running = submit(client, body)
    wait_for(lambda: status(client, running).json()["status"] == "IN_PROGRESS", what="IN_PROGRESS")
    queued = submit(client, body)
    assert status(client, queued).json()["status"] == "IN_QUEUE"

    # queued: 202 CANCELLATION_REQUESTED, removed from the queue at once
    cancel = client.put(queued["cancel_url"])
    assert (cancel.status_code, cancel.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
    after = status(client, queued, "1")
    assert after.status_code == 200
    assert after.json()["status"] == "COMPLETED" and after.json()["error_type"] == "request_cancelled"
    assert "queue_position" not in after.json() and after.json()["logs"][-1]["level"] == "ERROR"
    result = client.get(queued["response_url"])
    assert result.status_code == 400 and result.json()["error_type"] == "request_cancelled"
    assert result.headers["x-fal-error-type"] == "request_cancelled"
    entry = client.get(f"/_sandbox/requests/{queued['request_id']}").json()
    assert entry["started_at"] is None and entry["outcome"] == "cancelled"
    with client.stream("GET", queued["status_url"] + "/stream") as stream:
        events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: ")]
    assert [e["status"] for e in events] == ["COMPLETED"] and events[0]["error_type"] == "request_cancelled"

    # running: 202 CANCELLATION_REQUESTED, then COMPLETED with the cancellation error
    cancel = client.put(running["cancel_url"])
    assert (cancel.status_code, cancel.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
    done = wait_completed(client, running)
    assert done["error_type"] == "request_cancelled" and "inference_time" in done["metrics"]
    assert client.get(running["response_url"]).status_code == 400

    # completed (cancelled or not): 400 ALREADY_COMPLETED, and the result is unchanged
    for sub in (queued, running):
        again = client.put(sub["cancel_url"])
        assert (again.status_code, again.json()) == (400, {"status": "ALREADY_COMPLETED"})
    client.patch("/_sandbox/config", json={"latency_s": 0.05})
    finished = submit(client, body)
    wait_completed(client, finished)
    before = client.get(finished["response_url"]).json()
    late = client.put(finished["cancel_url"])
    assert (late.status_code, late.json()) == (400, {"status": "ALREADY_COMPLETED"})
    assert client.get(finished["response_url"]).json() == before
    assert "error" not in status(client, finished).json()

    # unknown id: 404 NOT_FOUND, and status/result stay 404
    missing = running["cancel_url"].replace(running["request_id"], "00000000-0000-0000-0000-000000000000")
    gone = client.put(missing)
    assert (gone.status_code, gone.json()) == (404, {"status": "NOT_FOUND"})
    assert client.get(missing.removesuffix("/cancel") + "/status").status_code == 404
    assert client.get(missing.removesuffix("/cancel")).status_code == 404
    assert stats(client)["cancelled"] == 2


def test_concurrency_cap_queues_the_rest(client: httpx.Client) -> None:
    client.patch("/_sandbox/config", json={"concurrency": 2, "latency_s": 60})
    subs = [submit(client, {"prompt": f"job {i}", "image_urls": [_data_uri(_sample())]}) for i in range(5)]
    wait_for(lambda: (s := stats(client))["in_progress"] == 2 and s["in_queue"] == 3, what="2 running, 3 queued")
    states = [status(client, sub) for sub in subs]
    assert [r.status_code for r in states] == [202] * 5
    assert [r.json()["status"] for r in states] == ["IN_PROGRESS"] * 2 + ["IN_QUEUE"] * 3
    assert [r.json()["queue_position"] for r in states[2:]] == [0, 1, 2]
    assert stats(client)["max_in_progress"] == 2
    assert stats(client)["max_in_flight"] == 5
    # cancelling a running job lets the next queued one start
    client.put(subs[0]["cancel_url"])
    wait_for(lambda: status(client, subs[2]).json()["status"] == "IN_PROGRESS", what="queued job to start")
    assert status(client, subs[3]).json()["queue_position"] == 0
    assert stats(client)["max_in_progress"] == 2
    # raising the cap at runtime starts the rest
    client.patch("/_sandbox/config", json={"concurrency": 10})
    wait_for(lambda: stats(client)["in_progress"] == 4, what="all remaining running")
    for sub in subs:
        client.put(sub["cancel_url"])
    wait_for(lambda: stats(client)["completed"] == 5, what="all cancelled")


def test_concurrency_cap_holds_through_completion(client: httpx.Client) -> None:
    client.patch("/_sandbox/config", json={"concurrency": 2, "latency_s": 0.1})
    subs = [submit(client, {"prompt": f"job {i}", "image_urls": [_data_uri(_sample())]}) for i in range(5)]
    for sub in subs:
        wait_completed(client, sub)
    s = stats(client)
    assert (s["accepted"], s["succeeded"], s["in_flight"], s["in_progress"]) == (5, 5, 0, 0)
    assert 1 <= s["max_in_progress"] <= 2
    entries = client.get("/_sandbox/requests", params={"provider": "fal"}).json()["requests"]
    events = sorted([(e["started_at"], 1) for e in entries] + [(e["completed_at"], -1) for e in entries])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak <= 2


def test_queue_priority_and_start_timeout(client: httpx.Client) -> None:
    client.patch("/_sandbox/config", json={"concurrency": 1, "latency_s": 60})
    body = {"prompt": "x", "image_urls": [_data_uri(_sample())]}
    blocker = submit(client, body)
    wait_for(lambda: stats(client)["in_progress"] == 1, what="blocker running")
    normal_a = submit(client, body, headers={"X-Fal-Queue-Priority": "normal"})
    low = submit(client, body, headers={"X-Fal-Queue-Priority": "low"})
    normal_b = submit(client, body)
    positions = [status(client, s).json()["queue_position"] for s in (normal_a, normal_b, low)]
    assert positions == [0, 1, 2]
    timed = submit(client, body, headers={"X-Fal-Request-Timeout": "0.2", "X-Fal-No-Retry": "1"})
    done = wait_completed(client, timed)
    assert done["error_type"] == "request_timeout"
    result = client.get(timed["response_url"])
    assert result.status_code == 504 and result.headers["x-fal-request-timeout-type"] == "user"
    entry = client.get(f"/_sandbox/requests/{timed['request_id']}").json()
    assert entry["started_at"] is None and entry["headers"]["x-fal-no-retry"] == "1"
    assert client.post(f"/fal/{APP}", json=body, headers={"X-Fal-Request-Timeout": "soon"}).status_code == 400
    for sub in (blocker, normal_a, low, normal_b):
        client.put(sub["cancel_url"])


# --------------------------------------------------------------------------------------------------
# webhooks


def test_webhook_is_signed_and_verifies_against_jwks(client: httpx.Client, peer: Peer) -> None:
    client.patch("/_sandbox/config", json={"fal_user_id": "user-42"})
    sub = submit(client, {"prompt": "x", "image_urls": [_data_uri(_sample())]}, webhook=f"{peer.base}/hook")
    assert sub["gateway_request_id"] == sub["request_id"]
    hook = wait_for(lambda: peer.hooks(sub["request_id"]), what="webhook")[0]
    assert hook.path == "/hook"
    assert hook.headers["content-type"] == "application/json"
    assert hook.headers["x-fal-webhook-user-id"] == "user-42"
    assert abs(int(hook.headers["x-fal-webhook-timestamp"]) - time.time()) < 300
    assert len(bytes.fromhex(hook.headers["x-fal-webhook-signature"])) == 64
    assert jwks_verify(client, hook)
    tampered = Delivery(hook.path, hook.headers, hook.body.replace(b'"OK"', b'"ERROR"'))
    assert not jwks_verify(client, tampered)
    payload = hook.json()
    assert payload["request_id"] == payload["gateway_request_id"] == sub["request_id"]
    assert payload["status"] == "OK" and payload["error"] is None
    assert payload["payload"] == client.get(sub["response_url"]).json()
    wait_for(lambda: stats(client)["webhooks"]["pending"] == 0, what="delivery bookkeeping")
    assert stats(client)["webhooks"]["succeeded"] == 1


def test_lost_webhook_is_never_sent(client: httpx.Client, peer: Peer) -> None:
    client.patch("/_sandbox/config", json={"webhook_lost_rate": 1.0})
    sub = submit(client, {"prompt": "x", "image_urls": [_data_uri(_sample())]}, webhook=f"{peer.base}/hook")
    wait_completed(client, sub)
    hooks = stats(client)["webhooks"]
    assert (hooks["scheduled"], hooks["lost"], hooks["attempted"], hooks["pending"]) == (1, 1, 0, 0)
    assert peer.hooks(sub["request_id"]) == []
    assert client.get(f"/_sandbox/requests/{sub['request_id']}").json()["webhook"]["lost"] is True


def test_duplicate_webhook_is_delivered_twice(client: httpx.Client, peer: Peer) -> None:
    client.patch("/_sandbox/config", json={"webhook_duplicate_rate": 1.0})
    sub = submit(client, {"prompt": "x", "image_urls": [_data_uri(_sample())]}, webhook=f"{peer.base}/hook")

    def two() -> list[Delivery] | None:
        delivered = peer.hooks(sub["request_id"])
        return delivered if len(delivered) >= 2 else None

    hooks = wait_for(two, what="two deliveries")
    assert [h.json() for h in hooks[:2]] == [hooks[0].json()] * 2
    assert all(jwks_verify(client, h) for h in hooks)
    wait_for(lambda: stats(client)["webhooks"]["pending"] == 0, what="delivery bookkeeping")
    counts = stats(client)["webhooks"]
    assert (counts["duplicated"], counts["succeeded"], counts["attempted"]) == (1, 2, 2)
    assert len(peer.hooks(sub["request_id"])) == 2


def test_delayed_webhook_arrives_after_completion(client: httpx.Client, peer: Peer) -> None:
    client.patch("/_sandbox/config", json={"webhook_delay_s": 1.5})
    sub = submit(client, {"prompt": "x", "image_urls": [_data_uri(_sample())]}, webhook=f"{peer.base}/hook")
    wait_completed(client, sub)
    held = stats(client)["webhooks"]
    assert (held["scheduled"], held["pending"], held["attempted"]) == (1, 1, 0)
    hook = wait_for(lambda: peer.hooks(sub["request_id"]), what="late webhook")[0]
    assert jwks_verify(client, hook)
    wait_for(lambda: stats(client)["webhooks"]["pending"] == 0, what="delivery bookkeeping")


def test_failed_deliveries_are_retried(client: httpx.Client, peer: Peer) -> None:
    peer.fail_first["/flaky"] = 2
    sub = submit(client, {"prompt": "x", "image_urls": [_data_uri(_sample())]}, webhook=f"{peer.base}/flaky")
    wait_for(lambda: stats(client)["webhooks"]["succeeded"] == 1, what="delivery after retries")
    counts = stats(client)["webhooks"]
    assert (counts["attempted"], counts["failed"]) == (3, 2)
    assert len(peer.hooks(sub["request_id"])) == 3
    entry = client.get(f"/_sandbox/requests/{sub['request_id']}").json()["webhook"]
    assert (entry["attempts"], entry["delivered"], entry["last_status"]) == (3, 1, 200)


def test_bad_signature_fault_does_not_verify(client: httpx.Client, peer: Peer) -> None:
    client.patch("/_sandbox/config", json={"webhook_bad_signature_rate": 1.0})
    sub = submit(client, {"prompt": "x", "image_urls": [_data_uri(_sample())]}, webhook=f"{peer.base}/hook")
    hook = wait_for(lambda: peer.hooks(sub["request_id"]), what="webhook")[0]
    assert not jwks_verify(client, hook)


# --------------------------------------------------------------------------------------------------
# faults, log, control API


def test_submit_faults_are_not_accepted(client: httpx.Client) -> None:
    body = {"prompt": "x", "image_urls": [_data_uri(_sample())]}
    client.patch("/_sandbox/config", json={"submit_429_rate": 1.0, "retry_after_s": 1.5})
    limited = client.post(f"/fal/{APP}", json=body)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "2"
    client.patch("/_sandbox/config", json={"submit_429_rate": 0.0, "submit_5xx_rate": 1.0})
    unavailable = client.post(f"/fal/{APP}", json=body)
    assert unavailable.status_code == 503 and "nginx" in unavailable.text
    assert "x-fal-request-id" not in unavailable.headers
    client.patch("/_sandbox/config", json={"submit_5xx_rate": 0.0, "submit_timeout_rate": 1.0})
    assert client.post(f"/fal/{APP}", json=body).status_code == 504
    s = stats(client)
    assert s["accepted"] == 0 and s["rejected"] == {"429": 1, "5xx": 1, "timeout": 1}
    assert client.get("/_sandbox/requests").json()["count"] == 0


def test_fault_rates_are_reproducible_with_a_seed(client: httpx.Client) -> None:
    body = {"prompt": "x", "image_urls": [_data_uri(_sample())]}

    def pattern() -> list[int]:
        client.patch("/_sandbox/config", json={"seed": 11, "submit_429_rate": 0.5})
        codes = [client.post(f"/fal/{APP}", json=body).status_code for _ in range(16)]
        client.patch("/_sandbox/config", json={"seed": 7})
        return codes

    first, second = pattern(), pattern()
    assert first == second
    assert set(first) == {200, 429}


def test_job_failure_fault_completes_with_error(client: httpx.Client) -> None:
    client.patch("/_sandbox/config", json={"job_failure_rate": 1.0})
    sub = submit(client, {"prompt": "x", "image_urls": [_data_uri(_sample())]})
    done = wait_completed(client, sub)
    assert done["error_type"] == "downstream_service_error"
    result = client.get(sub["response_url"])
    assert result.status_code == 422 and result.json()["detail"][0]["type"] == "downstream_service_error"
    assert stats(client)["failed"] == 1


def test_cached_render_serves_requested_size_and_format(client: httpx.Client) -> None:
    client.patch("/_sandbox/config", json={"render": "cached"})
    subs = [submit(client, {"prompt": f"p{i}", "image_urls": [_data_uri(_sample())], "image_size": "portrait_16_9",
                            "output_format": "webp"}) for i in range(2)]
    urls = []
    for sub in subs:
        wait_completed(client, sub)
        image = client.get(sub["response_url"]).json()["images"][0]
        urls.append(image["url"])
        content = httpx.get(image["url"]).content
        decoded = Image.open(io.BytesIO(content))
        assert decoded.format == "WEBP" and decoded.size == (608, 1088) and len(content) == image["file_size"]
    assert urls[0] != urls[1]
    assert httpx.get(urls[0]).content == httpx.get(urls[1]).content


def test_request_log_and_reset(client: httpx.Client, peer: Peer) -> None:
    for i in range(3):
        submit(client, {"prompt": f"p{i}", "image_urls": [_data_uri(_sample())]},
               webhook=f"{peer.base}/hook" if i == 0 else None)
    log = client.get("/_sandbox/requests", params={"provider": "fal"}).json()
    assert log["count"] == 3
    first = log["requests"][0]
    for key in ("provider", "request_id", "received_at", "started_at", "completed_at", "model", "input",
                "webhook_url", "status"):
        assert key in first
    assert first["webhook_url"] == f"{peer.base}/hook"
    assert client.get("/_sandbox/requests", params={"provider": "replicate"}).json()["count"] == 0
    latest = client.get("/_sandbox/requests", params={"limit": 1}).json()
    assert latest["count"] == 3 and [e["input"]["prompt"] for e in latest["requests"]] == ["p2"]
    assert stats(client)["accepted"] == 3
    assert client.post("/_sandbox/reset").json() == {"status": "ok"}
    assert client.get("/_sandbox/requests").json()["count"] == 0
    assert stats(client)["accepted"] == 0


def test_control_config_patch(client: httpx.Client) -> None:
    config = client.get("/_sandbox/config").json()
    assert config["latency_s"] == 0.05 and config["seed"] == 7
    assert client.patch("/_sandbox/config", json={"job_failure_rate": 2}).status_code == 422
    assert client.patch("/_sandbox/config", json={"port": 1}).status_code == 422
    assert client.patch("/_sandbox/config", json={"no_such_field": 1}).status_code == 422
    updated = client.patch("/_sandbox/config", json={"jitter_s": 0.25})
    assert updated.status_code == 200 and updated.json()["jitter_s"] == 0.25
    health = client.get("/_sandbox/health").json()
    assert health["status"] == "ok" and "fal" in [p["name"] for p in health["providers"]]


def _stream(client: httpx.Client, sub: dict[str, Any], logs: str) -> list[dict[str, Any]]:
    events = []
    with client.stream("GET", sub["status_url"] + "/stream", params={"logs": logs}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


def test_status_stream_ends_with_completed(client: httpx.Client) -> None:
    sub = submit(client, {"prompt": "x", "image_urls": [_data_uri(_sample())]})
    events = _stream(client, sub, "0")
    assert events[-1]["status"] == "COMPLETED"
    assert all(e["logs"] is None for e in events)


def test_status_stream_sends_each_log_line_once(client: httpx.Client, peer: Peer) -> None:
    peer.files["slow.png"] = (_sample((320, 240)), "image/png")
    peer.gates["slow.png"] = gate = threading.Event()
    sub = submit(client, {"prompt": "x", "image_urls": [_data_uri(_sample()), f"{peer.base}/slow.png"]})
    wait_for(lambda: status(client, sub).json()["status"] == "IN_PROGRESS", what="IN_PROGRESS")
    threading.Timer(0.5, gate.set).start()  # the stream sees the held download, then the rest
    events = _stream(client, sub, "1")
    assert len(events) >= 2 and events[-1]["status"] == "COMPLETED"
    assert all(isinstance(e["logs"], list) for e in events)
    lines = [json.dumps(entry, sort_keys=True) for e in events for entry in e["logs"]]
    assert len(lines) == len(set(lines)), "a log line was repeated across events"
    # together the events carry exactly the request's log, in order; a poll still returns all of it
    polled = status(client, sub, "1").json()["logs"]
    assert [json.loads(line) for line in lines] == polled
    assert polled[-1]["message"] == "Request completed."
    assert sum(1 for e in events if e["logs"]) >= 2


# --------------------------------------------------------------------------------------------------
# the official SDK


def test_fal_client_sdk_contract(client: httpx.Client, sandbox_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fal_client = pytest.importorskip("fal_client")
    import fal_client.client as fal_impl

    monkeypatch.setattr(fal_impl, "QUEUE_URL_FORMAT", f"{sandbox_url}/fal/")
    sdk = fal_client.SyncClient(key="sandbox-test")
    arguments = {"prompt": 'a "TEST" label', "image_urls": [_data_uri(_sample()), _data_uri(_sample(colour=(9, 9, 9)))],
                 "image_size": "square", "output_format": "png"}
    handle = sdk.submit(APP, arguments=arguments, priority="low", start_timeout=30)
    assert isinstance(handle.status(with_logs=True), fal_client.Queued | fal_client.InProgress | fal_client.Completed)
    final = wait_for(lambda: isinstance(s := sdk.status(APP, handle.request_id, with_logs=True),
                                        fal_client.Completed) and s, what="SDK Completed")
    assert final.error is None and final.metrics["inference_time"] > 0 and final.logs
    result = sdk.result(APP, handle.request_id)
    image = result["images"][0]
    assert (image["width"], image["height"]) == (816, 816)  # "square" fitted into GPT Image 2's limits
    assert Image.open(io.BytesIO(httpx.get(image["url"]).content)).size == (816, 816)
    assert handle.get() == result
    entry = client.get(f"/_sandbox/requests/{handle.request_id}").json()
    assert entry["headers"]["x-fal-queue-priority"] == "low"
    assert entry["headers"]["user-agent"].startswith("fal-client/")

    with pytest.raises(fal_client.FalClientHTTPError) as info:
        sdk.cancel(APP, handle.request_id)
    assert info.value.status_code == 400

    client.patch("/_sandbox/config", json={"job_failure_rate": 1.0})
    failing = sdk.submit(APP, arguments=arguments)
    done = wait_for(lambda: isinstance(s := failing.status(), fal_client.Completed) and s, what="SDK failure")
    assert done.error and done.error_type == "downstream_service_error"
    with pytest.raises(fal_client.FalClientHTTPError) as failure:
        failing.get()
    assert failure.value.status_code == 422


def test_fal_client_upload_then_edit(client: httpx.Client, sandbox_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fal_client = pytest.importorskip("fal_client")
    import fal_client.client as fal_impl

    monkeypatch.setattr(fal_impl, "QUEUE_URL_FORMAT", f"{sandbox_url}/fal/")
    monkeypatch.setattr(fal_impl, "REST_URL", f"{sandbox_url}/fal-rest")
    monkeypatch.setattr(fal_impl, "CDN_URL", sandbox_url)
    sdk = fal_client.SyncClient(key="sandbox-test")
    source = _sample((320, 240))
    url_v3 = sdk.upload(source, "image/png", file_name="in.png")
    url_gcs = sdk.upload(source, "image/png", file_name="in.png", repository="fal")
    for url in (url_v3, url_gcs):
        assert url.startswith(sandbox_url + "/files/")
        download = httpx.get(url)
        assert download.content == source and download.headers["content-type"] == "image/png"
    handle = sdk.submit(APP, arguments={"prompt": "mirror it", "image_urls": [url_v3, url_gcs]})
    result = handle.get()
    assert (result["images"][0]["width"], result["images"][0]["height"]) == (944, 704)  # 320x240 fitted
    assert Image.open(io.BytesIO(httpx.get(result["images"][0]["url"]).content)).size == (944, 704)


def test_fal_js_client_against_the_sandbox(client: httpx.Client, sandbox_url: str, tmp_path: Path) -> None:
    source = _sample((320, 240))
    (tmp_path / "in.png").write_bytes(source)
    out = js_clients.run_script("fal_client_run.mjs", sandbox_url, str(tmp_path / "in.png"),
                                env={"FAL_KEY": "sandbox-test"})
    assert out["input_sha256"] == hashlib.sha256(source).hexdigest()
    assert out["submitted"]["status"] == "IN_QUEUE"
    assert out["submitted"]["status_url"].startswith(sandbox_url + "/fal/openai/gpt-image-2/requests/")

    # the Blob input was uploaded through the sandbox's storage and fed to the edit
    entry = client.get(f"/_sandbox/requests/{out['submitted']['request_id']}").json()
    assert entry["input"]["image_urls"][0].startswith(sandbox_url + "/files/")
    assert entry["headers"]["x-fal-queue-priority"] == "low"
    assert "POST /fal-rest/storage/upload/initiate" in out["requests"]
    assert any(r.endswith("/status/stream") for r in out["requests"])

    # streaming: fal-js appends each event's logs to what it has; no line arrives twice
    assert out["stream"]["final"] == "COMPLETED"
    accumulated = out["stream"]["events"][-1]["logs"]
    assert accumulated[-1] == "Request completed." and len(accumulated) == len(set(accumulated))
    assert accumulated == [e["message"] for e in client.get(out["submitted"]["status_url"],
                                                            params={"logs": "1"}).json()["logs"]]

    # the outputs downloaded by node are the bytes the sandbox serves, with the sizes the result states
    images = out["stream_result"]["images"] + out["poll_result"]["images"]
    assert [(i["width"], i["height"]) for i in images] == [(816, 816), (944, 704), (944, 704)]
    assert [i["content_type"] for i in images] == ["image/png", "image/webp", "image/webp"]
    for image in images:
        assert image["status"] == 200 and image["bytes"] == image["file_size"]
        served = httpx.get(image["url"]).content
        assert hashlib.sha256(served).hexdigest() == image["sha256"]
        assert Image.open(io.BytesIO(served)).size == (image["width"], image["height"])
    assert out["stream_result"]["request_id"] == out["submitted"]["request_id"]

    # errors as the JS client surfaces them
    assert out["invalid"]["name"] == "ValidationError" and out["invalid"]["status"] == 422
    assert out["invalid"]["validation"][0]["loc"] == ["body", "num_images"]
    cancelled = out["cancel_completed"]
    assert (cancelled["status"], cancelled["body"]) == (400, {"status": "ALREADY_COMPLETED"})
