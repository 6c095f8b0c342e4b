"""OpenAI Images API, synchronous `POST /v1/images/edits` (facts: shared/reference/provider-openai.md §1, §3-§5).

Protocol: one multipart request per job (`model`, `prompt`, `n`, `size`, `quality`, `background`,
`output_format`, repeated `image[]` file parts, optional `mask`), Bearer auth. The connection stays
open while the model works (up to ~170 s), and the answer carries the images inline
(`data[].b64_json`) plus token `usage`. There is no job id, no webhook, no polling and no cancel:
`x-request-id` (a response header) is the only id, and it is what editq records as request_id.

How it fits the pipeline: the spec is `synchronous`, so dispatch runs on the `sync` Celery queue, at most
`EDITQ_OPENAI_CONCURRENCY` requests at once, each claim leased for `timeout_s + sync_lease_margin_s`.
`submit` returns a `Submitted` whose `outcome` already holds the result. Transport failures are mapped by
the client (not sent / may have been billed) and secrets are redacted centrally.

Inputs are bytes (multipart), read by an `InputReader` the protocol is given (the engine's, reading our
own S3 by key and checking each sha256: worker/provider_inputs.py); the protocol itself does no storage I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from editq.providers import types as pt
from editq.providers.masks import mask_alpha_problem
from editq.providers.openai import OpenAISettings
from editq.providers.openai.common import (
    answer_error,
    edit_fields,
    multipart_form,
    usage_and_cost,
    validate_edit,
)
from editq.providers.protocol import ProviderProtocol, engine_service
from editq.providers.signatures import lost_sync_answer
from editq.providers.spec import ProviderSettings
from editq.schemas.job import EditJob, InputRecord
from editq.worker.errors import ErrorKind, ProviderError

if TYPE_CHECKING:
    from editq.worker.provider_client import ProviderClient

NAME = "openai"
EDITS_PATH = "/images/edits"
# the engine's reader (our S3 by key, sha256-checked); named, not imported: the protocol stays free of storage
ENGINE_INPUTS = "editq.worker.provider_inputs:StorageInputs"


class InputReader(Protocol):
    """Reads the bytes of a job's inputs, in order, each checked against the sha256 taken at enqueue.
    Raises ProviderError (retryable when storage failed, terminal when the bytes do not match)."""

    async def read(self, records: Sequence[InputRecord]) -> list[bytes]: ...


# ---- pure translation and parsing ----------------------------------------------------------------------
def org_headers(settings: OpenAISettings) -> dict[str, str]:
    headers: dict[str, str] = {}
    if settings.organization:
        headers["OpenAI-Organization"] = settings.organization
    if settings.project:
        headers["OpenAI-Project"] = settings.project
    return headers


def edit_request(req: pt.ProviderRequest, job: EditJob, images: Sequence[bytes], mask: bytes | None,
                 settings: OpenAISettings) -> pt.ProviderRequest:
    """The request `build_request` made, with the file parts (`image[]` x N, `mask`) added and the
    timeouts of a call that holds the connection for the whole edit."""
    _, files = multipart_form({}, [(blob, rec.format) for blob, rec in zip(images, job.inputs, strict=True)], mask)
    return pt.ProviderRequest("POST", req.url, data=req.data, headers=dict(req.headers), files=files,
                           timeout_s=settings.timeout_s, connect_timeout_s=settings.connect_timeout_s, what="edit")


def result_from_response(body: dict[str, Any], request_id: str, settings: OpenAISettings) -> pt.Result:
    """An `ImagesResponse` -> Result (b64 outputs, usage with a token-priced cost)."""
    fmt = str(body.get("output_format") or "png")
    data = body.get("data") or []
    if not isinstance(data, list):
        raise pt.malformed(NAME, "edit", f"data is not a list (x-request-id {request_id})", maybe_billed=True)
    outputs = [
        pt.OutputRef(b64=item["b64_json"], content_type=f"image/{fmt}")
        for item in data
        if isinstance(item, dict) and item.get("b64_json")
    ]
    usage = body.get("usage")
    raw = {k: v for k, v in body.items() if k != "data"}
    raw["request_id"] = request_id
    return pt.Result(outputs=outputs, usage=usage_and_cost(usage if isinstance(usage, dict) else None,
                                                        settings.token_prices()), raw=raw)


def parse_edit(answer: pt.Answer, settings: OpenAISettings) -> pt.Submitted:
    """The edit's answer -> a Submitted carrying its outcome, or the classified error."""
    request_id = answer.headers.get("x-request-id") or f"local-{uuid.uuid4()}"
    if not answer.ok:
        err = answer_error(answer, NAME, "edit")
        err.reason = f"{err.reason} (x-request-id {request_id})"[:2000]
        raise err
    body = answer.json
    if not isinstance(body, dict):
        raise ProviderError(
            ErrorKind.retryable, f"openai edit: HTTP {answer.status} with a body that is not JSON "
            f"(x-request-id {request_id}); it was probably billed", status_code=answer.status,
            maybe_billed=True,
        )
    result = result_from_response(body, request_id, settings)
    return pt.Submitted(request_id=request_id, handle={"sync": True, "created": body.get("created")},
                     outcome=pt.Outcome.succeeded(result))


# ---- the protocol ----------------------------------------------------------------------------------------
class OpenAIProtocol(ProviderProtocol):
    name: ClassVar[str] = NAME
    settings_cls: ClassVar[type[ProviderSettings]] = OpenAISettings
    settings: OpenAISettings

    def __init__(self, settings: ProviderSettings | None = None, *, inputs: InputReader | None = None) -> None:
        super().__init__(settings)
        self._inputs = inputs

    @property
    def inputs(self) -> InputReader:
        if self._inputs is None:
            self._inputs = engine_service(ENGINE_INPUTS, NAME)
        return self._inputs

    @inputs.setter
    def inputs(self, reader: InputReader) -> None:
        self._inputs = reader

    def validate(self, job: EditJob) -> list[str]:
        return validate_edit(job, NAME)

    def build_request(self, job: EditJob, inputs: pt.InputUrls, webhook_url: str | None) -> pt.ProviderRequest:
        """The multipart form fields; `submit` adds the file parts (`image[]` x N, `mask`) read from storage."""
        data, _ = multipart_form(edit_fields(job), [], None)
        return pt.ProviderRequest("POST", EDITS_PATH, data=data, headers=org_headers(self.settings),
                               timeout_s=self.settings.timeout_s, connect_timeout_s=self.settings.connect_timeout_s,
                               what="edit")

    async def submit(self, client: ProviderClient, job: EditJob, req: pt.ProviderRequest) -> pt.Submitted:
        records = list(job.inputs) + ([job.mask_input] if job.mask_input is not None else [])
        blobs = await self.inputs.read(records)
        images, mask = blobs[:len(job.inputs)], (blobs[len(job.inputs)] if job.mask_input is not None else None)
        if mask is not None and (problem := mask_alpha_problem(mask, NAME)):
            raise ProviderError(ErrorKind.terminal, problem, provider_code="invalid_mask")
        return parse_edit(await client.send(edit_request(req, job, images, mask, self.settings)), self.settings)

    async def poll(self, client: ProviderClient, request_id: str, handle: dict[str, Any]) -> pt.Outcome:
        """Only reached when a worker died between recording the answer and handing it on."""
        return lost_sync_answer(NAME, request_id)
