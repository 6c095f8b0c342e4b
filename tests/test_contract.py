"""The provider contract, run for every registered provider (and the test-only plugin) from its
`providers/<name>/cases.py`: translation, refusals at enqueue, a real round trip against the sandbox's
emulator (submit -> poll -> outputs that decode), cancel, and for providers with webhooks a signed
delivery accepted and forged ones refused. One suite instead of a same-shaped file per provider."""

from __future__ import annotations

import asyncio
import base64
import importlib
import io
import json
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from editq import providers
from editq.producer.inputs import InputPreparer
from editq.producer.stack import LocalStack, scoped_env
from editq.providers.cases import Cases
from editq.providers.protocol import ProviderProtocol
from editq.providers.types import InputUrls, Outcome, Submitted
from editq.schemas.job import EditJob
from editq.worker import aio
from editq.worker.errors import ProviderError, WebhookRejected
from editq.worker.provider_client import client_for
from editq.worker.storage import get_storage
from tests.conftest import EXAMPLES, ROOT
from tests.e2e import configure_sandbox, start, using
from tests.factories import make_job, record
from tests.webhook_peer import Peer, peer_fixture

PLUGIN = {"EDITQ_PROVIDER_MODULES": "tests.plugins.echo", "PYTHONPATH": str(ROOT)}


def cases_of(name: str) -> Cases | None:
    module = providers.spec_of(name).package + ".cases"
    try:
        return getattr(importlib.import_module(module), "CASES", None)
    except ModuleNotFoundError:
        return None


with scoped_env(PLUGIN):
    NAMES = [n for n in providers.names() if cases_of(n) is not None]
    CASES: dict[str, Cases] = {n: c for n in NAMES if (c := cases_of(n)) is not None}
    SPECS = {n: providers.spec_of(n) for n in NAMES}

ACCEPTED = [(n, i) for n in NAMES for i in range(len(CASES[n].accepted))]
REFUSED = [(n, i) for n in NAMES for i in range(len(CASES[n].refused))]
WEBHOOKS = [n for n in NAMES if SPECS[n].webhooks]
CANCELS = [n for n in NAMES if CASES[n].cancels]
CANARY = "canary-" + secrets.token_hex(12)


def test_every_registered_provider_has_cases() -> None:
    """No provider escapes the contract: every one in the registry has a cases module."""
    assert sorted(providers.REGISTRY) == sorted(n for n in NAMES if n in providers.REGISTRY)
    assert "echo" in NAMES


def _job(name: str, fields: dict[str, Any], inputs: list[Any] | None = None) -> EditJob:
    data: dict[str, Any] = {"job_id": "job_" + secrets.token_hex(4), "batch_id": "batch_contract",
                            "prompt": "make it teal", "idempotency_key": secrets.token_hex(8), **fields}
    data["inputs"] = [record()] if inputs is None else inputs
    return make_job(name, **data)


def _protocol(name: str) -> ProviderProtocol:
    spec = SPECS[name]
    env = {**PLUGIN, **CASES[name].env}
    with scoped_env(env):
        settings = spec.settings_cls.model_validate({"api_key": CANARY, "base_url": "https://provider.invalid"})
        return spec.load_protocol(settings)


# ---- pure translation -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "index"), ACCEPTED, ids=[f"{n}-{i}" for n, i in ACCEPTED])
def test_accepted_jobs_validate_clean_and_translate_without_secrets(name: str, index: int) -> None:
    proto = _protocol(name)
    job = _job(name, CASES[name].accepted[index])
    assert proto.validate(job) == []
    req = proto.build_request(job, InputUrls(images=["https://s3.example/in/a.png?sig=1"]),
                              "https://hooks.example/webhooks/x?job=" + job.job_id)
    assert req.method in ("GET", "POST", "PUT")
    assert CANARY not in repr(req)  # the client adds credentials; a request never carries them


@pytest.mark.parametrize(("name", "index"), REFUSED, ids=[f"{n}-{i}" for n, i in REFUSED])
def test_refused_jobs_are_refused_at_enqueue_naming_provider_and_field(name: str, index: int) -> None:
    fields, words = CASES[name].refused[index]
    problems = _protocol(name).validate(_job(name, fields))
    assert any(words in p for p in problems), problems
    assert all(p.startswith(f"{name}") for p in problems), problems


# ---- against the sandbox ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    env = dict(PLUGIN)
    for c in CASES.values():
        env.update(c.env)
    yield from start(False, env, sandbox_opts={"latency_s": 0.2, "jitter_s": 0.0, "concurrency": 16},
                     worker_concurrency=1, keep_env=True)


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    yield from peer_fixture()


def _inputs(stack: LocalStack) -> tuple[list[Any], InputUrls]:
    storage = get_storage()
    rec = InputPreparer(storage, EXAMPLES).prepare("mug.png", "images[0]")
    return [rec], InputUrls(images=[storage.presign(rec.s3_key)])


async def _submit(name: str, job: EditJob, urls: InputUrls, webhook: str | None) -> Submitted:
    proto = providers.protocol_of(name)
    req = proto.build_request(job, urls, webhook)
    return await proto.submit(client_for(name), job, req)


async def _until_done(name: str, sub: Submitted, timeout: float = 60) -> Outcome:
    if sub.outcome is not None and sub.outcome.done:
        return sub.outcome
    proto = providers.protocol_of(name)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        out = await proto.poll(client_for(name), sub.request_id, sub.handle)
        if out.done:
            return out
        await asyncio.sleep(0.1)  # polling interval of a real poller, not a stand-in for synchronisation
    raise AssertionError(f"{name}: request {sub.request_id} not done within {timeout}s")


async def _image(name: str, outcome: Outcome) -> Image.Image:
    assert outcome.result is not None and outcome.error is None, outcome.error
    ref = outcome.result.outputs[0]
    if ref.b64:
        data = base64.b64decode(ref.b64)
    else:
        assert ref.url
        proto = providers.protocol_of(name)
        headers = client_for(name).output_headers(ref.url, proto.output_auth(ref.url))
        async with httpx.AsyncClient() as plain:
            resp = await plain.get(ref.url, headers=headers, timeout=30)
        assert resp.status_code == 200
        data = resp.content
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_against_the_emulator(stack: LocalStack, name: str) -> None:
    with using(stack):
        recs, urls = _inputs(stack)
        job = _job(name, CASES[name].accepted[0], recs)

        async def go() -> Image.Image:
            sub = await _submit(name, job, urls, None)
            assert sub.request_id
            return await _image(name, await _until_done(name, sub))

        img = aio.run(go())
        assert img.width > 0 and img.height > 0


@pytest.mark.parametrize("name", WEBHOOKS)
def test_a_signed_delivery_is_accepted_and_forged_ones_are_refused(stack: LocalStack, peer: Peer, name: str) -> None:
    with using(stack):
        recs, urls = _inputs(stack)
        job = _job(name, CASES[name].accepted[0], recs)
        path = f"/hook/{name}/{secrets.token_hex(4)}"
        proto = providers.protocol_of(name)
        sub = aio.run(_submit(name, job, urls, f"{peer.url}{path}?job={job.job_id}"))
        headers, body = peer.wait(path)

        async def verify(h: dict[str, str], b: bytes) -> Any:
            return await proto.verify_webhook(client_for(name), h, b, now=__import__("time").time())

        event = aio.run(verify(headers, body))
        assert event.request_id == sub.request_id and event.delivery_id
        outcome = aio.run(proto.webhook_outcome(client_for(name), event, sub.handle))
        assert outcome.done and outcome.result is not None and outcome.result.outputs
        tampered = body.replace(b"}", b' , "x": 1}', 1) if body.endswith(b"}") else body + b" "
        forged_sig = {k: (v[:-4] + ("AAAA" if not v.endswith("AAAA") else "BBBB")) if "signature" in k else v
                      for k, v in headers.items()}
        for h, b in ((headers, tampered), (forged_sig, body), ({}, body)):
            with pytest.raises(WebhookRejected):
                aio.run(verify(h, b))


@pytest.mark.parametrize("name", CANCELS)
def test_a_cancelled_request_ends_failed(stack: LocalStack, name: str) -> None:
    with using(stack):
        configure_sandbox(stack, {"latency_s": 30.0})
        try:
            recs, urls = _inputs(stack)
            job = _job(name, CASES[name].accepted[0], recs)

            async def go() -> Outcome:
                sub = await _submit(name, job, urls, None)
                await providers.protocol_of(name).cancel(client_for(name), sub.request_id, sub.handle)
                return await _until_done(name, sub, timeout=20)

            outcome = aio.run(go())
        finally:
            configure_sandbox(stack, {"latency_s": 0.2})
        assert outcome.done and outcome.result is None and isinstance(outcome.error, ProviderError)


def test_the_canary_key_never_reaches_a_request_log(stack: LocalStack) -> None:
    """What the sandbox logged of every request in this module's runs holds no key of ours."""
    with using(stack):
        logged = httpx.get(stack.env["EDITQ_SANDBOX_URL"] + "/_sandbox/requests", timeout=15).json()
    assert CANARY not in json.dumps(logged)
