"""Seeded dice for jitter and fault injection.

Each kind of decision (``"submit_429"``, ``"webhook_lost"``, ``"jitter"``...) draws from its own
``random.Random`` stream seeded from ``(seed, kind)``, so enabling one fault does not shift the
sequence of another, and a given seed and submission order reproduce the same faults.
"""

from __future__ import annotations

import hashlib
import random


class Dice:
    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._streams: dict[str, random.Random] = {}

    @property
    def seed(self) -> int:
        return self._seed

    def reseed(self, seed: int) -> None:
        self._seed = seed
        self._streams.clear()

    def _stream(self, kind: str) -> random.Random:
        stream = self._streams.get(kind)
        if stream is None:
            digest = hashlib.sha256(f"editq-sandbox:{self._seed}:{kind}".encode()).digest()
            stream = random.Random(int.from_bytes(digest[:8], "big"))
            self._streams[kind] = stream
        return stream

    def roll(self, kind: str, rate: float) -> bool:
        """True with probability ``rate``.  Always consumes one draw, so rates can change freely."""
        draw = self._stream(kind).random()
        return rate > 0.0 and draw < rate

    def uniform(self, kind: str, low: float, high: float) -> float:
        return self._stream(kind).uniform(low, high) if high > low else low
