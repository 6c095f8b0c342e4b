"""The embedded stack's S3: moto's S3 backend served over HTTP, pinned to S3, on waitress.

`python -m moto.server` serves every AWS service moto emulates, so each request first goes
through moto's service dispatcher, which matches the Host header against every backend's URL
patterns and lists moto's modules on disk (an `isdir` per module) before S3 sees the request;
its Flask apps run in debug mode; and werkzeug's development server logs every request and
closes the connection after each one, so every PUT and GET pays a TCP connect and a new thread on
both sides. On the benchmark machine that was about a quarter of the S3 server's CPU (py-spy).
Here every request except moto's own `/moto-api` goes straight to the S3 app, with debug off,
served by waitress (keep-alive connections, a fixed pool of threads, no per-request log). Same
moto S3 backend, same state, same HTTP API: only what stands in front of it changed.

    python -m editq.producer.s3_local --host 127.0.0.1 --port 5000
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

# Read by moto when it is imported: buckets are always in the path (editq's clients use path-style
# addressing), so moto need not match every request's Host against AWS's virtual-host patterns, and
# no browser talks to this server, so no CORS headers on every response. Together about a fifth
# of this server's CPU per request (py-spy).
os.environ.setdefault("S3_IGNORE_SUBDOMAIN_BUCKETNAME", "true")
os.environ.setdefault("MOTO_DISABLE_GLOBAL_CORS", "true")

import waitress
from flask import Flask
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser


class S3Only(DomainDispatcherApplication):
    """moto's dispatcher with the routing decided up front: `/moto-api` to moto's API, all else S3."""

    def __init__(self) -> None:
        super().__init__(create_backend_app)
        self.s3 = create_backend_app("s3")
        self.s3.debug = False
        self.api: Flask | None = None

    def get_application(self, environ: dict[str, Any]) -> Flask:
        path = environ.get("PATH_INFO", "")
        if isinstance(path, str) and path.startswith("/moto-api"):
            if self.api is None:
                self.api = super().get_application(environ)
            return self.api
        return self.s3


class _Parser(HTTPRequestParser):
    """waitress's parser, except that a request with no body never waits for `100 Continue`.

    boto3 sends `Expect: 100-continue` on every PutObject. For a zero-byte body, waitress sends the
    `100 Continue` and then marks the request, already complete, as incomplete again; it never reaches
    the app and the client times out (a batch whose lines were all refused never got its empty
    manifest.jsonl). A request without a body has nothing to continue with: it is served at once."""

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        if self.expect_continue and not self.chunked and not self.content_length:  # type: ignore[has-type]
            self.expect_continue = False


class _Channel(HTTPChannel):
    parser_class = _Parser


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = waitress.create_server(S3Only(), host=args.host, port=args.port, threads=8, connection_limit=1024,
                                    channel_timeout=300, ident="editq-s3-local")
    server.channel_class = _Channel
    server.run()


if __name__ == "__main__":
    main()
