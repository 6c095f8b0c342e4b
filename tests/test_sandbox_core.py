"""Sandbox core pieces without a server: config, dice, signers, inputs, CLI parser."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from datetime import UTC, datetime

import httpx
import pytest
from nacl.signing import VerifyKey
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from editq.sandbox.__main__ import build_parser
from editq.sandbox.config import SandboxConfig
from editq.sandbox.faults import Dice
from editq.sandbox.inputs import InputError, decode_data_uri, fetch_image, summarize_for_log
from editq.sandbox.signing import Ed25519KeyRing, FalWebhookSigner, StandardWebhookSigner, fal_signed_message


def test_config_from_env_and_overrides() -> None:
    env = {"EDITQ_SANDBOX_LATENCY_S": "0.25", "EDITQ_SANDBOX_WEBHOOK_RETRY": "false",
           "EDITQ_SANDBOX_RENDER": "cached", "EDITQ_SANDBOX_CONCURRENCY": "3", "UNRELATED": "x"}
    config = SandboxConfig.from_env(env, concurrency=500)
    assert (config.latency_s, config.webhook_retry, config.render, config.concurrency) == (0.25, False, "cached", 500)
    with pytest.raises(ValidationError):
        SandboxConfig.from_env({"EDITQ_SANDBOX_SUBMIT_429_RATE": "1.5"})


def test_config_runtime_updates() -> None:
    config = SandboxConfig()
    assert config.updated({"concurrency": 2}).concurrency == 2
    with pytest.raises(ValueError, match="runtime"):
        config.updated({"port": 1})
    assert config.updated({"port": 1}, runtime=False).port == 1
    with pytest.raises(ValidationError):
        config.updated({"render": "fake"})


def test_cli_parser_maps_every_field() -> None:
    args = build_parser().parse_args(["--port", "9", "--latency", "0.5", "--webhook-retry", "no",
                                      "--submit-429-rate", "0.1"])
    config = SandboxConfig.from_env({}, **vars(args))
    assert (config.port, config.latency_s, config.webhook_retry, config.submit_429_rate) == (9, 0.5, False, 0.1)


def test_dice_streams_are_independent_and_reproducible() -> None:
    a, b = Dice(3), Dice(3)
    seq_a = [a.roll("x", 0.5) for _ in range(20)]
    b.roll("other", 0.5)  # another stream must not shift "x"
    assert [b.roll("x", 0.5) for _ in range(20)] == seq_a
    assert not any(Dice(1).roll("y", 0.0) for _ in range(50))
    assert all(Dice(1).roll("y", 1.0) for _ in range(50))


def test_fal_signer_matches_jwks() -> None:
    keys = Ed25519KeyRing(seed=5)
    signer = FalWebhookSigner(keys, "user-1")
    body = b'{"status":"OK"}'
    headers = signer.sign(body, request_id="rid", timestamp=1700000000)
    jwk = keys.jwks()["keys"][0]
    verify_key = VerifyKey(base64.urlsafe_b64decode(jwk["x"] + "=="))
    message = f"rid\nuser-1\n1700000000\n{hashlib.sha256(body).hexdigest()}".encode()
    assert message == fal_signed_message("rid", "user-1", "1700000000", body)
    verify_key.verify(message, bytes.fromhex(headers["X-Fal-Webhook-Signature"]))
    bad = signer.sign(body, request_id="rid", timestamp=1700000000, valid=False)
    assert bad["X-Fal-Webhook-Signature"] != headers["X-Fal-Webhook-Signature"]
    assert Ed25519KeyRing(seed=5).public_key == keys.public_key != Ed25519KeyRing(seed=6).public_key


def test_standard_webhook_signer_verifies_with_the_reference_package() -> None:
    signer = StandardWebhookSigner(seed=1, label="modelrunner")
    body = b'{"id":"abc"}'
    now = int(datetime.now(UTC).timestamp())
    headers = signer.sign(body, request_id="abc", timestamp=now)
    assert Webhook(signer.secret).verify(body, headers) == {"id": "abc"}
    with pytest.raises(WebhookVerificationError):
        Webhook(signer.secret).verify(body, signer.sign(body, request_id="abc", timestamp=now, valid=False))


def test_data_uris_and_log_summaries() -> None:
    assert decode_data_uri("data:image/png;base64,aGVsbG8=", max_bytes=100) == b"hello"
    assert decode_data_uri("data:,hi%20there", max_bytes=100) == b"hi there"
    with pytest.raises(InputError):
        decode_data_uri("data:image/png;base64,aGVsbG8=", max_bytes=2)
    summary = summarize_for_log({"image_urls": ["data:image/png;base64," + "A" * 1000, "https://x/y.png"]})
    assert summary["image_urls"][0] == "data:image/png;base64,<1000 chars elided>"
    assert summary["image_urls"][1] == "https://x/y.png"


def test_fetch_image_rejects_non_images() -> None:
    async def run() -> None:
        async with httpx.AsyncClient() as client:
            with pytest.raises(InputError) as info:
                await fetch_image("data:text/plain,hello", client, max_bytes=100, timeout=1)
            assert info.value.kind == "image_load_error"
            with pytest.raises(InputError):
                await fetch_image("ftp://example.invalid/x.png", client, max_bytes=100, timeout=1)

    asyncio.run(run())


def test_running_sandbox_in_thread_serves_real_http() -> None:
    from editq.sandbox.testing import running_sandbox

    with running_sandbox(SandboxConfig(latency_s=0.0, jitter_s=0.0)) as base_url:
        health = httpx.get(base_url + "/_sandbox/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        jwks = httpx.get(base_url + "/fal/.well-known/jwks.json").json()
        assert jwks["keys"][0]["crv"] == "Ed25519"
    with pytest.raises(httpx.ConnectError):
        httpx.get(base_url + "/_sandbox/health")


def test_files_small_and_large_are_served_whole_with_head() -> None:
    """Outputs up to 1 MiB are answered from one read, bigger ones streamed: same bytes either way."""
    import os

    from editq.sandbox.files import SMALL_FILE
    from editq.sandbox.testing import running_sandbox

    with running_sandbox(SandboxConfig(latency_s=0.0, jitter_s=0.0)) as base_url:
        for size in (1000, SMALL_FILE, SMALL_FILE + 1, 3 * SMALL_FILE):
            data = b"\x89PNG\r\n\x1a\n" + os.urandom(size - 8)
            url = httpx.post(base_url + "/files/upload", content=data).json()["access_url"]
            got = httpx.get(url)
            assert got.status_code == 200 and got.content == data
            assert got.headers["content-type"] == "image/png" and got.headers["content-length"] == str(size)
            head = httpx.head(url)
            assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(size)
        assert httpx.get(base_url + "/files/" + "0" * 32 + ".png").status_code == 404


def test_cached_inputs_are_fetched_once_for_a_burst_of_submits() -> None:
    """render=cached: 50 submits naming one input at once make one download, not 50."""
    from editq.sandbox.inputs import fetch_bytes, set_input_cache
    from editq.worker.transport import async_client

    png = b"\x89PNG\r\n\x1a\n" + bytes(1000)
    hits: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hits.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(png) + png)
        await writer.drain()
        writer.close()

    async def run() -> list[bytes]:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/in.png"
        try:
            async with async_client(64) as client:
                first = await asyncio.gather(*(fetch_bytes(f"{url}?sig={i}", client, max_bytes=10**6, timeout=5)
                                               for i in range(50)))
                again = await fetch_bytes(url + "?sig=later", client, max_bytes=10**6, timeout=5)
                with pytest.raises(InputError, match="too large"):
                    await fetch_bytes(url + "?sig=x", client, max_bytes=10, timeout=5)
                return [*first, again]
        finally:
            server.close()
            await server.wait_closed()

    set_input_cache(True)
    try:
        got = asyncio.run(run())
    finally:
        set_input_cache(False)
    assert got == [png] * 51
    assert len(hits) == 1
