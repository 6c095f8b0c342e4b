"""Checks run before a command touches anything, so that a missing piece is one clear line and nothing
is left half-made: Redis reachable, S3 credentials present, the bucket there (or created on request)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from editq.schemas.settings import get_settings


class Problem(Exception):
    """Something the user must fix; its message is one line saying what and how."""


def _safe_url(url: str) -> str:
    """A URL without its password (Redis URLs may carry one)."""
    parts = urlsplit(url)
    if parts.password:
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def check_redis() -> None:
    url = get_settings().redis_url
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2).ping()
    except (redis.RedisError, ValueError) as exc:
        raise Problem(f"cannot reach Redis at {_safe_url(url)} ({type(exc).__name__}); start it, set "
                      "EDITQ_REDIS_URL, or run `editq up` and `source .editq/env`") from None


def check_s3(create_bucket: bool = False) -> None:
    from editq.worker.storage import get_storage

    s = get_settings()
    where = s.s3_endpoint or "AWS S3"
    storage = get_storage()
    if storage._session.get_credentials() is None:
        raise Problem("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), "
                      "or run `editq up` and `source .editq/env`")
    try:
        storage.client.head_bucket(Bucket=storage.bucket)
        return
    except NoCredentialsError:
        raise Problem("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from None
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise Problem(f"S3 at {where} refused access to bucket {storage.bucket!r} ({code}): check the "
                          "S3 credentials") from None
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise Problem(f"S3 at {where} answered {code} for bucket {storage.bucket!r}") from None
    except BotoCoreError as exc:
        raise Problem(f"cannot reach S3 at {where} ({type(exc).__name__})") from None
    if not create_bucket:
        raise Problem(f"bucket {storage.bucket!r} does not exist at {where}: create it, set EDITQ_S3_BUCKET, "
                      "or pass --create-bucket")
    try:
        storage.client.create_bucket(Bucket=storage.bucket)
    except (ClientError, BotoCoreError) as exc:
        raise Problem(f"could not create bucket {storage.bucket!r} at {where}: {exc}") from None


def check_all(create_bucket: bool = False) -> None:
    check_redis()
    check_s3(create_bucket)
