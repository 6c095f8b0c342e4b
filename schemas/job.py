"""The canonical edit job: what a user writes (one JSONL line) and what the worker runs."""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from editq.schemas.params import Background, Lane, OutputFormat, Quality, Size

DEFAULT_PROVIDER = "fal"
DEFAULT_MODEL = "openai/gpt-image-2/edit"
MAX_IMAGES = 16
MAX_PROMPT_CHARS = 32_000
OPTIONAL_KEY_FIELDS = ("group", "variant", "parent_job_id", "tenant")
MAX_REF_CHARS = 2048  # a path, URL or s3:// reference (data: URIs are bounded by EDITQ_MAX_INPUT_BYTES)
MAX_DEPTH = 8  # how deep any field's value may nest (metadata is the only field that nests at all)
MAX_METADATA_BYTES = 16 * 1024  # as compact JSON: it is copied into Redis and every manifest


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _check_ref(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("an image reference must not be empty")
    if value.startswith("data:"):
        if ";base64," not in value[:100]:
            raise ValueError("a data: URI must be base64 encoded (data:image/png;base64,...)")
        return value
    if len(value) > MAX_REF_CHARS:
        raise ValueError(f"a path or URL must be at most {MAX_REF_CHARS:,} characters, got {len(value):,}")
    bad = _CONTROL.search(value)
    if bad is not None:
        raise ValueError(f"contains a control character ({bad.group()!r} at position {bad.start()})")
    if value.startswith(("http://", "https://")):
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises for a port that is not a number in 0-65535
        except ValueError as exc:
            raise ValueError(f"not a valid URL: {str(exc).lower()}") from None
        if not parts.hostname:
            raise ValueError("not a valid URL: no host")
        return value
    if value.startswith("s3://"):
        if "/" not in value[5:].strip("/"):
            raise ValueError(f"s3 reference {value!r} must be s3://bucket/key")
        return value
    if "://" in value:
        raise ValueError(f"unsupported scheme in {value[:40]!r}: use https://, s3://, data: or a local path")
    return value


def nesting_problem(value: Any, limit: int = MAX_DEPTH) -> str | None:
    """A message when `value` (parsed JSON) nests deeper than `limit` lists/objects; checked without
    recursion, so a hostile depth costs a loop, not the interpreter's stack."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= limit:
                return f"nested deeper than {limit} levels"
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return None


ImageRef = Annotated[str, AfterValidator(_check_ref)]


class JobRequest(BaseModel):
    """One edit as a producer submits it. Unknown fields are refused, so typos are not silently lost."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    custom_id: str | None = Field(None, max_length=256, description="Your own key, e.g. a SKU.")
    provider: str = Field(
        DEFAULT_PROVIDER,
        description="A provider name, or a route with fallbacks in order, e.g. 'fal,replicate'.",
    )
    model: str = DEFAULT_MODEL
    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT_CHARS)
    images: list[ImageRef] = Field(..., min_length=1, max_length=MAX_IMAGES)
    mask: ImageRef | None = None
    size: Size = "auto"
    quality: Quality = Quality.medium
    num_images: int = Field(1, ge=1, le=10)
    output_format: OutputFormat = OutputFormat.png
    background: Background = Background.auto
    priority: Lane = Lane.bulk
    metadata: dict[str, Any] = Field(default_factory=dict)
    group: str | None = Field(None, max_length=256, description="A/B group: jobs of one input and base request.")
    variant: str | None = Field(None, max_length=100, description="The variant's label within its group.")
    parent_job_id: str | None = Field(
        None, max_length=100, description="The job this one follows up (`editq continue`)."
    )
    tenant: str | None = Field(
        None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.@-]+$",
        description="Who pays: the job counts against this tenant's daily budget (settings, `editq budget --tenant`).",
    )
    idempotency_key: str | None = Field(
        None, max_length=200, description="Defaults to a hash of the content (provider, model, prompt, params, inputs)."
    )

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, Any]) -> dict[str, Any]:
        # bounded here, not when it is written: a value that validates must also serialise
        if not v:
            return v
        problem = nesting_problem(v)
        if problem:
            raise ValueError(problem)
        size = len(json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode())
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"is {size:,} bytes as JSON; at most {MAX_METADATA_BYTES:,}")
        return v

    @field_validator("provider")
    @classmethod
    def _provider(cls, v: str) -> str:
        parts = [p.strip() for p in v.split(",") if p.strip()]
        if not parts:
            raise ValueError("provider must name at least one provider")
        if len(set(parts)) != len(parts):
            raise ValueError("a provider appears twice in the route")
        return ",".join(parts)

    @property
    def route(self) -> list[str]:
        return self.provider.split(",")


class InputRecord(BaseModel):
    """One input image as fetched once at enqueue time and stored content-addressed in S3."""

    ref: str = Field(description="The reference as the user gave it (data: URIs are shortened).")
    sha256: str
    bytes: int
    format: str
    width: int
    height: int
    s3_key: str


class EditJob(JobRequest):
    """A prepared job: ids assigned, inputs fetched, hashed and stored."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    batch_id: str
    inputs: list[InputRecord]
    mask_input: InputRecord | None = None
    idempotency_key: str
    created_at: float = Field(default_factory=time.time)


def request_from_json(raw: str | bytes) -> JobRequest | None:
    """A line's request by pydantic's JSON path (parsed and validated in Rust straight from the line's bytes,
    no dict in between), or None when that path does not take the line, for whatever reason. The caller then
    reads the line the ordinary way (`json.loads`, the nesting check, `model_validate`), which accepts the same
    lines and gives the exact message naming the line's problem: this path is a shortcut for the valid lines
    of a batch (every value it accepts, the ordinary path accepts, equal), never a second set of rules."""
    try:
        return JobRequest.model_validate_json(raw)
    except (ValidationError, ValueError, RecursionError):
        return None


# the request's fields in its default idempotency key (`content_key` writes them in this order: sorted), those
# of OPTIONAL_KEY_FIELDS only when set; every other field of JobRequest is left out on purpose
# (tests/test_schemas.py holds the split, so a new field needs a decision)
KEY_PARAMS = ("background", "group", "model", "num_images", "output_format", "parent_job_id", "prompt", "provider",
              "quality", "size", "tenant", "variant")
NOT_IN_KEY = frozenset({"custom_id", "images", "mask", "metadata", "idempotency_key", "priority"})
_json_str = json.encoder.encode_basestring_ascii  # what json.dumps writes for a str (ensure_ascii, in C)


def content_key(req: JobRequest, input_digests: list[str], mask_digest: str | None) -> str:
    """The default idempotency key: same provider, model, prompt, params and input bytes -> same key.

    The SHA-256 of `json.dumps({"params": <KEY_PARAMS, those unset (None) among OPTIONAL_KEY_FIELDS left out>,
    "inputs": input_digests, "mask": mask_digest, "custom_id": req.custom_id}, sort_keys=True,
    separators=(",", ":"))`, written out directly in that order (the same bytes: tests/test_schemas.py compares
    them with that dump), so keys stay what they were for jobs already enqueued."""
    d = req.__dict__
    blob = "".join((
        '{"custom_id":', "null" if d["custom_id"] is None else _json_str(d["custom_id"]),
        ',"inputs":[', ",".join(map(_json_str, input_digests)),
        '],"mask":', "null" if mask_digest is None else _json_str(mask_digest),
        ',"params":{"background":', _json_str(d["background"]), _optional(d, "group"),
        ',"model":', _json_str(d["model"]), ',"num_images":', repr(int(d["num_images"])),
        ',"output_format":', _json_str(d["output_format"]), _optional(d, "parent_job_id"),
        ',"prompt":', _json_str(d["prompt"]), ',"provider":', _json_str(d["provider"]),
        ',"quality":', _json_str(d["quality"]), ',"size":', _json_str(d["size"]),
        _optional(d, "tenant"), _optional(d, "variant"), "}}",
    ))
    return hashlib.sha256(blob.encode()).hexdigest()


def _optional(d: dict[str, Any], name: str) -> str:
    value = d[name]
    return "" if value is None else f',"{name}":{_json_str(value)}'


def describe_errors(exc: ValidationError) -> str:
    """A one-line, human message naming each field and the rule it broke."""
    parts = []
    for err in exc.errors():
        loc = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in err["loc"]).lstrip(".") or "line"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)
