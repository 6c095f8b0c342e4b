"""The provider contract at the pipeline level: for every provider, the canonical batch (tests/e2e.py) through the
whole stack (Redis, moto S3 over HTTP, the sandbox, the webhook receiver and Celery workers as separate processes),
through verified webhooks where the provider has them and through polling with webhooks off.

What every provider must satisfy: each accepted line succeeds with outputs whose sha256, bytes, size and format in
S3 match the manifest; the lines it cannot take are refused at enqueue, naming the provider and the field; its key
is in no manifest and no process log; each job made exactly one accepted provider request. What is particular to a
provider (which lines it refuses and with what words, output sizes, what its requests carry) is the table below.
Then, for the providers whose deliveries are Standard-Webhooks-shaped, the receiver refuses forged, stale and
replayed deliveries of a real job. What only one provider does beyond that stays in its
tests/test_provider_<name>_e2e.py (replicate: its own forgeries and the fal -> replicate fallback; openai_batch:
jobs sharing one provider batch, partial expiry).

Two stacks serve every provider (all run against the same sandbox): one with webhooks on (completions only by
webhook), one with webhooks off. Each stack's batches are submitted together, so the providers run side by side.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from editq import providers
from editq.producer.api import BatchReport, submit_batch, wait
from editq.producer.stack import LocalStack
from editq.worker.storage import get_storage
from tests.conftest import unique
from tests.e2e import (
    EXAMPLES,
    FAST_POLLS,
    PROMPT,
    WEBHOOKS_ONLY,
    accepted_webhooks,
    assert_mask_respected,
    assert_receiver_refuses_forgeries,
    canonical_lines,
    sandbox_log,
    sandbox_request,
    start,
    undelivered_job,
    using,
    verify_batch,
    wait_for,
)

Manifests = dict[str, dict[str, Any]]  # by custom_id
Sent = dict[str, dict[str, Any]]  # the sandbox's log entry of each job's provider request, by custom_id


@dataclass(frozen=True)
class Run:
    stack: LocalStack
    mode: str  # "webhooks" or "polling"
    manifests: Manifests
    sent: Sent


def _fal(run: Run) -> None:
    assert_mask_respected(run.manifests["masked"]["outputs"][0]["key"], size=(816, 816))  # auto: 512x512 fitted


def _modelrunner(run: Run) -> None:
    for cid, m in run.manifests.items():
        count = len(m["outputs"])
        assert m["usage"]["cost_source"] == "provider" and m["usage"]["cost_usd"] == 0.01 * count
        e = run.sent[cid]
        assert e["headers"]["x-modelrunner-queue-priority"] == "low" and e["model"] == "openai/gpt-image-2/edit"
    # the masked edit kept every pixel outside the mask's transparent area byte-identical
    assert_mask_respected(run.manifests["masked"]["outputs"][0]["key"], same_size=True)


def _wavespeed(run: Run) -> None:
    for e in run.sent.values():
        assert e["input"]["resolution"] == "1k"
        assert "mask" not in json.dumps(e["input"]) and "num_images" not in e["input"]


def _replicate(run: Run) -> None:
    for cid, m in run.manifests.items():
        assert m["usage"]["cost_source"] == "tokens" and m["usage"]["output_tokens"] > 0
        (out,) = m["outputs"]
        assert out["source_url"].startswith(run.stack.env["EDITQ_REPLICATE_BASE_URL"] + "/delivery/")
        e = run.sent[cid]
        if run.mode == "webhooks":  # each prediction asked for the completed event only
            assert e["input"]["webhook_events_filter"] == ["completed"]
            assert e["input"]["webhook"].startswith(run.stack.env["EDITQ_WEBHOOK_BASE_URL"] +
                                                    "/webhooks/replicate?job=")
        else:
            assert "webhook" not in e["input"] and e["webhook"] is None
    three = run.sent["three-refs"]["input"]["input"]
    assert three["aspect_ratio"] == "3:2" and len(three["input_images"]) == 3


def _openai(run: Run) -> None:
    storage = get_storage()
    for m in run.manifests.values():
        usage = m["usage"]
        assert usage["cost_source"] == "tokens" and usage["cost_usd"] > 0 and usage["output_image_tokens"] > 0
        assert all(out["source_url"] is None for out in m["outputs"])  # inline base64, nothing to fetch
        keys = storage.list_keys(f"{storage.settings.s3_prefix}/{m['batch_id']}/{m['job_id']}/")
        assert len(keys) == len(m["outputs"]) + 1
    refs = run.manifests["three-refs"]
    entry = run.sent["three-refs"]["input"]
    assert [(i["field"], i["content_type"]) for i in entry["image"]] == [("image[]", "image/png")] * 3
    assert "mask" not in entry and refs["usage"]["input_image_tokens"] == 3 * (85 + 170)
    assert run.sent["two-images"]["input"]["n"] == "2"
    assert run.sent["jpeg"]["input"]["output_format"] == "jpeg"
    # the masked edit: OpenAI's convention (alpha 0 = edit); every pixel outside the mask is unchanged
    assert run.sent["masked"]["input"]["mask"]["content_type"] == "image/png"
    assert_mask_respected(run.manifests["masked"]["outputs"][0]["key"], same_size=True)


def _oxen(run: Run) -> None:
    for cid, m in run.manifests.items():
        assert m["provider_request_id"].startswith("oxen-") and run.sent[cid]["outcome"] == "ok"
        assert m["outputs"][0]["source_url"].startswith(run.stack.env["EDITQ_SANDBOX_URL"] + "/files/")
    three = run.sent["three-refs"]["input"]
    assert len(three["input_image"]) == 3 and three["resolution"] == "1K" and "mask_url" not in three
    # the mask went out converted to Oxen's convention (white = edit), and only the masked area changed
    masked = run.manifests["masked"]
    mask_sent = run.sent["masked"]["input"]["mask_url"]
    assert "/inputs/" in mask_sent and mask_sent != masked["mask"]["s3_key"]
    assert_mask_respected(masked["outputs"][0]["key"], size=(1024, 1024))


def _openai_batch(run: Run) -> None:
    for cid, m in run.manifests.items():
        pbid, job_id = m["provider_request_id"].split(":")
        assert pbid.startswith("batch_") and job_id == m["job_id"] == run.sent[cid]["input"]["custom_id"]


@dataclass(frozen=True)
class Provider:
    # output (width, height) of each accepted line, by custom_id
    sizes: dict[str, tuple[int, int]]
    # refused lines: custom_id -> (the field named, the whole message)
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)
    # fields merged into canonical lines, by custom_id, and lines appended to the batch
    override: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: list[dict[str, Any]] = field(default_factory=list)
    # what else the provider's run must show
    check: Callable[[Run], None] | None = None
    # the provider's request id is the one the sandbox logged (False: the client makes one up, or it names a line
    # of a provider batch)
    sandbox_id: bool = True


TRANSPARENT = {"custom_id": "transparent", "prompt": "cut out", "images": ["mug.png"], "background": "transparent"}
PROVIDERS: dict[str, Provider] = {
    "fal": Provider(sizes={"masked": (816, 816), "three-refs": (816, 816), "two-images": (992, 672),
                           "jpeg": (816, 816)}, check=_fal),  # auto: the input fitted
    "modelrunner": Provider(sizes={"masked": (512, 512), "three-refs": (512, 512), "two-images": (768, 512),
                                   "jpeg": (512, 512)}, check=_modelrunner),
    "wavespeed": Provider(
        sizes={"three-refs": (1024, 1024), "jpeg": (1024, 1024)},
        refused={"masked": ("mask", "wavespeed: mask is not supported by openai/gpt-image-2/edit on WaveSpeed (no "
                                    "mask field is documented; the edit would repaint the whole image); allowed "
                                    "values: no mask"),
                 "two-images": ("num_images", "wavespeed: num_images=2 is not allowed; allowed values: 1")},
        check=_wavespeed),
    "replicate": Provider(
        sizes={"three-refs": (1536, 1024), "jpeg": (768, 512), "webp": (1024, 1024)},
        refused={"masked": ("mask", "replicate: mask is not supported: openai/gpt-image-2 on Replicate has no mask "
                                    "input; remove the mask or route the job to a provider that accepts masks "
                                    "(e.g. fal)"),
                 "two-images": ("num_images", "replicate: num_images=2 is not allowed; allowed values: 1")},
        override={"three-refs": {"size": "1536x1024"}, "jpeg": {"images": ["sneaker.jpg"]}},
        extra=[{"custom_id": "webp", "prompt": PROMPT, "images": ["bottle.png"], "size": "1024x1024",
                "output_format": "webp", "background": "opaque"}],
        check=_replicate),
    "openai": Provider(
        sizes={"masked": (512, 512), "three-refs": (512, 512), "two-images": (768, 512), "jpeg": (512, 512)},
        refused={"transparent": ("background", "openai: background=transparent is not allowed for gpt-image-2 "
                                               "(OpenAI rejected it at launch and lists it only as a preview since "
                                               "2026-08); allowed values: auto, opaque")},
        extra=[TRANSPARENT], check=_openai),
    "oxen": Provider(
        sizes={"masked": (1024, 1024), "three-refs": (1024, 1024), "jpeg": (1024, 1024)},  # aspect auto, tier 1K
        refused={"two-images": ("num_images", "oxen: num_images=2 is not allowed; allowed values: 1"),
                 "sized": ("size", "oxen: size=1536x1024 is not allowed; allowed values: auto (Oxen's gpt-image-2 "
                                   "takes an aspect ratio and a 1K/2K/4K tier, not pixels; EDITQ_OXEN_SIZE_MAPPING=1 "
                                   "maps WxH sizes whose ratio is one of Oxen's)")},
        extra=[{"custom_id": "sized", "prompt": "sized", "images": ["mug.png"], "size": "1536x1024"}],
        check=_oxen, sandbox_id=False),
    "openai_batch": Provider(
        sizes={"masked": (512, 512), "three-refs": (512, 512), "two-images": (768, 512), "jpeg": (512, 512)},
        check=_openai_batch, sandbox_id=False),
}
HOOKED = [n for n in PROVIDERS if providers.spec_of(n).webhooks]
RUNS = [(n, "webhooks") for n in HOOKED] + [(n, "polling") for n in PROVIDERS]


def test_the_table_covers_every_registered_provider() -> None:
    assert sorted(PROVIDERS) == sorted(providers.REGISTRY)


TAG = unique("pc")


def marker(cid: str) -> str:
    """Appended to a line's prompt: finds its request in the sandbox's log even when the provider's request id is
    one the client made up (oxen), and keeps a rerun on the same Redis from matching an earlier run's jobs."""
    return f"[{TAG}:{cid}]"


def lines_of(name: str) -> list[dict[str, Any]]:
    p = PROVIDERS[name]
    lines = [{**row, **p.override.get(row["custom_id"], {})} for row in canonical_lines(name)]
    lines += [{**row, "provider": name, "quality": "low"} for row in p.extra]
    return [{**row, "prompt": f"{row['prompt']} {marker(row['custom_id'])}"} for row in lines]


# ---- the stacks: webhooks on (the safety-net poll out of reach) and off; each submits every provider's batch at
# once, recording the verified deliveries counted before it
CONCURRENCY = {"EDITQ_MODELRUNNER_CONCURRENCY": "8", "EDITQ_WAVESPEED_CONCURRENCY": "8"}
BATCH_POLLS = {"EDITQ_TICK_INTERVAL_S": "0.2", "EDITQ_OPENAI_BATCH_STATUS_TTL_S": "0.2"}


@pytest.fixture(scope="module")
def hooked() -> Iterator[LocalStack]:
    yield from start(True, {**WEBHOOKS_ONLY, **CONCURRENCY})


@pytest.fixture(scope="module")
def polled() -> Iterator[LocalStack]:
    yield from start(False, {**FAST_POLLS, **CONCURRENCY, **BATCH_POLLS})


Submitted = dict[str, tuple[BatchReport, float]]


def _submit_all(stack: LocalStack, names: list[str]) -> Submitted:
    with using(stack):
        before = {n: accepted_webhooks(stack, n) if stack.webhooks else 0.0 for n in names}
        return {n: (submit_batch(lines_of(n), base_dir=EXAMPLES), before[n]) for n in names}


@pytest.fixture(scope="module")
def webhooks_runs(hooked: LocalStack) -> Submitted:
    return _submit_all(hooked, HOOKED)


@pytest.fixture(scope="module")
def polling_runs(polled: LocalStack) -> Submitted:
    return _submit_all(polled, list(PROVIDERS))


@pytest.mark.parametrize(("name", "mode"), RUNS, ids=[f"{n}-{m}" for n, m in RUNS])
def test_canonical_batch(request: pytest.FixtureRequest, name: str, mode: str) -> None:
    stack: LocalStack = request.getfixturevalue("hooked" if mode == "webhooks" else "polled")
    report, accepted_before = request.getfixturevalue(f"{mode}_runs")[name]
    p, lines = PROVIDERS[name], lines_of(name)
    with using(stack):
        # refused at enqueue, naming the provider and the field, with the exact words
        line_of = {row["custom_id"]: i for i, row in enumerate(lines, 1)}
        assert {e.custom_id: (e.line, e.error) for e in report.invalid} == {
            cid: (line_of[cid], msg) for cid, (_, msg) in p.refused.items()}
        for fld, msg in p.refused.values():
            assert msg.startswith(f"{name}: {fld}")
        accepted = [row for row in lines if row["custom_id"] not in p.refused]
        assert report.enqueued == len(accepted) == len(report.job_ids)

        # every accepted line succeeds; outputs' sha256/bytes/size/format in S3 match the manifest
        assert wait(report.batch_id, timeout=90, interval=0.1)["counts"] == {"succeeded": len(accepted)}
        manifests = verify_batch(report.batch_id, report.job_ids, name)
        assert set(manifests) == set(p.sizes) == {row["custom_id"] for row in accepted}
        for row in accepted:
            m = manifests[row["custom_id"]]
            assert len(m["inputs"]) == len(row["images"]) and bool(m["mask"]) == ("mask" in row)
            assert {out["content_type"] for out in m["outputs"]} == {f"image/{row.get('output_format', 'png')}"}
        sizes = {cid: {(out["width"], out["height"]) for out in m["outputs"]} for cid, m in manifests.items()}
        assert sizes == {cid: {size} for cid, size in p.sizes.items()}

        # the key is in no manifest and no process log (the worker log has the task lines, ids only)
        key = stack.env[str(providers.spec_of(name).key_env)]
        assert key not in json.dumps(manifests), "the API key leaked into a manifest"
        assert "editq.dispatch" in stack.log("worker0")
        for proc in ("worker0", "sandbox", *(["webhooks"] if stack.webhooks else [])):
            assert key not in stack.log(proc), f"the API key leaked into the {proc} log"

        # one accepted provider request per job, and the sandbox saw exactly one request for each
        for m in manifests.values():
            assert [(r["attempt"], r["status"], r.get("request_id")) for r in m["provider_requests"]] == [
                (1, "accepted", m["provider_request_id"])]
        mine = [(next((cid for cid in manifests if marker(cid) in json.dumps(e["input"])), None), e)
                for e in sandbox_log(stack, name)]
        sent = {cid: e for cid, e in mine if cid}
        assert sorted(cid for cid, _ in mine if cid) == sorted(manifests), "one provider request per job"
        if p.sandbox_id:
            assert all(e["request_id"] == manifests[cid]["provider_request_id"] for cid, e in sent.items())

        # completions came by verified webhook deliveries, or by polling with no webhook URL anywhere
        if mode == "webhooks":
            base = stack.env["EDITQ_WEBHOOK_BASE_URL"]
            for e in sent.values():
                assert e["webhook_url"].startswith(f"{base}/webhooks/{name}?job=")
                assert e["webhook"]["delivered"] == 1
                answered = e["webhook"]["history"][-1]  # the sandbox notes when the receiver answered
                assert answered["status"] == 200 and answered["answered_at"] >= answered["at"]
            assert accepted_webhooks(stack, name) == accepted_before + len(accepted)
        else:
            assert "EDITQ_WEBHOOK_BASE_URL" not in stack.env
            assert all(e["webhook_url"] is None for e in sent.values())

        if p.check is not None:
            p.check(Run(stack, mode, manifests, sent))


# ---- the webhook receiver refuses forged, stale and replayed deliveries of a real job's completion (after the
# canonical batches: the sandbox loses every webhook meanwhile)
def _v1(secret: str, msg_id: str, ts: int, body: bytes) -> str:  # Standard Webhooks: base64 key, base64 MAC
    key = base64.b64decode(secret.removeprefix("whsec_"))
    return "v1," + base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()


def _v3(secret: str, msg_id: str, ts: int, body: bytes) -> str:  # WaveSpeed: the key's text, hex MAC
    key = secret.removeprefix("whsec_").encode()
    return "v3," + hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).hexdigest()


def _modelrunner_delivery(stack: LocalStack, rid: str) -> tuple[bytes, bytes, str] | None:
    auth = {"Authorization": "Key test"}
    resp = sandbox_request(stack, "GET", f"/modelrunner/requests/{rid}", headers=auth)
    if resp.status_code != 200:
        return None
    secret = sandbox_request(stack, "GET", "/modelrunner/webhooks/default/secret", headers=auth).json()["key"]
    body = json.dumps({"event": "completed", **resp.json()}).encode()
    return body, body.replace(b'"charged"', b'"partial"'), secret


def _wavespeed_delivery(stack: LocalStack, rid: str) -> tuple[bytes, bytes, str] | None:
    auth = {"Authorization": "Bearer test"}
    data = sandbox_request(stack, "GET", f"/wavespeed/api/v3/predictions/{rid}/result", headers=auth).json()["data"]
    if data["status"] != "completed":
        return None
    secret = sandbox_request(stack, "GET", "/wavespeed/api/v3/webhook/secret", headers=auth).json()["data"]["secret"]
    body = json.dumps(data).encode()
    return body, body.replace(b"completed", b"failed"), secret


# provider -> (the completed delivery's body, a tampered copy and the secret, once done upstream; the signer; a wrong
# secret; two delivery ids). Replicate's forgeries (more kinds, replay after acceptance) are in its own e2e file.
FORGERIES: dict[str, tuple[Callable[[LocalStack, str], tuple[bytes, bytes, str] | None],
                           Callable[[str, str, int, bytes], str], str, tuple[str, str]]] = {
    "modelrunner": (_modelrunner_delivery, _v1, "whsec_" + base64.b64encode(b"not-the-secret").decode(),
                    ("msg_1", "msg_2")),
    "wavespeed": (_wavespeed_delivery, _v3, "whsec_not-the-secret", ("m1", "m2")),
}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_receiver_refuses_forged_stale_and_replayed_deliveries(hooked: LocalStack, name: str) -> None:
    delivery, sign, wrong, ids = FORGERIES[name]
    with using(hooked), undelivered_job(hooked, canonical_lines(name)[3]) as (job_id, rid):
        body, tampered, secret = wait_for(lambda: delivery(hooked, rid), what="request completed at the provider")
        assert_receiver_refuses_forgeries(hooked, name, job_id, body, tampered, sign, secret, wrong, ids)
