"""openai_batch protocol: pure translation, line mapping, and the protocol against the real sandbox over HTTP.

The engine's store (worker/batch_ingest.py) runs on in-memory stand-ins for Redis and S3 here (narrow fakes:
a dict-backed subset of redis-py and an object store); the OpenAI side is always the sandbox over real HTTP,
except for the error paths that need an answer the sandbox cannot give (httpx.MockTransport).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from editq.providers.openai.common import usage_and_cost
from editq.providers.openai_batch import SPEC, OpenAIBatchSettings
from editq.providers.openai_batch.protocol import (
    OpenAIBatchProtocol,
    custom_id_of,
    lines,
    missing_outcome,
    split_request_id,
)
from editq.providers.types import InputUrls, Outcome, ProviderRequest
from editq.sandbox.config import SandboxConfig
from editq.sandbox.testing import running_sandbox
from editq.schemas.job import EditJob, InputRecord
from editq.worker import redact
from editq.worker.batch_ingest import RedisBatchStore
from editq.worker.errors import ErrorKind, ProviderError
from editq.worker.keys import Keys
from editq.worker.provider_client import ProviderClient
from tests.factories import data_uri as _data_uri
from tests.factories import make_job, record

KEY = "sk-test-batch-0123456789abcdef"


# ---- narrow in-memory stand-ins for Redis and S3 ----------------------------------------------------------
class FakeRedis:
    def __init__(self) -> None:
        self.kv: dict[str, str] = {}
        self.deadline: dict[str, float] = {}
        self.h: dict[str, dict[str, str]] = {}
        self.sets: dict[str, set[str]] = {}
        self.z: dict[str, dict[str, float]] = {}

    def get(self, k: str) -> str | None:
        if k in self.deadline and time.monotonic() > self.deadline[k]:
            self.delete(k)
        return self.kv.get(k)

    def set(self, k: str, v: str, nx: bool = False, px: int | None = None, ex: int | None = None) -> bool:
        if nx and self.get(k) is not None:
            return False
        self.kv[k] = str(v)
        self.deadline.pop(k, None)
        if px is not None or ex is not None:
            self.deadline[k] = time.monotonic() + (px / 1000 if px is not None else float(ex or 0))
        return True

    def delete(self, k: str) -> None:
        self.kv.pop(k, None)
        self.deadline.pop(k, None)

    def exists(self, k: str) -> int:
        return int(self.get(k) is not None or k in self.h)

    def expire(self, k: str, s: int) -> None:
        return None

    def pexpire(self, k: str, ms: int) -> None:
        if k in self.kv:
            self.deadline[k] = time.monotonic() + ms / 1000

    def hset(self, k: str, f: str | None = None, v: Any = None, mapping: dict[str, Any] | None = None) -> None:
        d = self.h.setdefault(k, {})
        if f is not None:
            d[f] = str(v)
        for mk, mv in (mapping or {}).items():
            d[mk] = str(mv)

    def hget(self, k: str, f: str) -> str | None:
        return self.h.get(k, {}).get(f)

    def hmget(self, k: str, fields: list[str]) -> list[str | None]:
        d = self.h.get(k, {})
        return [d.get(f) for f in fields]

    def hkeys(self, k: str) -> list[str]:
        return list(self.h.get(k, {}))

    def sadd(self, k: str, v: str) -> None:
        self.sets.setdefault(k, set()).add(v)

    def scard(self, k: str) -> int:
        return len(self.sets.get(k, set()))

    def zadd(self, k: str, mapping: dict[str, float]) -> None:
        self.z.setdefault(k, {}).update(mapping)

    def zrem(self, k: str, member: str) -> None:
        self.z.get(k, {}).pop(member, None)

    def zremrangebyscore(self, k: str, lo: str, hi: float) -> None:
        self.z[k] = {m: s for m, s in self.z.get(k, {}).items() if s > hi}

    def zcard(self, k: str) -> int:
        return len(self.z.get(k, {}))


class _Client:
    def generate_presigned_url(self, op: str, Params: dict[str, str], ExpiresIn: int) -> str:
        return f"http://s3.test/{Params['Bucket']}/{Params['Key']}?sig=1&ttl={ExpiresIn}"


class _StorageSettings:
    presign_ttl_s = 3600
    s3_public_endpoint: str | None = None


class MemoryStorage:
    bucket = "editq"

    def presign(self, key: str, ttl_s: int | None = None) -> str:
        base = self.settings.s3_public_endpoint or "http://s3.test"
        return f"{base}/{self.bucket}/{key}?sig=1&ttl={ttl_s or self.settings.presign_ttl_s}"

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.client = _Client()
        self.settings = _StorageSettings()

    def put_bytes(self, key: str, data: bytes, content_type: str, sha256: str | None = None) -> None:
        self.objects[key] = (data, content_type)


class Adapter(OpenAIBatchProtocol):
    """The protocol with its store on the stand-ins, and the stand-ins at hand for the tests."""

    def __init__(self, settings: OpenAIBatchSettings) -> None:
        self.redis, self.storage, self.keys = FakeRedis(), MemoryStorage(), Keys("t")
        super().__init__(settings, store=RedisBatchStore(results_ttl_s=settings.results_ttl_s, redis=self.redis,
                                                         storage=self.storage, keys=self.keys))

    def client(self, http: httpx.AsyncClient) -> ProviderClient:
        return ProviderClient(SPEC, self.settings, http)


def adapter(base_url: str = "http://openai.test/v1", **kw: Any) -> Adapter:
    kw.setdefault("input_url_ttl_s", 0)  # keep the URLs the tests give (inline data URIs for the sandbox)
    return Adapter(OpenAIBatchSettings(api_key=KEY, base_url=base_url, **kw))


def auth(a: OpenAIBatchProtocol) -> dict[str, str]:
    """The headers the client sends with every call of this protocol."""
    key = a.settings.api_key.get_secret_value() if a.settings.api_key else ""
    b = a.build_request(job(), URLS, None)
    assert b.headers == {}
    from editq.providers.openai_batch.protocol import org_headers

    return {"Authorization": f"Bearer {key}", **org_headers(a.settings)}


# ---- jobs -----------------------------------------------------------------------------------------------
def rec(i: int, fmt: str = "PNG") -> InputRecord:
    return record(f"img{i}.png", sha256=f"{i:064x}", bytes=1000, format=fmt, s3_key=f"inputs/{i}.png")


def job(job_id: str = "job_1", **kw: Any) -> EditJob:
    return make_job("openai_batch", **{"job_id": job_id, "batch_id": "b1", "images": ["a.png"], "inputs": [rec(0)],
                                       "idempotency_key": job_id, **kw})


def canonical(job_id: str = "job_1") -> EditJob:
    return job(job_id, images=["a.png", "b.png", "c.png"], inputs=[rec(0), rec(1), rec(2)], mask="m.png",
               mask_input=rec(9), num_images=2, output_format="jpeg", quality="low")


URLS = InputUrls(images=["https://s3/a", "https://s3/b", "https://s3/c"], mask="https://s3/m")


# ---- pure ------------------------------------------------------------------------------------------------
def test_build_request_is_the_exact_jsonl_line() -> None:
    req = adapter().build_request(canonical(), URLS, webhook_url="https://ignored")
    assert (req.method, req.path) == ("POST", "/v1/images/edits")
    assert req.json == {
        "custom_id": "job_1", "method": "POST", "url": "/v1/images/edits",
        "body": {"model": "gpt-image-2", "prompt": "make it sepia", "n": 2, "size": "auto", "quality": "low",
                 "background": "auto", "output_format": "jpeg",
                 "images": [{"image_url": "https://s3/a"}, {"image_url": "https://s3/b"},
                            {"image_url": "https://s3/c"}],
                 "mask": {"image_url": "https://s3/m"}},
    }


def test_validate_names_provider_field_and_allowed_values() -> None:
    a = adapter()
    assert a.validate(canonical()) == []
    [msg] = a.validate(job(model="openai/gpt-image-1/edit"))
    assert msg.startswith("openai_batch: model=openai/gpt-image-1/edit is not allowed; allowed values: ")
    assert "gpt-image-2" in msg
    [msg] = a.validate(job(background="transparent"))
    assert msg.startswith("openai_batch: background=transparent is not allowed for gpt-image-2")
    assert msg.endswith("allowed values: auto, opaque")
    [msg] = a.validate(job(size="3840x16"))
    assert msg.startswith("openai_batch: size=3840x16 is not allowed (")
    assert msg.endswith("allowed: auto, 1024x1024, 1536x1024, 1024x1536, or a custom WxH within those rules")


def test_settings_hooks_claim_size_and_deadline() -> None:
    a = adapter(claim_size=1234)
    assert a.settings.claim_size == 1234 and SPEC.webhooks is False and SPEC.batches
    assert a.claim_size() == 1234 and adapter().claim_size() == OpenAIBatchSettings().claim_size == 50_000
    assert (a.deadline_s() or 0) > 24 * 3600  # the pipeline must let the 24 h window run out first
    assert a.settings.rpm == 0 and a.settings.concurrency == 1_000_000 and a.settings.max_open_batches == 20
    # the claim fills the provider batches that may still open, and nothing at the limit
    b = adapter(max_open_batches=2, max_lines=3)
    assert b.claim_size() == 6
    b.store.remember("batch_a", 3)
    assert b.claim_size() == 3
    b.store.remember("batch_b", 3)
    assert b.claim_size() == 0 and b.free_batches() == 0
    b.store.mark_ingested("batch_a", "completed")
    assert b.claim_size() == 3
    assert auth(a) == {"Authorization": f"Bearer {KEY}"}
    b = OpenAIBatchProtocol(OpenAIBatchSettings(api_key=KEY, organization="org-1", project="proj-1"))
    assert auth(b)["OpenAI-Organization"] == "org-1" and auth(b)["OpenAI-Project"] == "proj-1"


def test_input_urls_are_resigned_to_outlive_the_24h_window() -> None:
    a = adapter(input_url_ttl_s=26 * 3600)
    assert OpenAIBatchSettings().input_url_ttl_s == 26 * 3600  # the default
    a.storage.settings.s3_public_endpoint = "https://files.example.com"
    j = canonical()
    [(same_job, req)] = a.resign_all([(j, a.build_request(j, URLS, None))])
    assert same_job is j
    body = req.json["body"]  # type: ignore[index]
    assert [i["image_url"] for i in body["images"]] == [
        f"https://files.example.com/editq/inputs/{i}.png?sig=1&ttl=93600" for i in range(3)]
    assert body["mask"] == {"image_url": "https://files.example.com/editq/inputs/9.png?sig=1&ttl=93600"}
    assert {k: v for k, v in body.items() if k not in ("images", "mask")} == {
        "model": "gpt-image-2", "prompt": "make it sepia", "n": 2, "size": "auto", "quality": "low",
        "background": "auto", "output_format": "jpeg"}


def test_chunking_respects_line_and_byte_limits() -> None:
    a = adapter(max_lines=2)
    items = [(job(f"job_{i}"), a.build_request(job(f"job_{i}"), URLS, None)) for i in range(5)]
    chunks, too_big = a.chunk_lines(items)
    assert [[line.job_id for line in c] for c in chunks] == [["job_0", "job_1"], ["job_2", "job_3"], ["job_4"]]
    assert too_big == {}
    one = len(chunks[0][0].data)
    b = adapter(max_file_bytes=max(1024, one * 3 + 1))
    chunks, _ = b.chunk_lines(items)
    assert [len(c) for c in chunks] == [3, 2]
    assert all(sum(len(x.data) for x in c) <= b.settings.max_file_bytes for c in chunks)
    huge = job("job_huge", prompt="x" * 2000)
    c = adapter(max_file_bytes=1024)
    chunks, too_big = c.chunk_lines([(huge, c.build_request(huge, URLS, None))])
    assert chunks == [] and list(too_big) == [0]
    assert "allowed: at most 1024 bytes per batch file" in too_big[0]


def test_line_splitter_streams_long_lines_across_chunks() -> None:
    async def run(chunks: list[bytes]) -> list[bytes]:
        async def gen() -> Any:
            for c in chunks:
                yield c

        return [line async for line in lines(gen())]

    big = b'{"custom_id":"a","x":"' + b"A" * 100_000 + b'"}'
    data = big + b"\n\n" + b'{"custom_id":"b"}\r\n' + b'{"custom_id":"c"}'
    chunks = [data[i:i + 777] for i in range(0, len(data), 777)]
    assert asyncio.run(run(chunks)) == [big, b'{"custom_id":"b"}', b'{"custom_id":"c"}']
    assert custom_id_of(b'{"id":"batch_req_1","custom_id":"job_\\"q","response":null}') == 'job_"q'
    assert custom_id_of(b'{"id":"x"}') is None
    assert split_request_id("batch_abc:job_1") == ("batch_abc", "job_1")


# ---- line records: the output/error file lines -> per-job outcomes -------------------------------------------
def _jpeg() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 16), (200, 10, 10)).save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode()


USAGE = {"input_tokens": 1000, "output_tokens": 400, "total_tokens": 1400,
         "input_tokens_details": {"text_tokens": 100, "image_tokens": 900},
         "output_tokens_details": {"text_tokens": 0, "image_tokens": 400}}


def test_success_line_stages_images_and_prices_at_half() -> None:
    a = adapter()
    item = {"id": "batch_req_1", "custom_id": "job_1",
            "response": {"status_code": 200, "request_id": "req_1",
                         "body": {"created": 1, "data": [{"b64_json": _jpeg()}, {"b64_json": _jpeg()}],
                                  "output_format": "jpeg", "size": "32x16", "quality": "low", "usage": USAGE}},
            "error": None}
    rec_ = asyncio.run(a.line_record("batch_x", "job_1", item))
    assert rec_["ok"] is True and rec_["openai_request_id"] == "req_1"
    assert [o["key"] for o in rec_["outputs"]] == ["staging/openai_batch/batch_x/job_1/0.jpg",
                                                   "staging/openai_batch/batch_x/job_1/1.jpg"]
    stored = a.storage.objects["staging/openai_batch/batch_x/job_1/0.jpg"]
    assert stored[1] == "image/jpeg" and stored[0] == base64.b64decode(_jpeg())
    full = usage_and_cost(USAGE, a.settings.token_prices(1.0))
    assert full is not None and full.cost_usd is not None
    # (100 * 5 + 900 * 8 + 400 * 30) / 1e6 = 0.0197 at sync prices; Batch is half
    assert full.cost_usd == pytest.approx(0.0197)
    assert rec_["usage"]["cost_usd"] == pytest.approx(0.00985)
    out = a.outcome("batch_x", rec_)
    assert out.done and out.result is not None and out.result.usage is not None
    assert [o.url for o in out.result.outputs] == [
        "http://s3.test/editq/staging/openai_batch/batch_x/job_1/0.jpg?sig=1&ttl=3600",
        "http://s3.test/editq/staging/openai_batch/batch_x/job_1/1.jpg?sig=1&ttl=3600"]
    assert out.result.raw["batch_id"] == "batch_x" and out.result.raw["size"] == "32x16"


@pytest.mark.parametrize(
    ("status", "error", "kind", "code"),
    [
        (400, {"message": "Your request was rejected by the safety system.", "type": "image_generation_user_error",
               "code": "moderation_blocked"}, ErrorKind.terminal, "moderation_blocked"),
        (400, {"message": "Invalid 'n'", "type": "invalid_request_error", "param": "n",
               "code": "integer_above_max_value"}, ErrorKind.terminal, "integer_above_max_value"),
        (429, {"message": "Rate limit reached. Please try again in 240ms.", "type": "requests",
               "code": "rate_limit_exceeded"}, ErrorKind.retryable, "rate_limit_exceeded"),
        (500, {"message": "The server had an error", "type": "server_error", "code": None},
         ErrorKind.retryable, "server_error"),
    ],
)
def test_error_lines_are_classified(status: int, error: dict[str, Any], kind: ErrorKind, code: str) -> None:
    a = adapter()
    item = {"id": "r", "custom_id": "job_1", "error": None,
            "response": {"status_code": status, "request_id": "req_9", "body": {"error": error}}}
    out = a.outcome("batch_x", asyncio.run(a.line_record("batch_x", "job_1", item)))
    assert out.done and out.error is not None
    assert out.error.kind is kind and out.error.provider_code == code and out.error.status_code == status
    assert out.error.reason.startswith(f"openai_batch batch line: HTTP {status}: ")
    if code == "rate_limit_exceeded":
        assert out.error.retry_after_s == pytest.approx(0.24)


def test_unrun_lines_follow_the_policy_and_say_so() -> None:
    item = {"id": "r", "custom_id": "job_1", "response": None,
            "error": {"code": "batch_expired", "message": "This request could not be executed before the completion "
                                                          "window expired."}}
    retry = adapter()
    out = retry.outcome("batch_x", asyncio.run(retry.line_record("batch_x", "job_1", item)))
    assert out.error is not None and out.error.kind is ErrorKind.retryable and not out.error.maybe_billed
    assert out.error.reason == ("openai_batch: not run: batch_expired in batch batch_x (not billed; back to the "
                                "queue): This request could not be executed before the completion window expired.")
    fail = adapter(unrun_policy="fail")
    out = fail.outcome("batch_x", asyncio.run(fail.line_record("batch_x", "job_1", item)))
    assert out.error is not None and out.error.kind is ErrorKind.terminal
    assert "(not billed; failed by unrun_policy=fail)" in out.error.reason
    timeout = {"id": "r", "custom_id": "job_1", "response": None,
               "error": {"code": "request_timeout", "message": "The underlying call to the model timed out."}}
    out = fail.outcome("b", asyncio.run(fail.line_record("b", "job_1", timeout)))
    assert out.error is not None and out.error.kind is ErrorKind.retryable and out.error.maybe_billed


def test_missing_lines_after_an_ended_batch() -> None:
    a = adapter()
    redact.register(KEY)  # the client registers its key when it is made; ProviderError redacts every reason
    failed = {"status": "failed", "errors": {"data": [
        {"code": "duplicate_custom_id", "line": 2, "message": f"dup (key {KEY})", "param": "custom_id"}]}}
    bad = missing_outcome("batch_x", "failed", failed, {"custom_id": "job_2", "line": 2}, a.settings.unrun_policy)
    assert bad.error is not None and bad.error.kind is ErrorKind.terminal
    assert bad.error.reason == "openai_batch: batch batch_x refused line 2: duplicate_custom_id: dup (key ***)"
    other = missing_outcome("batch_x", "failed", failed, {"custom_id": "job_1", "line": 1}, a.settings.unrun_policy)
    assert other.error is not None and other.error.kind is ErrorKind.retryable
    assert "not run: batch failed validation in batch batch_x" in other.error.reason
    expired = missing_outcome("batch_x", "expired", {}, {"custom_id": "job_1", "line": 1}, a.settings.unrun_policy)
    assert expired.error is not None and "not run: batch expired" in expired.error.reason
    lost = missing_outcome("batch_x", "completed", {}, {"custom_id": "job_1", "line": 1}, a.settings.unrun_policy)
    assert lost.error is not None and lost.error.kind is ErrorKind.unknown and lost.error.maybe_billed


# ---- narrow error paths (answers the sandbox cannot give) --------------------------------------------------------
def _mock(handler: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def _items(a: OpenAIBatchProtocol, n: int) -> list[tuple[EditJob, ProviderRequest]]:
    return [(job(f"job_{i}"), a.build_request(job(f"job_{i}"), URLS, None)) for i in range(n)]


def test_create_timeout_adopts_the_batch_that_was_created() -> None:
    calls: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(f"{req.method} {req.url.path}")
        if req.url.path.endswith("/files"):
            return httpx.Response(200, json={"id": "file-in1", "object": "file"})
        if req.method == "POST" and req.url.path.endswith("/batches"):
            raise httpx.ReadTimeout("slow", request=req)
        return httpx.Response(200, json={"object": "list", "data": [
            {"id": "batch_other", "input_file_id": "file-zzz"},
            {"id": "batch_mine", "input_file_id": "file-in1", "status": "validating"}]})

    a = adapter()

    async def run() -> list[Any]:
        async with _mock(handler) as http:
            return await a.submit_many(a.client(http), _items(a, 2))

    res = asyncio.run(run())
    assert calls == ["POST /v1/files", "POST /v1/batches", "GET /v1/batches"]
    assert [r.request_id for r in res] == ["batch_mine:job_0", "batch_mine:job_1"]
    assert res[1].handle == {"batch_id": "batch_mine", "custom_id": "job_1", "line": 2, "input_file_id": "file-in1"}


def test_create_refused_deletes_the_file_and_never_leaks_the_key() -> None:
    calls: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(f"{req.method} {req.url.path}")
        assert req.headers["authorization"] == f"Bearer {KEY}"
        if req.url.path.endswith("/files"):
            return httpx.Response(200, json={"id": "file-in2"})
        if req.method == "DELETE":
            return httpx.Response(200, json={"id": "file-in2", "deleted": True})
        return httpx.Response(401, json={"error": {"message": f"Incorrect API key provided: {KEY}.",
                                                   "type": "invalid_request_error", "code": "invalid_api_key"}})

    a = adapter()

    async def run() -> list[Any]:
        async with _mock(handler) as http:
            return await a.submit_many(a.client(http), _items(a, 3))

    res = asyncio.run(run())
    assert calls == ["POST /v1/files", "POST /v1/batches", "DELETE /v1/files/file-in2"]
    assert all(isinstance(r, ProviderError) and r.kind is ErrorKind.terminal for r in res)
    err = res[0]
    assert isinstance(err, ProviderError)
    assert KEY not in err.reason and "***" in err.reason and err.provider_code == "invalid_api_key"


def test_upload_429_is_retryable_with_wait() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"retry-after": "7"},
                              json={"error": {"message": "slow down", "type": "requests",
                                              "code": "rate_limit_exceeded"}})

    a = adapter()

    async def run() -> list[Any]:
        async with _mock(handler) as http:
            return await a.submit_many(a.client(http), _items(a, 1))

    [err] = asyncio.run(run())
    assert isinstance(err, ProviderError) and err.kind is ErrorKind.retryable and err.retry_after_s == 7.0
    assert err.reason.startswith("openai_batch upload batch file: HTTP 429")


# ---- the protocol against the sandbox over HTTP --------------------------------------------------------------
@pytest.fixture(scope="module")
def sb() -> Iterator[str]:
    with running_sandbox(SandboxConfig(latency_s=0.05, jitter_s=0.0, concurrency=8, seed=3)) as base:
        yield base


INLINE = InputUrls(images=[_data_uri("mug.png"), _data_uri("bottle.png"), _data_uri("watch.png")],
                   mask=_data_uri("mask_mug.png"))


class Counting:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def hook(self, req: httpx.Request) -> None:
        self.calls.append(f"{req.method} {req.url.path}")


async def _drive(a: Adapter, items: list[tuple[EditJob, ProviderRequest]], counting: Counting,
                 timeout: float = 20.0) -> tuple[list[Any], list[Outcome | ProviderError]]:
    async with httpx.AsyncClient(event_hooks={"request": [counting.hook]}) as http:
        c = a.client(http)
        subs = await a.submit_many(c, items)
        pending = [(s.request_id, s.handle) for s in subs if not isinstance(s, ProviderError)]
        deadline = time.monotonic() + timeout
        while True:
            outs = await a.poll_many(c, pending)
            if all(isinstance(o, Outcome) and o.done for o in outs) or time.monotonic() > deadline:
                return subs, outs
            await asyncio.sleep(0.02)


def test_batch_round_trip_partial_failure_and_one_status_call_per_batch(sb: str) -> None:
    a = adapter(base_url=f"{sb}/openai/v1", status_ttl_s=0.2)
    jobs = [canonical("job_a"), canonical("job_b"), job("job_bad").model_copy(update={"num_images": 11}),
            job("job_mod", prompt="sandbox:moderation please")]
    items = [(j, a.build_request(j, INLINE, None)) for j in jobs]
    counting = Counting()
    subs, outs = asyncio.run(_drive(a, items, counting))
    batch_ids = {s.handle["batch_id"] for s in subs}
    assert len(batch_ids) == 1 and all(s.request_id == f"{s.handle['batch_id']}:{s.handle['custom_id']}"
                                       for s in subs)
    by_id = dict(zip([j.job_id for j in jobs], outs, strict=True))
    for jid in ("job_a", "job_b"):
        o = by_id[jid]
        assert isinstance(o, Outcome) and o.result is not None and len(o.result.outputs) == 2
        assert o.result.usage is not None and o.result.usage.cost_usd and o.result.usage.cost_source == "tokens"
        for ref in o.result.outputs:
            key = ref.url.split("/editq/", 1)[1].split("?")[0]  # type: ignore[union-attr]
            data, ctype = a.storage.objects[key]
            assert ctype == "image/jpeg"
            with Image.open(io.BytesIO(data)) as im:
                assert (im.format, im.size) == ("JPEG", (512, 512))
    bad, mod = by_id["job_bad"], by_id["job_mod"]
    assert isinstance(bad, Outcome) and bad.error is not None and bad.error.kind is ErrorKind.terminal
    assert bad.error.provider_code == "integer_above_max_value" and "Expected a value <= 10" in bad.error.reason
    assert isinstance(mod, Outcome) and mod.error is not None and mod.error.provider_code == "moderation_blocked"
    # the output and error files were each read exactly once, and only the batch endpoints were used
    bid = batch_ids.pop()
    downloads = [c for c in counting.calls if c.endswith("/content")]
    assert len(downloads) == 2 and len(set(downloads)) == 2
    assert counting.calls[:2] == ["POST /openai/v1/files", "POST /openai/v1/batches"]
    status_calls = [c for c in counting.calls if c == f"GET /openai/v1/batches/{bid}"]
    polls = len([c for c in counting.calls if c.startswith("GET")]) - 2
    assert status_calls and polls == len(status_calls)
    # once every job has its record, polls answer from Redis without any HTTP call
    before = len(counting.calls)
    again = asyncio.run(_poll_only(a, [(s.request_id, s.handle) for s in subs]))
    assert len(counting.calls) == before and all(isinstance(o, Outcome) and o.done for o in again)


async def _poll_only(a: Adapter, pending: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    async with httpx.AsyncClient() as http:
        return await a.poll_many(a.client(http), pending)


def test_interrupted_ingest_resumes_without_redoing_recorded_lines(sb: str) -> None:
    a = adapter(base_url=f"{sb}/openai/v1", status_ttl_s=0.1)
    jobs = [job(f"job_r{i}", images=["a.png"], inputs=[rec(0)]) for i in range(3)]
    inline = InputUrls(images=[_data_uri("mug.png")])

    async def run() -> list[Any]:
        async with httpx.AsyncClient() as http:
            c = a.client(http)
            subs = await a.submit_many(c, [(j, a.build_request(j, inline, None)) for j in jobs])
            bid = subs[0].handle["batch_id"]
            for _ in range(500):
                batch = await a.batch_status(c, bid)
                if batch and batch["status"] == "completed":
                    break
                await asyncio.sleep(0.02)
            # someone recorded job_r1 before being killed: its record must survive untouched
            a.redis.hset(a.keys.oaib_results(bid), "job_r1", json.dumps({"ok": False, "kind": "terminal",
                                                                          "reason": "pre-recorded"}))
            return await a.poll_many(c, [(s.request_id, s.handle) for s in subs])

    outs = asyncio.run(run())
    assert [o.result is not None for o in outs] == [True, False, True]
    assert outs[1].error.reason == "pre-recorded"
    assert sorted(k.split("/")[3] for k in a.storage.objects) == ["job_r0", "job_r2"]


def test_expired_batch_lines_go_back_to_the_queue(sb: str) -> None:
    httpx.patch(f"{sb}/_sandbox/config", json={"openai_batch_expire_after_lines": 1}).raise_for_status()
    try:
        a = adapter(base_url=f"{sb}/openai/v1", status_ttl_s=0.1)
        jobs = [job(f"job_e{i}") for i in range(3)]
        inline = InputUrls(images=[_data_uri("mug.png")])
        _, outs = asyncio.run(_drive(a, [(j, a.build_request(j, inline, None)) for j in jobs], Counting()))
    finally:
        httpx.patch(f"{sb}/_sandbox/config", json={"openai_batch_expire_after_lines": -1}).raise_for_status()
    assert isinstance(outs[0], Outcome) and outs[0].result is not None
    for o in outs[1:]:
        assert isinstance(o, Outcome) and o.error is not None and o.error.kind is ErrorKind.retryable
        assert o.error.reason.startswith("openai_batch: not run: batch_expired in batch batch_")


def test_cancel_of_every_job_cancels_the_provider_batch(sb: str) -> None:
    httpx.patch(f"{sb}/_sandbox/config", json={"latency_s": 2.0}).raise_for_status()
    try:
        a = adapter(base_url=f"{sb}/openai/v1", status_ttl_s=0.05)
        jobs = [job(f"job_c{i}") for i in range(2)]
        inline = InputUrls(images=[_data_uri("mug.png")])

        async def run() -> tuple[list[Any], dict[str, Any] | None]:
            async with httpx.AsyncClient() as http:
                c = a.client(http)
                subs = await a.submit_many(c, [(j, a.build_request(j, inline, None)) for j in jobs])
                await a.cancel(c, subs[0].request_id, subs[0].handle)
                bid = subs[0].handle["batch_id"]
                first = (await http.get(f"{sb}/openai/v1/batches/{bid}", headers=auth(a))).json()
                assert first["status"] == "validating"  # one cancelled job does not cancel the others' batch
                await a.cancel(c, subs[1].request_id, subs[1].handle)
                second = (await http.get(f"{sb}/openai/v1/batches/{bid}", headers=auth(a))).json()
                return subs, second

        _, batch = asyncio.run(run())
    finally:
        httpx.patch(f"{sb}/_sandbox/config", json={"latency_s": 0.05}).raise_for_status()
    assert batch is not None and batch["status"] in ("cancelling", "cancelled")


def test_a_provider_batch_is_cut_at_50000_lines_or_the_file_size_whichever_first() -> None:
    a = adapter()  # the defaults: OpenAI's 50,000 lines and 190 MB (under its 200 MB)
    assert (a.settings.max_lines, a.settings.max_file_bytes) == (50_000, 190 * 1024 * 1024)
    base = a.build_request(job("job_x"), URLS, None)
    items = [(job(f"job_{i}"), base) for i in range(50_001)]  # one line each (the request is the same)
    chunks, _ = a.chunk_lines(items)
    assert [len(c) for c in chunks] == [50_000, 1]  # the line count came first
    one = len(chunks[0][0].data)
    b = adapter(max_file_bytes=one * 20_000 + 5)  # now the file size comes first
    chunks, _ = b.chunk_lines(items)
    assert [len(c) for c in chunks] == [20_000, 20_000, 10_001]
    assert all(sum(len(x.data) for x in c) <= b.settings.max_file_bytes for c in chunks)
