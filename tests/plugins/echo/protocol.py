"""echo's protocol: `POST /jobs` -> `{"id"}`, `GET /jobs/{id}` -> `{"status", "images", "error"}`,
`POST /jobs/{id}/cancel`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from editq.providers.protocol import ProviderProtocol
from editq.providers.spec import ProviderSettings
from editq.providers.types import Answer, InputUrls, Outcome, OutputRef, ProviderRequest, Result, Submitted, malformed
from editq.schemas.job import EditJob
from editq.worker.errors import ErrorKind, ProviderError
from tests.plugins.echo import EchoSettings

if TYPE_CHECKING:
    from editq.worker.provider_client import ProviderClient

NAME = "echo"


def parse_status(answer: Answer) -> Outcome:
    if not answer.ok:
        raise answer.error(NAME, "status")
    data = answer.obj
    status = data.get("status")
    if status in ("queued", "running"):
        return Outcome.running(status=status)
    if status == "done":
        return Outcome.succeeded(Result(outputs=[OutputRef(url=u) for u in data.get("images", [])]))
    if status == "failed":
        return Outcome.failed(ProviderError(ErrorKind.terminal, f"echo: {data.get('error')}"))
    raise malformed(NAME, "status", f"status {status!r}")


class EchoProtocol(ProviderProtocol):
    name: ClassVar[str] = NAME
    settings_cls: ClassVar[type[ProviderSettings]] = EchoSettings

    def validate(self, job: EditJob) -> list[str]:
        return [f"echo: num_images={job.num_images} is not allowed; allowed values: 1"] if job.num_images != 1 else []

    def build_request(self, job: EditJob, inputs: InputUrls, webhook_url: str | None) -> ProviderRequest:
        return ProviderRequest("POST", "/jobs", json={"prompt": job.prompt, "images": inputs.images,
                                                       "format": job.output_format.value}, what="submit")

    async def submit(self, client: ProviderClient, job: EditJob, req: ProviderRequest) -> Submitted:
        answer = await client.send(req)
        if not answer.ok:
            raise answer.error(NAME, "submit")
        rid = answer.obj.get("id")
        if not isinstance(rid, str):
            raise malformed(NAME, "submit", answer.text[:200], maybe_billed=True)
        return Submitted(request_id=rid, handle={})

    async def poll(self, client: ProviderClient, request_id: str, handle: dict[str, Any]) -> Outcome:
        return parse_status(await client.send(ProviderRequest("GET", f"/jobs/{request_id}", what="status")))

    async def cancel(self, client: ProviderClient, request_id: str, handle: dict[str, Any]) -> None:
        try:
            await client.send(ProviderRequest("POST", f"/jobs/{request_id}/cancel", what="cancel"))
        except ProviderError:
            return None
