"""A worker process for the budget race (tests/test_budget.py): THREADS claimers on one Redis, each claiming
jobs through the real claim script as fast as it can (after a first job each, held until every claimer of
both processes holds one: a barrier in Redis on two test keys, a count and a gate list). Of what it claims
it lets about a third fail at once (the move script releases their reservation) and holds the rest (they
stay `submitted`, money committed); one thread sends waiting jobs back to the queue as money frees. Prints
`ready`, starts on `go` (stdin), then prints one JSON line: its claims and failures (exits non-zero, with no
JSON, if any claimer failed).

    python -m tests.budget_race REDIS_URL KEY_PREFIX PROVIDER THREADS SEED NOW COUNT_KEY GATE_KEY
"""

from __future__ import annotations

import json
import random
import sys
import threading

import redis

from editq.worker.keys import Keys
from editq.worker.state import JobStore, State


def main(url: str, prefix: str, provider: str, threads: int, seed: int, now: float, count_key: str,
         gate_key: str) -> None:
    r = redis.Redis.from_url(url, decode_responses=True, max_connections=threads + 4)
    store = JobStore(r, Keys(prefix))
    lock = threading.Lock()
    claimed: list[str] = []
    released: list[str] = []
    start = threading.Barrier(threads + 2)  # the claimers, the releaser, and this thread
    stop = threading.Event()
    errors: list[BaseException] = []

    def rendezvous(parties: int) -> None:
        """A barrier across processes: each party counts itself in; the last one in pushes a token for every
        other party onto the gate list, where each of them blocks (BLPOP) for one, bounded by a deadline."""
        if r.incr(count_key) == parties:
            r.rpush(gate_key, *["go"] * (parties - 1))
        else:
            assert r.blpop([gate_key], timeout=120) is not None, "not every claimer of both processes arrived"

    def first_claim() -> None:
        """One job each, then wait for every claimer of both processes to hold one: both processes are in
        the race whatever the scheduler does (64 first jobs of at most $0.41 fit every cap)."""
        ids, _ = store.claim_budgeted(provider, 1, 100_000, 0, 0, 600, now=now)
        assert len(ids) == 1, "a first claim found no job"
        assert store.move(ids[0], [State.submitting], State.submitted, score=now + 600).ok
        with lock:
            claimed.extend(ids)
        rendezvous(2 * threads)

    def claimer(n: int) -> None:
        try:
            claim_all(n)
        except BaseException as exc:  # the process must fail, not print a partial result
            errors.append(exc)
            raise

    def claim_all(n: int) -> None:
        rnd = random.Random(seed * 1000 + n)
        start.wait()
        first_claim()
        idle = 0
        while idle < 50:  # the queue stayed empty for 50 tries in a row: the other claimers are done too
            ids, _ = store.claim_budgeted(provider, rnd.randint(1, 3), 100_000, 0, 0, 600, now=now)
            if not ids:
                idle += 1
                continue
            idle = 0
            for jid in ids:
                if rnd.random() < 0.35:  # a failure the provider did not bill: the reservation is released
                    assert store.move(jid, [State.submitting], State.failed, fields={"settle": "0"}).ok
                    with lock:
                        released.append(jid)
                else:
                    assert store.move(jid, [State.submitting], State.submitted, score=now + 600).ok
            with lock:
                claimed.extend(ids)

    def releaser() -> None:
        start.wait()
        while not stop.is_set():
            for scope in store.budget_scopes():
                store.release_budget(scope, now=now)

    workers = [threading.Thread(target=claimer, args=(i,)) for i in range(threads)]
    rel = threading.Thread(target=releaser)
    for t in [*workers, rel]:
        t.start()
    print("ready", flush=True)  # both processes start claiming together, when the test says go
    assert sys.stdin.readline().strip() == "go"
    start.wait()
    for t in workers:
        t.join()
    stop.set()
    rel.join()
    if errors:
        sys.exit(f"{len(errors)} claimer(s) failed: {errors[0]!r}")
    print(json.dumps({"claimed": claimed, "released": released}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]),
         sys.argv[7], sys.argv[8])
