"""S3 presigned URLs (SigV4 query signing), byte for byte what botocore's `S3SigV4QueryAuth` produces.

botocore's signer builds an `AWSRequest`, parses its URL four times, copies the headers into an
email-message header map twice and derives the signing key (four HMACs) for every URL; the worker signs
two PUT URLs per stored job, and that was ~12 % of its CPU (py-spy, docs/benchmarks.md). Here the
request is only ever "this method, this host, this already-quoted path, these headers", so the steps
are written out for that case, with botocore's own constants and helpers, and the signing key is kept
per (secret, day, region). tests/test_storage_presign.py compares the URLs with botocore's.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from functools import lru_cache

from botocore import auth as botocore_auth
from botocore.utils import percent_encode

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "s3"
_SKIPPED = frozenset(botocore_auth.SIGNED_HEADERS_BLACKLIST)
_FORM_TYPE = "application/x-www-form-urlencoded; charset=utf-8"  # dropped by botocore from presigned requests


@lru_cache(maxsize=1024)
def _encoded(value: str) -> str:
    """botocore's query encoding of one key or value; the values repeat (scope, signed headers, token)."""
    return percent_encode(value)


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


class QuerySigner:
    """Signs URLs of one S3 endpoint for one region. `host_for(scheme, netloc)` results and signing keys
    are cached; credentials are passed on each call (they may be refreshed between calls)."""

    def __init__(self, region: str) -> None:
        self.region = region
        self._hosts: dict[tuple[str, str], str] = {}
        self._key: tuple[tuple[str, str], bytes] | None = None

    def _host(self, scheme: str, netloc: str) -> str:
        host = self._hosts.get((scheme, netloc))
        if host is None:
            host = self._hosts[(scheme, netloc)] = botocore_auth._host_from_url(  # type: ignore[attr-defined]
                f"{scheme}://{netloc}/")
        return host

    def _signing_key(self, secret: str, day: str) -> bytes:
        if self._key is not None and self._key[0] == (secret, day):
            return self._key[1]
        k = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret}".encode(), day), self.region), SERVICE), "aws4_request")
        self._key = ((secret, day), k)
        return k

    def sign(
        self, method: str, scheme: str, netloc: str, path: str, headers: dict[str, str], expires: int, *,
        access_key: str, secret_key: str, token: str | None, now: datetime | None = None,
    ) -> str:
        """The presigned URL for `method` on `scheme://netloc{path}` (`path` already quoted, no query),
        signing `headers` (the ones the client will send) and the host."""
        when = now or botocore_auth.get_current_datetime()  # type: ignore[attr-defined]
        stamp: str = when.strftime(botocore_auth.SIGV4_TIMESTAMP)
        day = stamp[:8]
        signed: dict[str, str] = {}
        for name, value in headers.items():
            lname = name.lower()
            if lname in _SKIPPED or (lname == "content-type" and value == _FORM_TYPE):
                continue
            value = " ".join(value.split())
            signed[lname] = f"{signed[lname]},{value}" if lname in signed else value
        signed.setdefault("host", self._host(scheme, netloc))
        names = sorted(signed)
        signed_headers = ";".join(names)
        scope = f"{day}/{self.region}/{SERVICE}/aws4_request"
        params: dict[str, str] = {
            "X-Amz-Algorithm": ALGORITHM,
            "X-Amz-Credential": f"{access_key}/{scope}",
            "X-Amz-Date": stamp,
            "X-Amz-Expires": str(expires),
            "X-Amz-SignedHeaders": signed_headers,
        }
        if token is not None:
            params["X-Amz-Security-Token"] = token
        query = "&".join(f"{_encoded(k)}={_encoded(v)}" for k, v in params.items())  # percent_encode_sequence
        canonical_query = "&".join(sorted(query.split("&"), key=lambda pair: tuple(pair.partition("=")[::2])))
        canonical = "\n".join((
            method.upper(), path, canonical_query, "\n".join(f"{n}:{signed[n]}" for n in names) + "\n",
            signed_headers, botocore_auth.UNSIGNED_PAYLOAD,
        ))
        to_sign = "\n".join((ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()))
        signature = hmac.new(self._signing_key(secret_key, day), to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
        return f"{scheme}://{netloc}{path}?{query}&X-Amz-Signature={signature}"
