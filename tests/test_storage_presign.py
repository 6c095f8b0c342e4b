"""Storage signs its presigned URLs itself: they must be exactly botocore's, and honour the public host."""

from __future__ import annotations

import datetime as dt
from urllib.parse import parse_qs, urlsplit

import pytest
from botocore.auth import S3SigV4QueryAuth

from editq.schemas.settings import Settings
from editq.worker.storage import PUT_URL_TTL_S, Storage

FROZEN = dt.datetime(2026, 11, 22, 12, 0, 0)


@pytest.fixture
def storage(monkeypatch: pytest.MonkeyPatch) -> Storage:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: FROZEN)
    return Storage(Settings(s3_endpoint="http://127.0.0.1:9000", s3_bucket="editq-test", s3_region="eu-west-1"))


def test_put_urls_are_byte_identical_to_botocore(storage: Storage) -> None:
    key = "editq/batch_1/job 1/0.png"
    ours = storage.presign_put(key, "image/png", {"sha256": "ab" * 32})
    theirs = storage.client.generate_presigned_url(
        "put_object", ExpiresIn=PUT_URL_TTL_S,
        Params={"Bucket": "editq-test", "Key": key, "ContentType": "image/png", "Metadata": {"sha256": "ab" * 32}})
    assert ours == theirs
    q = parse_qs(urlsplit(ours).query)
    assert q["X-Amz-SignedHeaders"] == ["content-type;host;x-amz-meta-sha256"]
    assert urlsplit(ours).path == "/editq-test/editq/batch_1/job%201/0.png"


def test_get_urls_are_byte_identical_and_reused_while_fresh(storage: Storage) -> None:
    key = "inputs/" + "c" * 64 + ".png"
    ours = storage.presign(key)
    theirs = storage.client.generate_presigned_url(
        "get_object", Params={"Bucket": "editq-test", "Key": key}, ExpiresIn=storage.settings.presign_ttl_s)
    assert ours == theirs
    assert storage.presign(key) is ours  # shared inputs: one signature serves many jobs
    assert storage.presign("inputs/other.png") != ours


def test_public_endpoint_urls_are_signed_for_the_public_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: FROZEN)
    s = Storage(Settings(s3_endpoint="http://minio:9000", s3_bucket="editq-test", s3_region="us-east-1",
                         s3_public_endpoint="https://files.example.com"))
    url = s.presign("inputs/a.png")
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "files.example.com", "/editq-test/inputs/a.png")
    # the signature is over the host the provider will send: recompute it for that host and compare
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest(method="GET", url="https://files.example.com/editq-test/inputs/a.png")
    S3SigV4QueryAuth(Credentials("AKIDEXAMPLE", "secret"), "s3", "us-east-1",
                     expires=s.settings.presign_ttl_s).add_auth(req)
    assert url == req.url


@pytest.mark.parametrize(("url", "headers", "token"), [
    ("http://127.0.0.1:9000/b/k%20%C3%A9/0.png", {"Content-Type": "image/png", "x-amz-meta-sha256": "ab" * 32}, None),
    ("https://s3.eu-west-1.amazonaws.com/b/a/b~c.json", {"Content-Type": " application/json  x "}, "FwoGZX+/tok=="),
    ("http://Minio:80/b/k", {"X-Amz-Meta-Note": "a  b", "User-Agent": "not signed"}, None),
    ("https://[::1]:9443/b/k", {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}, "t"),
])
def test_query_signer_matches_botocore(url: str, headers: dict[str, str], token: str | None) -> None:
    """worker/presign.py against botocore's S3SigV4QueryAuth on the same request: session tokens, header
    values with runs of spaces, unsigned headers, default ports, IPv6 hosts, the form content type."""
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from editq.worker.presign import QuerySigner

    parts = urlsplit(url)
    req = AWSRequest(method="PUT", url=url, headers=dict(headers))
    import botocore.auth

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(botocore.auth, "get_current_datetime", lambda: FROZEN)
        S3SigV4QueryAuth(Credentials("AKIDEXAMPLE", "secret/key", token), "s3", "eu-west-1", expires=900).add_auth(req)
        ours = QuerySigner("eu-west-1").sign("PUT", parts.scheme, parts.netloc, parts.path, headers, 900,
                                             access_key="AKIDEXAMPLE", secret_key="secret/key", token=token)
    assert ours == req.url
