"""A webhook receiver for tests: records every raw delivery (path, lower-case headers, body)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Delivery = tuple[str, dict[str, str], bytes]


class Peer:
    """`fail_first`: answer 500 to the first N deliveries (`codes` holds what each delivery was answered)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.deliveries: list[Delivery] = []
        self.codes: list[int] = []
        self.fail_first = fail_first
        self.cond = threading.Condition()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with peer.cond:
                    code = 500 if len(peer.deliveries) < peer.fail_first else 200
                    peer.deliveries.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    peer.codes.append(code)
                    peer.cond.notify_all()
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def for_id(self, rid: str, field: str = "id") -> list[Delivery]:
        """Deliveries whose JSON body has `field` == rid."""
        with self.cond:
            return [d for d in self.deliveries if _field(d[2], field) == rid]

    def wait(self, path: str, timeout: float = 60) -> tuple[dict[str, str], bytes]:
        """The first delivery to `path` (query string ignored), waiting for it (bounded)."""
        def found() -> Delivery | None:
            return next((d for d in self.deliveries if d[0].split("?")[0] == path), None)

        with self.cond:
            assert self.cond.wait_for(found, timeout), f"no delivery to {path} within {timeout}s"
            hit = found()
            assert hit is not None
            return hit[1], hit[2]

    def close(self) -> None:
        self.server.shutdown()


def _field(body: bytes, field: str) -> Any:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data.get(field) if isinstance(data, dict) else None


def peer_fixture() -> Iterator[Peer]:
    p = Peer()
    yield p
    p.close()
