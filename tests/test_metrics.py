"""Prometheus metrics and health probes of real processes: two workers and the receiver, a batch through
the sandbox, every process scraped over HTTP."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from editq.producer.api import submit_batch, wait
from editq.producer.stack import LocalStack, free_port
from tests import e2e
from tests.conftest import EXAMPLES, unique, wait_for

N = 12
CAP = 2


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """name -> [(labels, value)] for every sample of a /metrics page."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def value(page: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for lab, v in page.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def urls(stack: LocalStack) -> list[str]:
    return [f"http://127.0.0.1:{p}/metrics" for p in stack.metrics_ports.values()] + [
        stack.env["EDITQ_WEBHOOK_BASE_URL"] + "/metrics"]


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    extra = {"EDITQ_FAL_CONCURRENCY": str(CAP), "EDITQ_INTERACTIVE_RESERVE": "0", **e2e.WEBHOOKS_ONLY}
    yield from e2e.start(True, extra, sandbox_opts={"latency_s": 0.4, "jitter_s": 0.0, "concurrency": 8, "seed": 3},
                         workers=2, keep_env=True)


@pytest.fixture(scope="module")
def prom(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus (Debian's package, installed by .ci/run) scraping the two workers and the receiver
    every second; its base URL."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is needed (.ci/run installs the Debian package)"
    root = tmp_path_factory.mktemp("prom")
    targets = [f"127.0.0.1:{p}" for p in stack.metrics_ports.values()] + [
        stack.env["EDITQ_WEBHOOK_BASE_URL"].removeprefix("http://")]
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(MONITORING / "alerts.yaml")],
              "scrape_configs": [{"job_name": "editq", "static_configs": [{"targets": targets}]}]}
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(root / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([binary, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        def all_up() -> bool:
            try:
                resp = httpx.get(base + "/api/v1/query", params={"query": "sum(up)"}, timeout=5)
            except httpx.TransportError:
                return False
            if resp.status_code != 200:  # starting: Prometheus answers 503 "Service Unavailable" (not JSON)
                return False
            res = resp.json()
            return bool(res["data"]["result"]) and float(res["data"]["result"][0]["value"][1]) == len(targets)
        wait_for(all_up, 60, "prometheus scraping every editq process")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def query(base: str, expr: str) -> list[dict[str, Any]]:
    res = httpx.get(base + "/api/v1/query", params={"query": expr}, timeout=10).json()
    assert res["status"] == "success", (expr, res)
    return list(res["data"]["result"])


def test_every_process_reports_the_same_redis_gauges_and_its_own_events(stack: LocalStack, prom: str) -> None:
    lines = [{"custom_id": f"m{i}", "prompt": f"metrics {i}", "images": ["mug.png"]} for i in range(N)]
    with e2e.using(stack):
        report = submit_batch(lines, base_dir=EXAMPLES)
        # mid-run: jobs wait behind the cap of 2; the backlog is what waits x latency / cap, in one scrape
        def backlog_seen() -> dict[str, list[tuple[dict[str, str], float]]] | None:
            page = scrape(urls(stack)[0])
            queued = value(page, "editq_jobs", state="queued", provider="fal")
            return page if queued >= 2 else None
        page = wait_for(backlog_seen, 60, "queued jobs in the scrape")
        waiting = value(page, "editq_jobs", state="queued", provider="fal") + value(
            page, "editq_jobs", state="retry_wait", provider="fal")
        latency = value(page, "editq_provider_latency_estimate_seconds", provider="fal")
        assert value(page, "editq_provider_cap", provider="fal") == CAP
        assert value(page, "editq_backlog_provider_seconds", provider="fal") == pytest.approx(waiting * latency / CAP)
        assert 0 < value(page, "editq_provider_inflight", provider="fal") <= CAP
        assert value(page, "editq_oldest_queued_job_age_seconds", provider="fal", lane="bulk") >= 0
        assert wait(report.batch_id, timeout=120)["counts"] == {"succeeded": N}

    pages = [scrape(u) for u in urls(stack)]
    # gauges read from Redis: identical in every process (aggregate with max), whatever did the work
    for page in pages:
        assert value(page, "editq_jobs_finished_total", state="succeeded", provider="fal", lane="bulk") == N
        assert sum(v for lab, v in page["editq_jobs"] if lab["provider"] == "fal") == 0
        assert value(page, "editq_backlog_provider_seconds", provider="fal") == 0
        assert value(page, "editq_provider_inflight", provider="fal") == 0
        # the sandbox's latency is 0.4 s: the shared estimate says so (not the 60 s default)
        assert 0.3 <= value(page, "editq_provider_latency_estimate_seconds", provider="fal") < 5
    workers, receiver = pages[:2], pages[2]
    # events counted where they happened: the sum across workers is the batch
    assert sum(value(p, "editq_jobs_succeeded_total", provider="fal") for p in workers) == N
    assert sum(value(p, "editq_submits_total", provider="fal", outcome="accepted") for p in workers) == N
    assert sum(value(p, "editq_provider_latency_seconds_count", provider="fal") for p in workers) == N
    assert sum(value(p, "editq_completion_to_stored_seconds_count", provider="fal") for p in workers) == N
    assert sum(value(p, "editq_queue_time_seconds_count", provider="fal", lane="bulk") for p in workers) == N
    # every latency observed is at least the sandbox's 0.4 s and in a bucket well under 5 s
    assert sum(value(p, "editq_provider_latency_seconds_bucket", provider="fal", le="0.2") for p in workers) == 0
    assert sum(value(p, "editq_provider_latency_seconds_bucket", provider="fal", le="5.0") for p in workers) == N
    assert value(receiver, "editq_webhook_deliveries_total", provider="fal", outcome="accepted") == N
    assert value(receiver, "editq_webhook_lag_seconds_count", provider="fal") == N
    assert all(value(p, "editq_job_failures_total") == 0 for p in pages)


def test_probes_of_a_worker_and_the_receiver(stack: LocalStack) -> None:
    for port in stack.metrics_ports.values():
        base = f"http://127.0.0.1:{port}"
        assert wait_for(lambda b=base: httpx.get(b + "/livez", timeout=5).json()["status"] == "ok", 30, "tick")
        ready = httpx.get(base + "/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json() == {"status": "ok", "problems": []}
        assert httpx.get(base + "/healthz", timeout=10).status_code == 200
    hooks = stack.env["EDITQ_WEBHOOK_BASE_URL"]
    assert httpx.get(hooks + "/livez", timeout=5).status_code == 200
    assert httpx.get(hooks + "/readyz", timeout=10).json() == {"status": "ok", "problems": []}


def test_readiness_names_the_dependency_that_is_down_and_liveness_does_not_care() -> None:
    """A real worker started while its Redis (job state and broker) is down: alive (`/livez` 200, so
    Kubernetes does not restart it into the same outage), not ready (503 naming Redis and the broker)."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    port = free_port()
    env = {**os.environ, "EDITQ_REDIS_URL": dead, "EDITQ_METRICS_PORT": str(port),
           "EDITQ_METRICS_HOST": "127.0.0.1", "EDITQ_KEY_PREFIX": unique("health"), "EDITQ_QUEUE_PREFIX": unique("hq")}
    env.pop("EDITQ_BROKER_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "editq", "worker", "--concurrency", "2"], env=env,
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> httpx.Response | None:
            try:
                return httpx.get(base + "/readyz", timeout=10)
            except httpx.TransportError:
                return None

        ready = wait_for(up, 60, "the worker's probe server")
        assert ready.status_code == 503
        problems = ready.json()["problems"]
        assert [p.split(":")[0] for p in problems] == ["redis", "broker"]
        assert httpx.get(base + "/livez", timeout=5).status_code == 200
        assert httpx.get(base + "/healthz", timeout=10).status_code == 503
        assert httpx.get(base + "/nope", timeout=5).status_code == 404
        assert proc.poll() is None  # still alive, waiting for its broker
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


MONITORING = Path(__file__).resolve().parents[1] / "infra" / "monitoring"
METRIC = re.compile(r"\beditq_[a-z0-9_]+")


def _exposed(stack: LocalStack) -> set[str]:
    """Every series name the processes expose (a family without samples yet counts, with its suffixes)."""
    names: set[str] = set()
    for url in urls(stack):
        for fam in text_string_to_metric_families(httpx.get(url, timeout=10).text):
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(fam.type, ("",))
            names |= {fam.name + s for s in suffixes} | {s.name for s in fam.samples}
    return names


def test_every_dashboard_and_alert_query_names_a_metric_the_processes_expose(stack: LocalStack) -> None:
    exposed = _exposed(stack)
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert all(p["targets"] for p in dashboard["panels"]) and len(queries) >= 15
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"][0]["rules"]
    assert {"EditqJobsStuck", "EditqProviderErrorRate", "EditqWebhookLag", "EditqBudgetNearlySpent"} <= {
        r["alert"] for r in rules}
    queries += [r["expr"] for r in rules]
    used = {m for q in queries for m in METRIC.findall(q)}
    assert used and not used - exposed, f"not exposed by any process: {sorted(used - exposed)}"
    # and the other way round: every editq metric is on the dashboard
    families = {n.removesuffix("_bucket").removesuffix("_total") for n in exposed if n.startswith("editq_")}
    shown = {n.removesuffix("_bucket").removesuffix("_total") for n in used}
    assert not {f for f in families if not f.endswith(("_count", "_sum", "_created"))} - shown - {
        "editq_jobs_succeeded", "editq_provider_latency_estimate_seconds", "editq_budget_cap_usd"}


def test_a_budget_reader_feeds_the_budget_gauges(stack: LocalStack) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from editq.worker import metrics

    with e2e.using(stack):
        registry = CollectorRegistry()
        registry.register(metrics.RedisCollector())
        metrics.BUDGET_READERS.append(lambda r, k: [("batch:b1", 50.0, 4.5)])
        try:
            text = generate_latest(registry).decode()
        finally:
            metrics.BUDGET_READERS.clear()
    assert 'editq_budget_remaining_usd{scope="batch:b1"} 4.5' in text
    assert 'editq_budget_cap_usd{scope="batch:b1"} 50.0' in text


def test_prometheus_evaluates_every_panel_and_rule_on_the_real_run(stack: LocalStack, prom: str) -> None:
    """Every dashboard query and alert expression is valid PromQL with data from the run above (Prometheus
    scraped it every second); the panels show what the run did."""
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    results = {t["expr"]: query(prom, t["expr"]) for p in dashboard["panels"] for t in p["targets"]}
    for rule in yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"][0]["rules"]:
        query(prom, rule["expr"])  # valid; and quiet after a clean run:
        assert query(prom, f"ALERTS{{alertname=\"{rule['alert']}\", alertstate=\"firing\"}}") == []

    def series(expr: str, **labels: str) -> float:
        return sum(float(r["value"][1]) for r in results[expr]
                   if all(r["metric"].get(k) == v for k, v in labels.items()))

    assert series("max by (provider) (editq_provider_cap)", provider="fal") == CAP
    assert series("max by (provider) (editq_backlog_provider_seconds)", provider="fal") == 0
    finished = "sum by (state, provider) (rate(editq_jobs_finished_total[5m])) * 60"
    assert series(finished, provider="fal", state="succeeded") > 0
    p95 = "histogram_quantile(0.95, sum by (le, provider) (rate(editq_provider_latency_seconds_bucket[5m])))"
    assert 0.4 <= series(p95, provider="fal") <= 5  # the sandbox's 0.4 s latency, at bucket resolution
    deliveries = "sum by (provider, outcome) (rate(editq_webhook_deliveries_total[5m]))"
    assert series(deliveries, provider="fal", outcome="accepted") > 0
    rendered = MONITORING / "panel-results.json"
    if os.environ.get("EDITQ_UPDATE_PANEL_RESULTS") == "1":  # the committed example of what the panels show
        rendered.write_text(json.dumps({p["title"]: {t["expr"]: results[t["expr"]] for t in p["targets"]}
                                        for p in dashboard["panels"]}, indent=1) + "\n")
