"""What lists providers agrees with the specs: generated docs, the local stack's settings, doc pages, and the
boundaries between a provider's pieces (a protocol never imports the network or storage; an emulator and the
sandbox never import the engine)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from editq import providers
from editq.producer.stack import sandbox_provider_env
from editq.providers import docs
from editq.providers.protocol import ProviderProtocol
from tests.conftest import ROOT

NAMES = list(providers.REGISTRY)
FORBIDDEN_IN_PROTOCOLS = ("httpx", "aiohttp", "redis", "boto3", "botocore", "editq.worker.storage",
                          "editq.worker.transport", "editq.worker.state", "editq.worker.pipeline",
                          "editq.worker.redis_client")


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def module_path(dotted: str) -> Path:
    return ROOT / (dotted.replace(".", "/") + ".py")


def test_generated_docs_match_the_specs() -> None:
    for path, text in docs.rendered().items():
        assert path.read_text() == text, f"{path.name} is stale: run `python -m editq.providers.docs`"


def test_a_changed_spec_changes_the_generated_table() -> None:
    specs = [providers.spec_of(n) for n in NAMES]
    table = docs.provider_table(specs)
    assert all(f"`{s.key_env}`" in table for s in specs)
    assert docs.provider_table(specs[1:]) != table


@pytest.mark.parametrize("name", NAMES)
def test_spec_is_complete_and_consistent(name: str) -> None:
    spec = providers.spec_of(name)
    assert spec.name == name
    env = spec.env_vars()
    assert spec.key_env in env, f"{spec.key_env} is not one of {env}"
    assert f"{spec.env_prefix()}BASE_URL" in env
    local = spec.local_env("http://sandbox.test:1")
    assert set(local) <= set(env), set(local) - set(env)
    assert local[f"{spec.env_prefix()}BASE_URL"] == "http://sandbox.test:1" + spec.sandbox_prefix
    proto = providers.protocol_of(name)
    assert isinstance(proto, ProviderProtocol) and proto.name == name
    assert (ROOT / docs.page(spec)).is_file(), docs.page(spec)
    assert all(cell.strip() for cell in docs.at_a_glance(spec).split("|"))  # the README row's five cells


def test_the_local_stack_points_every_provider_at_the_sandbox() -> None:
    env = sandbox_provider_env("http://127.0.0.1:9")
    for name in NAMES:
        spec = providers.spec_of(name)
        assert env[f"{spec.env_prefix()}BASE_URL"] == "http://127.0.0.1:9" + spec.sandbox_prefix


def _moved() -> list[str]:
    return [n for n in NAMES if providers.spec_of(n).emulator_module()]


@pytest.mark.parametrize("name", _moved())
def test_a_protocol_never_imports_the_network_or_storage(name: str) -> None:
    folder = ROOT / providers.spec_of(name).folder
    for path in folder.glob("*.py"):
        if path.name.startswith("emulator"):
            continue
        bad = {m for m in imports_of(path) for f in FORBIDDEN_IN_PROTOCOLS if m == f or m.startswith(f + ".")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("name", _moved())
def test_an_emulator_never_imports_the_engine_or_the_protocol(name: str) -> None:
    spec = providers.spec_of(name)
    folder = ROOT / spec.folder
    for path in folder.glob("emulator*.py"):
        mods = imports_of(path)
        bad = {m for m in mods if m.startswith("worker") or (m.startswith("providers.") and
               not m.split(".")[-1].startswith("emulator"))}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_sandbox_never_imports_the_engine() -> None:
    """The sandbox shares schemas and signature primitives, and the HTTP wire (worker/transport.py, no editq
    logic in it); never the pipeline, the state machine, the protocols or the provider client."""
    allowed = {"editq.worker.transport"}
    for path in (ROOT / "sandbox").rglob("*.py"):
        bad = {m for m in imports_of(path) if m.startswith("worker") and m not in allowed}
        bad |= {m for m in imports_of(path) if m.startswith("providers.") and ".protocol" in m}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
