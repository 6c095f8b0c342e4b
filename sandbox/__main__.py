"""``python -m editq.sandbox --host 127.0.0.1 --port 8900 [--latency 0.5 ...]``.

Every :class:`~sandbox.config.SandboxConfig` field is a flag (``--submit-429-rate 0.1``); fields
ending in ``_s`` also accept the short form (``--latency``, ``--jitter``, ``--webhook-delay``).
Flags override ``EDITQ_SANDBOX_*`` environment variables.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from editq.sandbox.config import SandboxConfig
from editq.sandbox.server import serve


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m editq.sandbox", description="editq provider sandbox")
    for name, field in SandboxConfig.model_fields.items():
        flags = [f"--{name.replace('_', '-')}"]
        if name.endswith("_s"):
            flags.append(f"--{name[:-2].replace('_', '-')}")
        kind: Any = str
        if field.annotation is bool:
            kind = _bool
        elif field.annotation is int:
            kind = int
        elif field.annotation is float:
            kind = float
        parser.add_argument(*flags, dest=name, type=kind, default=None,
                            help=f"{field.description} (default: {field.default})")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    config = SandboxConfig.from_env(**vars(args))
    serve(config.host, config.port, config)


if __name__ == "__main__":
    main()
