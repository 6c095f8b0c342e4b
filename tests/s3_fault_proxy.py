"""An HTTP proxy in front of the local S3 server that answers `403 AccessDenied` to the first PUT of each job
output (`.../{job_id}/{index}.{ext}`) and passes everything else through: what a worker sees when S3 refuses
its credentials or its bucket policy in the middle of a collect. `mode` changes that, at any time: "deny_always"
answers 403 to every output PUT; "unavailable" answers 503 SlowDown to every PUT (S3 itself in trouble: our
outage), "outputs_unavailable" to every output PUT; "pass" passes everything. Loopback only, threads, for tests."""

from __future__ import annotations

import http.client
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

OUTPUT = re.compile(r"/\d+\.(png|jpeg|jpg|webp)$")
DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
          b"<Message>Access Denied</Message></Error>")
SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Reduce your request rate</Message></Error>")
HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "upgrade", "te", "trailer"}


class S3FaultProxy:
    def __init__(self, upstream: str) -> None:
        up = urlsplit(upstream)
        self.upstream = (up.hostname or "127.0.0.1", up.port or 80)
        self.denied: list[str] = []  # paths answered 403, in order
        self.mode = "deny_first"  # or "deny_always", "unavailable", "outputs_unavailable", "pass"
        self.unavailable = 0  # PUTs answered 503
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer_xml(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                if self.command == "PUT" and (proxy.mode == "unavailable" or
                                              (proxy.mode == "outputs_unavailable" and OUTPUT.search(path))):
                    with proxy._lock:
                        proxy.unavailable += 1
                    self._answer_xml(503, SLOW_DOWN)
                    return
                if self.command == "PUT" and OUTPUT.search(path) and proxy.mode in ("deny_first", "deny_always"):
                    with proxy._lock:
                        first = path not in proxy.denied or proxy.mode == "deny_always"
                        if first:
                            proxy.denied.append(path)
                    if first:
                        self._answer_xml(403, DENIED)
                        return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                    conn.request(self.command, self.path, body=body if length else None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="s3-fault-proxy", daemon=True)

    def __enter__(self) -> S3FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.server.shutdown()
        self.server.server_close()
