"""The SSRF check: the same refusals sync and async, and the async one never blocks the event loop."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import pytest

from schemas.settings import Settings
from worker.netguard import UnsafeURL, check_url, check_url_async
from worker.storage import Storage

# the bounded wait of the blocking resolver below: only reached when the loop is blocked (the bug)
BLOCKED_FOR_S = 5.0

Infos = list[tuple[Any, ...]]


def _infos(*ips: str) -> Infos:
    return [
        (socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, 443))
        for ip in ips
    ]


FAKE_DNS: dict[str, Infos] = {
    "public.example": _infos("93.184.216.34"),
    "private.example": _infos("10.1.2.3"),
    "loopback.example": _infos("127.0.0.1"),
    "linklocal.example": _infos("169.254.169.254"),
    "cgnat.example": _infos("100.64.0.7"),
    "mapped.example": _infos("::ffff:10.0.0.1"),
    "mixed.example": _infos("93.184.216.34", "192.168.0.1"),
    "public6.example": _infos("2606:2800:220:1:248:1893:25c8:1946"),
}


def _fake_getaddrinfo(host: str, port: object, *args: object, **kwargs: object) -> Infos:
    if host not in FAKE_DNS:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return FAKE_DNS[host]


# (url, allow_private, refusal message fragment or None when the URL is allowed)
CASES: list[tuple[str, bool, str | None]] = [
    ("ftp://public.example/x", False, "scheme 'ftp'"),
    ("file:///etc/passwd", True, "scheme 'file'"),
    ("http://public.example/x.png", False, "only https://"),
    ("https://metadata.google.internal/computeMetadata/v1/", False, "is blocked"),
    ("https://METADATA/", False, "is blocked"),
    ("https://nowhere.example/x.png", False, "cannot resolve"),
    ("https://private.example/x.png", False, "non-public"),
    ("https://loopback.example/x.png", False, "non-public"),
    ("https://linklocal.example/x.png", False, "non-public"),
    ("https://cgnat.example/x.png", False, "non-public"),
    ("https://mapped.example/x.png", False, "non-public"),
    ("https://mixed.example/x.png", False, "non-public"),
    ("https://public.example:8443/x.png", False, None),
    ("https://public6.example/x.png", False, None),
    ("http://private.example/x.png", True, None),  # sandbox and tests: nothing is resolved
]


def _run(coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    # a plain asyncio loop: its getaddrinfo goes through socket.getaddrinfo, which the tests replace
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        runner.run(coro_fn())


@pytest.mark.parametrize(("url", "allow_private", "refusal"), CASES)
def test_sync_and_async_checks_refuse_the_same_urls(
    monkeypatch: pytest.MonkeyPatch, url: str, allow_private: bool, refusal: str | None
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _fake_getaddrinfo)
    outcomes: list[str | None] = []
    for check in (
        lambda: check_url(url, allow_private=allow_private),
        lambda: _run(lambda: check_url_async(url, allow_private=allow_private)),
    ):
        try:
            check()
            outcomes.append(None)
        except UnsafeURL as exc:
            outcomes.append(str(exc))
    if refusal is None:
        assert outcomes == [None, None]
    else:
        assert outcomes[0] is not None and refusal in outcomes[0]
        assert outcomes[1] == outcomes[0]


def test_async_check_on_uvloop_resolves_for_real() -> None:
    """The worker's loop is uvloop (worker/aio.py): its own getaddrinfo, not socket.getaddrinfo."""
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        with pytest.raises(UnsafeURL, match="non-public"):
            runner.run(check_url_async("https://localhost/x.png", allow_private=False))
        with pytest.raises(UnsafeURL, match="only https"):
            runner.run(check_url_async("http://localhost/x.png", allow_private=False))


class BlockingResolver:
    """A getaddrinfo that blocks its caller until released (bounded), noting whether the event loop
    got to run another coroutine meanwhile."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.other_ran = threading.Event()
        self.seen_progress: list[bool] = []
        self.thread: threading.Thread | None = None

    def __call__(self, host: str, port: object, *args: object, **kwargs: object) -> Infos:
        self.thread = threading.current_thread()
        self.entered.set()
        self.release.wait(BLOCKED_FOR_S)
        self.seen_progress.append(self.other_ran.is_set())
        return _infos("10.0.0.1")  # private: the check refuses, so nothing is downloaded

    async def other_coroutine(self) -> None:
        """Runs on the same loop: waits (off-loop) until the resolver is blocked, then makes progress
        and lets it go. Only possible while the resolver is not holding the loop's thread."""
        await asyncio.to_thread(self.entered.wait, BLOCKED_FOR_S)
        self.other_ran.set()
        self.release.set()


def _assert_loop_kept_running(resolver: BlockingResolver, loop_thread: threading.Thread) -> None:
    assert resolver.seen_progress == [True], "the event loop was blocked while the host name resolved"
    assert resolver.thread is not loop_thread


def test_async_check_does_not_block_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = BlockingResolver()
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    loop_thread = threading.current_thread()

    async def main() -> None:
        other = asyncio.create_task(resolver.other_coroutine())
        with pytest.raises(UnsafeURL, match="non-public"):
            await check_url_async("https://slow-dns.example/x.png", allow_private=False)
        await other

    _run(main)
    _assert_loop_kept_running(resolver, loop_thread)


def test_output_download_check_does_not_block_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's call site: Storage.store_output checks a provider's output URL before fetching it."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "editq-local")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "editq-local-secret")
    settings = Settings.model_validate(
        {"s3_endpoint": "http://127.0.0.1:9", "s3_bucket": "editq-test", "allow_private_urls": False}
    )
    storage = Storage(settings)
    resolver = BlockingResolver()
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    loop_thread = threading.current_thread()

    async def main() -> None:
        other = asyncio.create_task(resolver.other_coroutine())
        async with httpx.AsyncClient() as http:
            with pytest.raises(UnsafeURL, match="non-public"):
                await storage.store_output(
                    http,
                    url="https://slow-dns.example/out.png",
                    b64=None,
                    key_for_ext=lambda ext: f"o.{ext}",
                    index=0,
                )
        await other

    _run(main)
    _assert_loop_kept_running(resolver, loop_thread)
