"""Helpers for provider end-to-end tests: the canonical batch, stacks with webhooks on or off."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
from PIL import Image

from editq.producer.api import status, submit_batch, wait
from editq.producer.stack import LocalStack, scoped_env
from editq.worker.webhook_auth import delivery_url
from tests import sandbox_proc

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PROMPT = "Place this product on a rustic oak table in soft morning light."
# the canonical batch of issue 4: a masked edit, three reference images, num_images=2, jpeg output
CANONICAL: list[dict[str, Any]] = [
    {"custom_id": "masked", "prompt": "Redesign only the label.", "images": ["mug.png"], "mask": "mask_mug.png"},
    {"custom_id": "three-refs", "prompt": "Arrange the three products in one flat-lay.",
     "images": ["mug.png", "bottle.png", "backpack.png"]},
    {"custom_id": "two-images", "prompt": PROMPT, "images": ["sneaker.jpg"], "num_images": 2},
    {"custom_id": "jpeg", "prompt": PROMPT, "images": ["bottle.png"], "output_format": "jpeg"},
]

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout: float = 60.0, what: str = "condition") -> T:
    return sandbox_proc.wait_for(check, timeout, what, interval=0.05)


def start(webhooks: bool, extra: dict[str, str], seed: int = 5, *, sandbox_opts: dict[str, Any] | None = None,
          keep_env: bool = False, **stack_opts: Any) -> Iterator[LocalStack]:
    """A stack whose child processes see `extra`; this process's environment is restored afterwards.

    `sandbox_opts` replaces the default sandbox settings (`seed` is then ignored), `stack_opts` go to LocalStack
    (default `worker_concurrency=8`). `keep_env`: `extra` becomes part of `stack.env`, so workers started later
    and this process inside `using(stack)` see it too."""
    opts = {"latency_s": 0.1, "jitter_s": 0.05, "concurrency": 8, "seed": seed} if sandbox_opts is None \
        else sandbox_opts
    stack = LocalStack(sandbox_opts=opts, webhooks=webhooks, **{"worker_concurrency": 8, **stack_opts})
    with scoped_env():  # afterwards, back to what it was before this stack
        with scoped_env(extra):
            if not webhooks:
                os.environ.pop("EDITQ_WEBHOOK_BASE_URL", None)
            stack.__enter__()
        if keep_env:
            stack.env.update(extra)
        try:
            yield stack
        finally:
            stack.__exit__(None, None, None)  # restores the environment it saw at start, `extra` included


@contextmanager
def using(stack: LocalStack) -> Iterator[LocalStack]:
    """This process configured like `stack` (and, for a stack without webhooks, with no webhook URL)."""
    with scoped_env():
        if not stack.webhooks:
            os.environ.pop("EDITQ_WEBHOOK_BASE_URL", None)
        stack.apply_env()
        yield stack


# the webhook-mode safety-net poll out of a test's reach: completions can only come by webhook
WEBHOOKS_ONLY = {"EDITQ_POLL_INTERVAL_WEBHOOK_S": "600"}
FAST_POLLS = {"EDITQ_POLL_INTERVAL_S": "0.2", "EDITQ_POLL_MAX_S": "0.5"}


def sandbox_request(stack: LocalStack, method: str, path: str, **kw: Any) -> httpx.Response:
    """A request to the running sandbox (its control API or a provider's routes)."""
    return httpx.request(method, stack.env["EDITQ_SANDBOX_URL"] + path, timeout=15, **kw)


def configure_sandbox(stack: LocalStack, patch: dict[str, Any]) -> None:
    """PATCH the running sandbox's config (fault rates, latency...)."""
    httpx.patch(f"{stack.env['EDITQ_SANDBOX_URL']}/_sandbox/config", json=patch, timeout=10).raise_for_status()


def sandbox_log(stack: LocalStack, provider: str) -> list[dict[str, Any]]:
    resp = httpx.get(stack.env["EDITQ_SANDBOX_URL"] + "/_sandbox/requests", params={"provider": provider}, timeout=15)
    return list(resp.json()["requests"])


def accepted_webhooks(stack: LocalStack, provider: str) -> float:
    metrics = httpx.get(stack.env["EDITQ_WEBHOOK_BASE_URL"] + "/metrics", timeout=10).text
    found = re.search(rf'editq_webhook_deliveries_total\{{outcome="accepted",provider="{provider}"\}} (\S+)', metrics)
    return float(found.group(1)) if found else 0.0


def read_manifests(batch_id: str) -> list[dict[str, Any]]:
    """The batch manifest's entries, in its order."""
    from editq.worker.storage import get_storage

    storage = get_storage()
    raw = storage.get_bytes(storage.batch_manifest_key(batch_id)).decode()
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def manifests_by_cid(batch_id: str) -> dict[str, dict[str, Any]]:
    return {m["custom_id"]: m for m in read_manifests(batch_id)}


def verify_batch(batch_id: str, job_ids: list[str], provider: str) -> dict[str, dict[str, Any]]:
    """Every output's sha256 in the batch manifest matches the bytes in S3; returns manifests by custom_id."""
    from editq.worker.storage import get_storage

    storage = get_storage()
    manifests = manifests_by_cid(batch_id)
    assert sorted(m["job_id"] for m in manifests.values()) == sorted(job_ids)
    for m in manifests.values():
        assert m["state"] == "succeeded" and m["provider"] == provider and m["provider_request_id"]
        # what it cost, and whether the provider said so or editq's price model did (issue 11: every provider)
        assert m["cost_usd"] and m["cost_usd"] > 0 and m["cost_source"] in ("provider", "estimate"), m
        assert len(m["outputs"]) == m["job"].get("num_images", 1)
        for out in m["outputs"]:
            body = storage.get_bytes(out["key"])
            assert hashlib.sha256(body).hexdigest() == out["sha256"] and len(body) == out["bytes"]
            with Image.open(io.BytesIO(body)) as im:
                assert (im.width, im.height) == (out["width"], out["height"])
                assert (im.format or "").lower() == out["content_type"].split("/")[1]
    return manifests


def assert_mask_respected(output_key: str, *, size: tuple[int, int] | None = None, same_size: bool = False) -> None:
    """Every pixel outside the canonical mask's transparent area is unchanged; most inside changed.

    `size`: the output is the source scaled to it (the mask scaled by nearest neighbour, the source by Lanczos);
    `same_size`: also assert that the output has the source's size."""
    from editq.worker.storage import get_storage

    out = Image.open(io.BytesIO(get_storage().get_bytes(output_key))).convert("RGB")
    src = Image.open(EXAMPLES / "mug.png").convert("RGB")
    mask = Image.open(EXAMPLES / "mask_mug.png").convert("RGBA").getchannel("A")
    if size is not None:
        src = src.resize(size, Image.Resampling.LANCZOS)
        mask = mask.resize(size, Image.Resampling.NEAREST)
    if same_size:
        assert out.size == src.size
    alpha = mask.tobytes()
    a, b = src.tobytes(), out.tobytes()
    kept = [i for i, v in enumerate(alpha) if v != 0]
    edit = [i for i, v in enumerate(alpha) if v == 0]
    assert kept and edit
    assert all(a[3 * i : 3 * i + 3] == b[3 * i : 3 * i + 3] for i in kept)
    assert sum(a[3 * i : 3 * i + 3] != b[3 * i : 3 * i + 3] for i in edit) > len(edit) // 2


def canonical_lines(provider: str) -> list[dict[str, Any]]:
    """The canonical batch for `provider`, at quality low."""
    return [{**row, "provider": provider, "quality": "low"} for row in CANONICAL]


def copy_examples(dest: Path, names: tuple[str, ...] = ("mug.png", "mask_mug.png", "bottle.png", "backpack.png")) \
        -> None:
    for name in names:
        shutil.copyfile(EXAMPLES / name, dest / name)


@contextmanager
def undelivered_job(stack: LocalStack, line: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """One job of `line` (its prompt made unique) with the sandbox losing every webhook: (job id, request id)."""
    assert sandbox_request(stack, "PATCH", "/_sandbox/config", json={"webhook_lost_rate": 1.0}).status_code == 200
    try:
        report = submit_batch([{**line, "prompt": f"{PROMPT} ({time.time_ns()})"}], base_dir=EXAMPLES)
        (job_id,) = report.job_ids
        yield job_id, wait_for(lambda: status(job_id)["request_id"], what="request id")
    finally:
        sandbox_request(stack, "PATCH", "/_sandbox/config", json={"webhook_lost_rate": 0.0})


def assert_receiver_refuses_forgeries(stack: LocalStack, provider: str, job_id: str, body: bytes, tampered: bytes,
                                      sign: Callable[[str, str, int, bytes], str], secret: str, wrong_secret: str,
                                      ids: tuple[str, str]) -> None:
    """Standard Webhooks deliveries of `body` for a submitted job: tampered, wrongly keyed, stale and replayed ones
    are refused without touching the job, then a valid one is accepted once (a second time: duplicate)."""
    url = delivery_url(stack.env["EDITQ_WEBHOOK_BASE_URL"], provider, job_id)

    def post(msg_id: str, ts: int, sig: str, raw: bytes = body) -> httpx.Response:
        headers = {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig,
                   "content-type": "application/json"}
        return httpx.post(url, content=raw, headers=headers, timeout=15)

    first, second = ids
    before = status(job_id)
    assert before["state"] == "submitted"
    now = int(time.time())
    old = now - 400
    forged = [
        post(first, now, sign(secret, first, now, body), tampered),  # tampered
        post(first, now, sign(wrong_secret, first, now, body)),  # wrong key
        post(first, old, sign(secret, first, old, body)),  # stale (validly signed 400 s ago)
        post(first, now, sign(secret, first, old, body)),  # that delivery replayed with a fresh timestamp
    ]
    assert [r.status_code for r in forged] == [401, 401, 401, 401]
    assert [r.json()["error"] for r in forged] == [
        "rejected: signature does not match", "rejected: signature does not match",
        "rejected: timestamp outside tolerance", "rejected: signature does not match",
    ]
    after = status(job_id)
    assert (after["state"], after["history"]) == ("submitted", before["history"])

    valid = post(second, now, sign(secret, second, now, body))
    assert (valid.status_code, valid.json()) == (200, {"status": "accepted"})
    again = post(second, now, sign(secret, second, now, body))
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
    final = wait(job_id, timeout=30, interval=0.1)
    assert final["state"] == "succeeded" and len(final["outputs"]) == 1
    assert [h["state"] for h in final["history"]].count("ready") == 1
