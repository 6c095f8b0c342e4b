"""Valid deliveries that arrive while the provider's webhook key is being fetched wait for that fetch instead of
being refused: the fetch limit (once a minute, failed fetches included) made every delivery of the burst after a
start-up or a receiver restart a 401 until the first fetch returned, so the sender's retries ran out and the jobs
waited for the safety-net poll (seen in the chaos run: ModelRunner and fal deliveries refused in bursts)."""

from __future__ import annotations

import asyncio

from editq.providers.signatures import WebhookSecret


def test_deliveries_during_the_first_fetch_wait_for_its_key() -> None:
    fetches: list[int] = []

    async def fetch() -> str:
        fetches.append(1)
        await asyncio.sleep(0.05)  # the provider's key endpoint, answering
        return "the-key"

    async def run() -> list[bool]:
        secret = WebhookSecret(lambda s: s.encode())
        return list(await asyncio.gather(*(
            secret.verify(None, fetch, lambda key: key == b"the-key", now=1000.0) for _ in range(5))))

    assert asyncio.run(run()) == [True] * 5
    assert fetches == [1]  # one fetch for the burst


def test_a_forged_delivery_still_cannot_cause_more_than_one_fetch_a_minute() -> None:
    fetches: list[int] = []

    async def fetch() -> str:
        fetches.append(1)
        return "the-key"

    async def run() -> list[bool]:
        secret = WebhookSecret(lambda s: s.encode())
        out = [await secret.verify(None, fetch, lambda key: key == b"the-key", now=1000.0)]
        for t in (1001.0, 1010.0, 1059.0):  # forged: never matches; no refetch within the minute
            out.append(await secret.verify(None, fetch, lambda key: False, now=t))
        return out

    assert asyncio.run(run()) == [True, False, False, False]
    assert fetches == [1]
