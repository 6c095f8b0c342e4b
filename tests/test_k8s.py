"""infra/k8s offline: every overlay renders (tests/kustomize.py) to exactly what `kubectl kustomize` rendered
into infra/k8s/rendered/, every object validates against the Kubernetes schemas (kubernetes-validate) or, for
KEDA's ScaledObject, against KEDA's CRD schema (@kubernetes-models/keda, run by node), and the properties
the operations guide promises hold: scaling on editq's backlog metric, draining workers, probes, budgets,
TLS, resource requests."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from editq.producer.stack import allowed_private_hosts, sandbox_provider_env
from tests.conftest import ROOT
from tests.js_clients import run_script
from tests.kustomize import key, load_docs, render

K8S = ROOT / "infra" / "k8s"
OVERLAYS = ("production", "sandbox")
KUBERNETES = "1.30.0"  # the oldest minor the manifests are checked against (PDB policy/v1, Ingress v1...)


def rendered(overlay: str) -> list[dict]:  # type: ignore[type-arg]
    return render(K8S / "overlays" / overlay)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_committed_render_is_what_the_kustomization_renders(overlay: str) -> None:
    mine = {key(d): d for d in rendered(overlay)}
    committed = {key(d): d for d in load_docs(K8S / "rendered" / f"{overlay}.yaml")}
    assert sorted(mine) == sorted(committed)
    for k, doc in mine.items():
        assert doc == committed[k], k


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_its_schema(overlay: str, tmp_path: Path) -> None:
    docs = rendered(overlay)
    keda = [d for d in docs if d["apiVersion"].startswith("keda.sh/")]
    for doc in docs:
        if doc in keda:
            continue
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises on any error or unknown field
    assert [d["kind"] for d in keda] == ["ScaledObject"]
    path = tmp_path / "keda.json"
    path.write_text(json.dumps(keda))
    assert run_script("keda_validate.mjs", str(path))["results"] == [{"name": "editq-worker", "error": None}]


def test_the_validators_refuse_a_broken_manifest(tmp_path: Path) -> None:
    """The checks above can fail: a mistyped field and a bad ScaledObject are refused."""
    worker = next(d for d in rendered("production") if d["kind"] == "Deployment" and "worker" in d["metadata"]["name"])
    worker["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # typo of `resources`
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, KUBERNETES, strict=True)
    so = next(d for d in rendered("production") if d["kind"] == "ScaledObject")
    so["spec"]["minReplicaCount"] = "two"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([so]))
    assert "minReplicaCount must be integer" in run_script("keda_validate.mjs", str(path))["results"][0]["error"]


def _by(docs: list[dict], kind: str, name: str) -> dict:  # type: ignore[type-arg]
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_what_the_operations_guide_promises(overlay: str) -> None:
    docs = rendered(overlay)
    # KEDA scales the workers on editq's own backlog metric (which every editq process serves)
    so = _by(docs, "ScaledObject", "editq-worker")
    assert so["spec"]["scaleTargetRef"]["name"] == "editq-worker"
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and "editq_backlog_provider_seconds" in trigger["metadata"]["query"]
    # a worker drains before it stops: preStop `editq drain` within the termination grace
    worker = _by(docs, "Deployment", "editq-worker")["spec"]["template"]["spec"]
    (wc,) = worker["containers"]
    drain = wc["lifecycle"]["preStop"]["exec"]["command"]
    assert drain[:2] == ["editq", "drain"]
    assert worker["terminationGracePeriodSeconds"] > int(drain[drain.index("--timeout") + 1]) + 20
    assert wc["command"][:2] == ["editq", "worker"]
    # probes: liveness never the dependency check; readiness is
    for name, port in (("editq-worker", "metrics"), ("editq-receiver", "http")):
        c = _by(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": port}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    # every container asks for CPU and memory and caps memory
    for d in docs:
        for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and "memory" in c["resources"]["limits"]
    # disruption budgets for the workers and the receiver
    pdbs = {d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] for d in docs
            if d["kind"] == "PodDisruptionBudget"}
    assert pdbs == {"editq-worker", "editq-receiver"}
    # the receiver behind an Ingress with TLS for the host it serves
    ing = _by(docs, "Ingress", "editq-receiver")["spec"]
    assert ing["tls"][0]["hosts"] == [ing["rules"][0]["host"]] and ing["tls"][0]["secretName"]
    assert {"editq-flower", "editq-receiver"} <= {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}


def test_the_sandbox_overlay_points_every_provider_at_the_sandbox() -> None:
    docs = rendered("sandbox")
    config = _by(docs, "ConfigMap", "editq-config")["data"]
    expected = sandbox_provider_env("http://sandbox:8900")
    assert {k: config[k] for k in expected} == expected  # every provider of the registry, none missing
    assert _by(docs, "Service", "sandbox")["spec"]["ports"][0]["port"] == 8900
    # the SSRF guard stays on: only the sandbox's exact host:port is fetched from although private
    assert config["EDITQ_ALLOWED_PRIVATE_HOSTS"] == allowed_private_hosts("", "http://sandbox:8900")
    assert not any("EDITQ_ALLOW_PRIVATE_URLS" in d.get("data", {}) for o in OVERLAYS
                   for d in rendered(o) if d["kind"] == "ConfigMap")
    assert _by(docs, "Deployment", "editq-sandbox")
    prod = _by(rendered("production"), "ConfigMap", "editq-config")["data"]
    assert not any(k.endswith("_BASE_URL") and "sandbox" in v for k, v in prod.items())


def test_the_kustomizations_are_valid_yaml_with_sources_noted() -> None:
    for path in K8S.rglob("*.yaml"):
        assert list(yaml.safe_load_all(path.read_text())), path
