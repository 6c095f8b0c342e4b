"""OpenAI Images API, synchronous `POST /v1/images/edits` (facts: shared/reference/provider-openai.md §1, §3-§5).

Protocol: one multipart request per job (`model`, `prompt`, `n`, `size`, `quality`, `background`,
`output_format`, repeated `image[]` file parts, optional `mask`), Bearer auth. The connection stays
open while the model works (up to ~170 s), and the answer carries the images inline
(`data[].b64_json`) plus token `usage`. There is no job id, no webhook, no polling and no cancel:
`x-request-id` (a response header) is the only id, and it is what editq records as request_id.

How it fits the pipeline: `synchronous = True`, so dispatch runs on the `sync` Celery queue, at most
`EDITQ_OPENAI_CONCURRENCY` requests at once, each claim leased for `timeout_s + sync_lease_margin_s`.
`submit` returns a `Submitted` whose `outcome` already holds the result.

Choices where the sources are silent (safe for the user's money and data):
* Inputs are read from S3 by key (not through presigned URLs, which may name a host only providers
  can reach) and checked against the sha256 recorded at enqueue before anything is sent.
* The mask's alpha channel is checked on its bytes before sending (a terminal error, nothing billed):
  OpenAI needs alpha (transparent = edit) and quotes no error text for a mask without it.
* A request that may have reached OpenAI but whose answer was lost (read timeout, dropped
  connection, 502/504 from a gateway) is `ProviderError(retryable, maybe_billed=True)`: the pipeline
  records an `uncertain` provider request, then retries. A connect error or connect/pool timeout
  means nothing was sent. A worker killed mid-request leaves the claim to expire; the tick then
  records the same `uncertain` entry (`Pipeline._recover_submitting`).
* If a worker dies after recording the answer but before storing it (the images only lived in its
  memory), `poll` reports the result as lost (retryable, billed) so the job is redone, never stuck.
* The SDK's own retries are not used (the task classifies errors itself): `insufficient_quota` is a
  429 that is terminal; `rate_limit_exceeded` is retried after `retry-after-ms`/`retry-after`, or the
  "try again in 240ms" of the message; moderation blocks are terminal.
* Cost is computed from `usage` with the token prices in settings (`EDITQ_OPENAI_PRICE_*`).
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar

import httpx
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from schemas.job import EditJob, InputRecord
from worker.errors import ErrorKind, ProviderError
from worker.providers.base import (
    InputUrls,
    Outcome,
    OutputRef,
    ProviderAdapter,
    ProviderRequest,
    ProviderSettings,
    Result,
    Submitted,
)
from worker.providers.common import json_or_text, lost_sync_answer, post_sync
from worker.providers.openai_common import (
    OpenAIPriceSettings,
    classify_error,
    edit_fields,
    mask_alpha_problem,
    multipart_form,
    usage_and_cost,
    validate_edit,
)

EDITS_PATH = "/images/edits"


class OpenAISettings(OpenAIPriceSettings):
    model_config = SettingsConfigDict(env_prefix="EDITQ_OPENAI_", extra="ignore", populate_by_name=True)

    api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("EDITQ_OPENAI_API_KEY", "OPENAI_API_KEY"))
    base_url: str = Field(
        "https://api.openai.com/v1", validation_alias=AliasChoices("EDITQ_OPENAI_BASE_URL", "OPENAI_BASE_URL")
    )
    organization: str | None = None  # OpenAI-Organization header
    project: str | None = None  # OpenAI-Project header
    concurrency: int = 4  # requests in flight at once (each holds a connection for up to minutes)
    webhooks: bool = False  # the synchronous API has none
    timeout_s: float = 300.0  # read timeout of one edit call (edits can take ~170 s)
    connect_timeout_s: float = 10.0


class OpenAIAdapter(ProviderAdapter):
    name: ClassVar[str] = "openai"
    settings_cls: ClassVar[type[ProviderSettings]] = OpenAISettings
    synchronous: ClassVar[bool] = True
    supports_webhooks: ClassVar[bool] = False
    settings: OpenAISettings

    # ---- pure ---------------------------------------------------------------------------------
    def validate(self, job: EditJob) -> list[str]:
        return validate_edit(job, self.name)

    def build_request(self, job: EditJob, inputs: InputUrls, webhook_url: str | None) -> ProviderRequest:
        """The multipart form fields; `submit` adds the file parts (`image[]` x N, `mask`) from storage."""
        data, _ = multipart_form(edit_fields(job), [], None)
        headers: dict[str, str] = {}
        if self.settings.organization:
            headers["OpenAI-Organization"] = self.settings.organization
        if self.settings.project:
            headers["OpenAI-Project"] = self.settings.project
        return ProviderRequest("POST", EDITS_PATH, data=data, headers=headers)

    def result_from_response(self, body: dict[str, Any], request_id: str) -> Result:
        """An `ImagesResponse` -> Result (b64 outputs, usage with a token-priced cost)."""
        fmt = str(body.get("output_format") or "png")
        outputs = [
            OutputRef(b64=item["b64_json"], content_type=f"image/{fmt}")
            for item in body.get("data") or []
            if isinstance(item, dict) and item.get("b64_json")
        ]
        raw = {k: v for k, v in body.items() if k != "data"}
        raw["request_id"] = request_id
        return Result(outputs=outputs, usage=usage_and_cost(body.get("usage"), self.settings.token_prices()), raw=raw)

    # ---- I/O ------------------------------------------------------------------------------------
    async def submit(self, http: httpx.AsyncClient, job: EditJob, req: ProviderRequest) -> Submitted:
        images = await self.load_inputs(job.inputs)
        mask = (await self.load_inputs([job.mask_input]))[0] if job.mask_input else None
        if mask is not None and (problem := mask_alpha_problem(mask, self.name)):
            raise ProviderError(ErrorKind.terminal, problem, provider_code="invalid_mask")
        _, files = multipart_form({}, [(blob, rec.format) for blob, rec in zip(images, job.inputs, strict=True)], mask)
        url = self.settings.base_url.rstrip("/") + req.path
        resp = await post_sync(
            http, self.name, url, timeout_s=self.settings.timeout_s, connect_timeout_s=self.settings.connect_timeout_s,
            data=req.data, files=files, headers={**self.auth_headers(), **req.headers},
        )
        request_id = resp.headers.get("x-request-id") or f"local-{uuid.uuid4()}"
        if resp.status_code >= 300:
            raise self.error(resp, request_id)
        try:
            body = resp.json()
        except ValueError:
            raise ProviderError(
                ErrorKind.retryable, f"openai edit: HTTP {resp.status_code} with a body that is not JSON "
                f"(x-request-id {request_id}); it was probably billed", status_code=resp.status_code,
                maybe_billed=True,
            ) from None
        result = self.result_from_response(body, request_id)
        handle = {"sync": True, "created": body.get("created")}
        return Submitted(request_id=request_id, handle=handle, outcome=Outcome(done=True, result=result))

    async def poll(self, http: httpx.AsyncClient, request_id: str, handle: dict[str, Any]) -> Outcome:
        """Only reached when a worker died between recording the answer and handing it on."""
        return lost_sync_answer(self.name, request_id)

    async def load_inputs(self, records: Sequence[InputRecord | None]) -> list[bytes]:
        """Input bytes from our own S3 (by key), each checked against the sha256 taken at enqueue."""
        from worker.storage import get_storage

        storage = get_storage()

        async def one(rec: InputRecord) -> bytes:
            try:
                blob = await asyncio.to_thread(storage.get_bytes, rec.s3_key)
            except Exception as exc:  # boto raises several types
                raise ProviderError(
                    ErrorKind.retryable, f"openai: could not read input {rec.s3_key} from storage "
                    f"({type(exc).__name__})"
                ) from None
            if hashlib.sha256(blob).hexdigest() != rec.sha256:
                raise ProviderError(ErrorKind.terminal, f"openai: input {rec.s3_key} does not match its sha256")
            return blob

        return list(await asyncio.gather(*(one(r) for r in records if r is not None)))

    def error(self, resp: httpx.Response, request_id: str) -> ProviderError:
        err = classify_error(resp.status_code, json_or_text(resp), resp.headers, provider=self.name,
                             secrets=[self.secret_key()])
        err.reason = f"{err.reason} (x-request-id {request_id})"[:2000]
        return err
