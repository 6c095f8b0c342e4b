"""A ninth provider defined in one folder (tests/plugins/echo) runs end to end through the pipeline and the
sandbox: registered by `EDITQ_PROVIDER_MODULES` alone, with no edit anywhere else."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from editq import providers
from editq.producer.api import submit_file, wait
from editq.producer.stack import LocalStack, sandbox_provider_env, scoped_env
from tests.conftest import EXAMPLES, ROOT, sandbox_requests, unique, write_jsonl
from tests.e2e import FAST_POLLS, start, using, verify_batch

PLUGIN = {"EDITQ_PROVIDER_MODULES": "tests.plugins.echo", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    yield from start(False, {**PLUGIN, **FAST_POLLS}, sandbox_opts={"latency_s": 0.1, "jitter_s": 0.0},
                     worker_concurrency=4, keep_env=True)


def test_the_plugin_is_registered_with_its_spec_and_local_settings() -> None:
    with scoped_env(PLUGIN):
        assert "echo" in providers.names()
        spec = providers.spec_of("echo")
        assert spec.name == "echo" and spec.package == "tests.plugins.echo" and not spec.webhooks
        env = sandbox_provider_env("http://127.0.0.1:9")
        assert env["EDITQ_ECHO_BASE_URL"] == "http://127.0.0.1:9/echo" and env["EDITQ_ECHO_API_KEY"]
    assert "echo" not in providers.names()  # nothing outside the plugin's folder names it


def test_a_batch_on_the_ninth_provider(stack: LocalStack, tmp_path: Path) -> None:
    with using(stack):
        (tmp_path / "mug.png").write_bytes((EXAMPLES / "mug.png").read_bytes())
        tag = unique("echo")
        rows: list[dict | str] = [  # type: ignore[type-arg]
            {"custom_id": f"{tag}-{i}", "provider": "echo", "prompt": f"{tag} {i}", "images": ["mug.png"],
             **({"output_format": "jpeg"} if i % 2 else {})} for i in range(4)
        ]
        rows.append({"custom_id": f"{tag}-two", "provider": "echo", "prompt": "x", "images": ["mug.png"],
                     "num_images": 2})
        report = submit_file(write_jsonl(tmp_path / "batch.jsonl", rows), keep_ids=True)
        refused = [(e.line, e.error) for e in report.invalid]
        assert refused == [(5, "echo: num_images=2 is not allowed; allowed values: 1")]
        final = wait(report.batch_id, timeout=90)
        assert final["counts"] == {"succeeded": 4}
        manifests = verify_batch(report.batch_id, report.job_ids, "echo")
        sent = [r for r in sandbox_requests(stack, "echo") if tag in json.dumps(r["input"])]
        assert len(sent) == 4 and all(r["outcome"] == "ok" for r in sent)
        assert {m["outputs"][0]["content_type"] for m in manifests.values()} == {"image/png", "image/jpeg"}
