"""editq provider sandbox: a local emulator of provider queue APIs (fal today) for rehearsals,
tests and benchmarks.  ``create_app(config)`` builds the ASGI app; ``serve(host, port, config)`` runs it.
"""

from editq.sandbox.config import SandboxConfig
from editq.sandbox.engine import render_edit
from editq.sandbox.server import create_app, serve

__all__ = ["SandboxConfig", "create_app", "render_edit", "serve"]
