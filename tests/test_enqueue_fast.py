"""The enqueue's shortcuts give what the long way gives (session 12, docs/benchmarks.md section 11d): the job
built from a validated request without validating it again (`job_of`) is the job `EditJob(...)` validates from the
same parts; a price model's memo gives the estimate computed afresh; a route is refused on every line that has it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from editq import providers as registry
from editq.producer.api import Enqueuer, job_of
from editq.providers.pricing import TablePrices
from editq.schemas.job import EditJob, InputRecord, JobRequest

REQUESTS: list[dict[str, Any]] = [
    {"prompt": "p", "images": ["a.png"]},
    {"prompt": "  padded ", "images": [" a.png ", "https://example.com/b.png?x=1"], "custom_id": "sku",
     "size": "1024x1536", "quality": "high", "num_images": 3, "output_format": "webp", "background": "opaque",
     "priority": "interactive", "provider": "fal, replicate", "tenant": "acme", "group": "g", "variant": "A",
     "parent_job_id": "job_x", "metadata": {"a": [1, {"b": None}], "c": "d"}, "idempotency_key": "mine"},
    {"prompt": "p", "images": ["data:image/png;base64,iVBORw0KGgo=", "s3://bucket/k.png"],
     "mask": "data:image/png;base64,iVBORw0KGgo="},
    {"prompt": "p", "images": ["a.png"], "mask": "m.png"},
]


def _rec(i: int) -> InputRecord:
    return InputRecord(ref=f"r{i}", sha256=f"{i:064x}", bytes=10 + i, format="png", width=64, height=64,
                       s3_key=f"inputs/{i:064x}.png")


def _stored(ref: str, rec: InputRecord) -> str:
    return f"s3://editq/{rec.s3_key}" if ref.startswith("data:") else ref


@pytest.mark.parametrize("data", REQUESTS)
def test_job_of_is_the_validated_job(data: dict[str, Any]) -> None:
    req = JobRequest.model_validate(data)
    inputs = [_rec(i) for i in range(len(req.images))]
    mask = _rec(99) if req.mask else None
    job = job_of(req, "batch_1", inputs, mask, "key", _stored)
    # the long way (what Enqueuer.prepared did up to session 12)
    fields = req.model_dump(exclude={"idempotency_key"})
    fields["images"] = [_stored(ref, rec) for ref, rec in zip(req.images, inputs, strict=True)]
    if req.mask and mask is not None:
        fields["mask"] = _stored(req.mask, mask)
    slow = EditJob(**fields, job_id=job.job_id, batch_id="batch_1", inputs=inputs, mask_input=mask,
                   idempotency_key="key")
    assert job.model_fields_set == slow.model_fields_set
    assert abs(job.created_at - slow.created_at) < 5
    slow.__dict__["created_at"] = job.created_at
    assert job == slow
    assert list(job.__dict__) == list(slow.__dict__)
    assert job.model_dump() == slow.model_dump()
    assert job.model_dump_json(exclude_none=True) == slow.model_dump_json(exclude_none=True)  # the stored spec
    assert EditJob.model_validate_json(job.model_dump_json()) == job  # and it reads back as the worker reads it
    assert job.job_id.startswith("job_") and len(job.job_id) > 14
    assert job.metadata == req.metadata and job.metadata is not req.metadata


def test_job_has_nothing_job_of_would_skip() -> None:
    assert EditJob.__pydantic_post_init__ is None
    assert not EditJob.__private_attributes__
    assert EditJob.model_config.get("extra") == "forbid"
    assert all(f.alias is None and f.validation_alias is None for f in EditJob.model_fields.values())


def test_ids_differ() -> None:
    from editq.producer.api import new_id

    ids = {new_id("job") for _ in range(10_000)}
    assert len(ids) == 10_000 and all(i.startswith("job_") for i in ids)


def test_price_memo_gives_the_fresh_estimate() -> None:
    shared = registry.price_model_of("fal")
    assert isinstance(shared, TablePrices)
    jobs = []
    for size in ("auto", "1024x1024", "1024x1536", "2048x2048"):
        for quality in ("low", "high", "auto"):
            for prompt in ("p", "p" * 1000, "q"):
                for n, images in ((1, 1), (4, 1), (1, 3)):
                    req = JobRequest(prompt=prompt, images=["a.png"] * images, size=size, quality=quality,
                                     num_images=n)
                    jobs.append(job_of(req, "b", [_rec(i) for i in range(images)], None, "k", _stored))
    for job in jobs + jobs[::-1]:  # each job asked twice, the second time from the memo
        fresh = TablePrices(table=shared.table, text_in_per_m=shared.text_in_per_m,
                            image_in_per_m=shared.image_in_per_m, input_image_tokens=shared.input_image_tokens,
                            multiplier=shared.multiplier)  # (an empty memo)
        assert shared.estimate(job) == fresh.estimate(job)
    assert len({shared.estimate(j) for j in jobs}) > 40  # the memo's key tells them apart


def test_an_unknown_route_is_refused_on_every_line(tmp_path: Path) -> None:
    enq = Enqueuer("b", tmp_path, dry=True)
    for _ in range(3):
        with pytest.raises(ValueError, match="provider: unknown provider 'nope'"):
            enq._routed(JobRequest(prompt="p", images=["a.png"], provider="fal,nope"))
    req = JobRequest(prompt="p", images=["a.png"], provider="fal,replicate")
    assert enq._routed(req) is req and enq._routed(req) is req
