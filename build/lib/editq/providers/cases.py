"""What the contract suite (tests/test_contract.py) runs for each provider: `providers/<name>/cases.py`
defines `CASES`.

The suite takes every case for every registered provider: translation (accepted jobs validate clean and
build a request that carries no secret), refusals at enqueue (each with the words its message must
contain), a real submit -> poll -> outputs against the sandbox's emulator, cancel, and, for providers
that deliver webhooks, a signed delivery accepted and forged ones refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Cases:
    # job fields (besides prompt, images, provider) the provider takes; the first runs against the sandbox
    accepted: list[dict[str, Any]]
    # job fields the provider refuses at enqueue, with a part of the message (which also names the provider)
    refused: list[tuple[dict[str, Any], str]]
    # settings for this provider in the contract run (env var -> value), e.g. a model or a mode
    env: dict[str, str] = field(default_factory=dict)
    # a cancelled request ends as a failure on the next poll (False: the provider cannot cancel, or it
    # answers synchronously, so there is nothing left to cancel)
    cancels: bool = False
