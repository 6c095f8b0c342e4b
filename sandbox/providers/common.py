"""Logic the provider emulators share where the real APIs behave the same way.

Only mechanics live here (reading the Authorization header, rolling the submit-time faults, downloading a job's
inputs, ids, timestamps, URLs); every provider still builds its own error bodies and status codes from the
results, because the real APIs differ there.
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Literal, TypeVar, overload

from fastapi import Request, Response

from editq.sandbox.config import SandboxConfig
from editq.sandbox.inputs import InputError, fetch_image
from editq.sandbox.runner import PRIORITY_LOW, PRIORITY_NORMAL, Job
from editq.sandbox.state import SandboxState

# ---- auth ------------------------------------------------------------------------------------------------------
KEY_AUTH = re.compile(r"^Key\s+\S+", re.IGNORECASE)  # fal, ModelRunner
BEARER_AUTH = re.compile(r"^Bearer\s+\S+", re.IGNORECASE)  # WaveSpeed


def authorization_matches(request: Request, pattern: re.Pattern[str]) -> bool:
    """Whether the Authorization header has the form ``pattern`` describes (any key is accepted)."""
    return pattern.match(request.headers.get("authorization", "")) is not None


def bearer_key(request: Request) -> str | None:
    """The key of ``Authorization: Bearer <key>`` (scheme case-insensitive, key stripped), or None."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    return key


# ---- the checks every queue API's submit starts with ---------------------------------------------------------------
async def admit(state: SandboxState, provider: str, request: Request,
                unauthorized: Callable[[Request], Response | None],
                answers: Mapping[Fault, Callable[[], Response]]) -> Response | None:
    """Authorization first (a refusal is logged as `auth`), then the submit-time faults in `answers`' order,
    each answered in the provider's own shape. None: the request is admitted."""
    denied = unauthorized(request)
    if denied is not None:
        state.runner.reject(provider, "auth")
        return denied
    fault = await submit_fault(state, provider, tuple(answers))
    return answers[fault]() if fault is not None else None


# ---- the checks every route about one job starts with (status, result, cancel) -------------------------------------
Answer = TypeVar("Answer", bound=Response)


def look_up(request: Request, unauthorized: Callable[[Request], Answer | None], find: Callable[[], Job | None],
            not_found: Callable[[], Answer]) -> Job | Answer:
    """Authorization first, then the job ``find`` looks up (called only once the request is authorized): the job,
    or the refusal / the 404 in the provider's own shape, for the route to return as it is. Nothing is logged."""
    denied = unauthorized(request)
    if denied is not None:
        return denied
    job = find()
    return not_found() if job is None else job


# ---- submit-time faults ------------------------------------------------------------------------------------------
Fault = Literal["timeout", "5xx", "429"]
ALL_FAULTS: tuple[Fault, ...] = ("timeout", "5xx", "429")
_FAULT_RATES: dict[Fault, str] = {"timeout": "submit_timeout_rate", "5xx": "submit_5xx_rate",
                                  "429": "submit_429_rate"}


async def submit_fault(state: SandboxState, provider: str, kinds: tuple[Fault, ...] = ALL_FAULTS, *,
                       per_provider: bool = False) -> Fault | None:
    """Roll the submit-time faults in the order of ``kinds`` (the first that fires wins, later ones are not
    rolled); the one that fires is recorded as a rejection of ``provider``, and a ``timeout`` holds the request
    for ``timeout_hold_s`` before returning. The caller answers in its provider's own shape.

    ``per_provider``: use the rate as overridden for ``provider`` in ``provider_faults`` (else the global one)."""
    cfg, dice = state.current, state.dice
    for kind in kinds:
        field = _FAULT_RATES[kind]
        rate = cfg.rate(provider, field) if per_provider else float(getattr(cfg, field))
        if dice.roll(f"submit_{kind}", rate):
            state.runner.reject(provider, kind)
            if kind == "timeout":
                await asyncio.sleep(cfg.timeout_hold_s)
            return kind
    return None


def retry_after(cfg: SandboxConfig) -> dict[str, str]:
    """The ``Retry-After`` header of a 429 fault: the configured seconds, rounded up."""
    return {"Retry-After": str(math.ceil(cfg.retry_after_s))}


# ---- inputs --------------------------------------------------------------------------------------------------------
class InputFailed(Exception):
    """The first input (in request order) that could not be used: ``index`` into images + [mask]."""

    def __init__(self, index: int, url: str, error: InputError, *, mask: bool) -> None:
        super().__init__(str(error))
        self.index, self.url, self.error, self.mask = index, url, error, mask


Fetch = Callable[..., Awaitable[bytes]]


async def fetch_inputs(state: SandboxState, images: list[str], mask: str | None = None, *,
                       fetch: Fetch = fetch_image) -> tuple[list[bytes], bytes | None]:
    """Download the images (and the mask) concurrently with the sandbox's limits: (image bytes, mask bytes).

    The first failure in request order decides: an :class:`InputError` raises :class:`InputFailed`, any other
    exception is re-raised as it is."""
    cfg = state.current
    urls = [*images, *([mask] if mask else [])]
    fetched = await asyncio.gather(
        *(fetch(u, state.http(), max_bytes=cfg.max_input_bytes, timeout=cfg.input_timeout_s) for u in urls),
        return_exceptions=True,
    )
    blobs: list[bytes] = []
    for index, item in enumerate(fetched):
        if isinstance(item, InputError):
            raise InputFailed(index, urls[index], item, mask=index >= len(images))
        if isinstance(item, BaseException):
            raise item
        blobs.append(item)
    return blobs[: len(images)], (blobs[-1] if mask else None)


# ---- ids, times, URLs, headers ------------------------------------------------------------------------------------
def random_id(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


@overload
def iso_utc(ts: float, timespec: str = "milliseconds") -> str: ...
@overload
def iso_utc(ts: float | None, timespec: str = "milliseconds") -> str | None: ...
def iso_utc(ts: float | None, timespec: str = "milliseconds") -> str | None:
    """A Unix time as ISO 8601 in UTC with a ``Z`` suffix (None stays None)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def parse_instant(text: str) -> float | None:
    """An ISO 8601 date-time (``Z`` or an offset; naive = UTC) or a date, as Unix seconds; None if it is not."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def queue_urls(base: str) -> dict[str, str]:
    """The fal-style queue links of a request whose result lives at ``base``."""
    return {"response_url": base, "status_url": base + "/status", "cancel_url": base + "/cancel"}


def queue_priority(request: Request, header: str) -> int:
    """``low`` in ``header`` queues behind everything else; anything else is normal."""
    return PRIORITY_LOW if request.headers.get(header, "normal").lower() == "low" else PRIORITY_NORMAL


def kept_headers(request: Request, *, prefix: str | None = None,
                 names: Iterable[str] = ("user-agent",)) -> dict[str, str]:
    """The request headers worth keeping in the request log: those starting with ``prefix`` and ``names``."""
    wanted = frozenset(names)
    return {k: v for k, v in request.headers.items()
            if (prefix is not None and k.startswith(prefix)) or k in wanted}


__all__ = [
    "ALL_FAULTS", "BEARER_AUTH", "KEY_AUTH", "Fault", "InputFailed", "authorization_matches", "bearer_key",
    "fetch_inputs", "iso_utc", "kept_headers", "look_up", "queue_priority", "queue_urls", "random_id",
    "retry_after", "submit_fault",
]
