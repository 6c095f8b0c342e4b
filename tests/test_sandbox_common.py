"""Shared emulator mechanics in sandbox/providers/common.py without a server."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from editq.sandbox.providers.common import look_up
from editq.sandbox.runner import Job, JobOutcome


async def _work(job: Job) -> JobOutcome:
    return JobOutcome(True, 200, None)


def _request(authorization: str | None) -> Request:
    headers = [(b"authorization", authorization.encode())] if authorization is not None else []
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers, "query_string": b""})


def _unauthorized(request: Request) -> JSONResponse | None:
    return None if request.headers.get("authorization") == "Key k" else JSONResponse({"a": 1}, status_code=401)


def test_look_up_checks_authorization_before_looking_the_job_up() -> None:
    job = Job(provider="p", request_id="r", model="m", work=_work)
    looked: list[str] = []

    def find() -> Job | None:
        looked.append("find")
        return job

    def not_found() -> JSONResponse:
        return JSONResponse({"missing": True}, status_code=404)

    denied = look_up(_request(None), _unauthorized, find, not_found)
    assert isinstance(denied, JSONResponse) and denied.status_code == 401 and looked == []
    assert look_up(_request("Key k"), _unauthorized, find, not_found) is job and looked == ["find"]
    missing = look_up(_request("Key k"), _unauthorized, lambda: None, not_found)
    assert isinstance(missing, JSONResponse) and (missing.status_code, missing.body) == (404, b'{"missing":true}')

