"""The local stack (`make demo`, tests, benchmarks) cleans up after itself in a shared Redis."""

from __future__ import annotations

import redis

from editq.producer.api import submit
from editq.producer.stack import LocalStack
from editq.worker.keys import Keys, broker_patterns, namespace_patterns, scan_keys
from tests.conftest import EXAMPLES, unique


def test_an_isolated_stack_leaves_no_keys_in_a_shared_redis(stack_redis_url: str) -> None:
    r = redis.Redis.from_url(stack_redis_url, decode_responses=True)
    other = unique("editq-not-this-stack") + ":keep"
    r.set(other, "1", ex=300)
    with LocalStack(workers=0, webhooks=False, redis_url=stack_redis_url) as stack:
        k = Keys(stack.env["EDITQ_KEY_PREFIX"])
        queues = stack.env["EDITQ_QUEUE_PREFIX"]
        submit({"prompt": unique("stack"), "images": [str(EXAMPLES / "mug.png")]})  # a job, and its dispatch task
        assert len(list(r.scan_iter(k.match("job")))) == 1
        assert r.llen(queues) >= 1  # the dispatch task waits in the stack's Celery queue
        assert list(scan_keys(r, broker_patterns(queues)))  # ...and kombu has its bindings
    assert list(scan_keys(r, namespace_patterns(k.prefix, queues))) == []
    assert r.get(other) == "1"  # nothing outside the stack's own namespace is touched
    r.delete(other)
