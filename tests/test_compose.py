"""Validate docker-compose.yml and infra/Dockerfile without a Docker engine.

Three layers:

1. ``tests/compose_schema.json``: our own strict JSON Schema for the subset of
   the Compose Specification we use (unknown keys are errors).
2. Cross-reference and policy checks written as ``check_*`` functions that
   return a list of problems (empty = fine): depends_on targets, declared
   volumes, Redis durability, the MinIO bucket, Flower auth, profiles, secrets,
   ``editq`` subcommands.
3. If the optional ``compose-spec`` package (a full Compose Specification
   parser) is importable, the file must also parse with it.

``test_checks_catch_regressions`` mutates a copy of the file (drop AOF, add a
literal password, ...) and asserts the matching check reports it, so a guard
that silently stops guarding is itself a test failure.
"""

from __future__ import annotations

import copy
import json
import math
import posixpath
import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from editq.producer.stack import allowed_private_hosts, sandbox_provider_env

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "infra" / "Dockerfile"
SCHEMA_FILE = Path(__file__).with_name("compose_schema.json")
ENV_EXAMPLE = ROOT / "infra" / "env.example"
RUN_DOCS = (ROOT / "README.md", ROOT / "infra" / "README.md")
# The sandbox as the editq containers reach it: the compose service name and its port.
SANDBOX_BASE = "http://sandbox:8900"
# Services that talk to the providers: the worker, and the receiver (it fetches fal's JWKS).
PROVIDER_CLIENTS = ("worker", "webhooks")

EDITQ_SUBCOMMANDS = frozenset({"worker", "webhooks", "sandbox", "submit", "status", "demo"})
EDITQ_SERVICES = ("worker", "webhooks", "flower", "sandbox")
PROVIDER_KEYS = (
    "EDITQ_FAL_KEY",
    "EDITQ_OPENAI_API_KEY",
    "EDITQ_REPLICATE_API_TOKEN",
    "EDITQ_WAVESPEED_API_KEY",
    "EDITQ_OXEN_API_KEY",
    "EDITQ_MODELRUNNER_KEY",
)
# An env var whose name matches this carries a credential.
SECRET_NAME = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
# Defaults allowed for credential variables: obviously-local placeholders only.
LOCAL_PLACEHOLDER = re.compile(r"^[a-z0-9-]*local[a-z0-9-]*$")
# Shapes of real credentials from the providers and clouds we touch.
TOKEN_SHAPES = {
    "OpenAI key": re.compile(r"\bsk-[A-Za-z0-9_-]{20,}"),
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "Replicate token": re.compile(r"\br8_[A-Za-z0-9]{20,}"),
    "fal key": re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}:[0-9a-f]{32}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"),
    "Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
}
URL_CREDENTIALS = re.compile(r"://(?P<user>[^/\s:@]*):(?P<password>[^/\s@]+)@")


# --------------------------------------------------------------------------
# loading and Compose-style interpolation
# --------------------------------------------------------------------------


def load_compose(text: str | None = None) -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8") if text is None else text)
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE_FILE.read_text(encoding="utf-8")


@pytest.fixture()
def compose(compose_text: str) -> dict[str, Any]:
    return load_compose(compose_text)


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


class InterpolationError(ValueError):
    """A ``${VAR:?message}`` (or ``${VAR?message}``) whose variable is missing."""


_INTERP = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Expand a string the way Compose does before it uses the file."""

    def repl(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        current = env.get(name)
        unset, empty = current is None, not current
        if op in (":-", "-"):
            return arg if (empty if op == ":-" else unset) else current or ""
        if op in (":?", "?"):
            if empty if op == ":?" else unset:
                raise InterpolationError(f"{name}: {arg}")
            return current or ""
        if op in (":+", "+"):
            return "" if (empty if op == ":+" else unset) else arg
        return current or ""

    return _INTERP.sub(repl, value)


def render(node: Any, env: Mapping[str, str]) -> Any:
    """Interpolate every string value of a loaded compose file."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [render(v, env) for v in node]
    if isinstance(node, dict):
        return {k: render(v, env) for k, v in node.items()}
    return node


def parse_reference(value: str) -> tuple[str, str | None, str] | None:
    """``"${NAME:-x}"`` -> ``("NAME", ":-", "x")``; None unless the whole string is one reference."""
    m = re.fullmatch(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}", value)
    if not m:
        return None
    return m.group("name"), m.group("op"), m.group("arg") or ""


def argv_of(command: str | list[str] | None) -> list[str]:
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def walk_strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Yield (path, string) for every key and string value in a loaded YAML tree."""
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk_strings(v, f"{path}[{i}]")
    elif isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}(key)", str(k)
            yield from walk_strings(v, f"{path}.{k}")


def env_items(environment: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(environment, dict):
        yield from environment.items()
    elif isinstance(environment, list):
        for entry in environment:
            name, sep, value = str(entry).partition("=")
            yield name, (value if sep else None)


def environments(data: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every environment block: each service's, plus top-level x-* mappings of env vars."""
    for name, svc in data.get("services", {}).items():
        if "environment" in svc:
            yield f"services.{name}", dict(env_items(svc["environment"]))
    for key, value in data.items():
        if key.startswith("x-") and isinstance(value, dict):
            if "environment" in value:
                yield key, dict(env_items(value["environment"]))
            elif value and all(re.fullmatch(r"[A-Z_][A-Z0-9_]*", str(k)) for k in value):
                yield key, value


def shannon_entropy(s: str) -> float:
    counts = {c: s.count(c) for c in set(s)}
    return -sum(n / len(s) * math.log2(n / len(s)) for n in counts.values())


# --------------------------------------------------------------------------
# checks: each returns a list of problems (empty list = OK)
# --------------------------------------------------------------------------


def check_schema(data: dict[str, Any]) -> list[str]:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    ]


def check_no_version_key(data: dict[str, Any]) -> list[str]:
    return ["top-level `version:` is obsolete in the Compose Specification"] if "version" in data else []


def check_depends_on(data: dict[str, Any]) -> list[str]:
    services = data.get("services", {})
    problems: list[str] = []
    graph: dict[str, list[str]] = {}
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        targets = list(deps) if isinstance(deps, (dict, list)) else []
        graph[name] = targets
        for target in targets:
            if target == name:
                problems.append(f"{name} depends on itself")
            elif target not in services:
                problems.append(f"{name} depends on unknown service {target!r}")
            else:
                condition = deps[target]["condition"] if isinstance(deps, dict) else "service_started"
                if condition == "service_healthy" and "healthcheck" not in services[target]:
                    problems.append(
                        f"{name} waits for {target} to be healthy but {target} has no healthcheck"
                    )
                if services[target].get("profiles") and not svc.get("profiles"):
                    problems.append(f"{name} (always on) depends on {target}, which only runs in a profile")
    # cycles
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == 2 or node not in graph:
            return
        if state.get(node) == 1:
            problems.append("depends_on cycle: " + " -> ".join([*trail, node]))
            return
        state[node] = 1
        for nxt in graph[node]:
            visit(nxt, [*trail, node])
        state[node] = 2

    for node in graph:
        visit(node, [])
    return problems


def check_volumes(data: dict[str, Any]) -> list[str]:
    declared = set((data.get("volumes") or {}).keys())
    used: set[str] = set()
    problems: list[str] = []
    for name, svc in data.get("services", {}).items():
        for mount in svc.get("volumes", []) or []:
            source = str(mount).split(":", 1)[0]
            if source and source[0] not in "./~$":
                used.add(source)
                if source not in declared:
                    problems.append(f"{name} mounts undeclared named volume {source!r}")
    problems += [f"volume {v!r} is declared but never used" for v in sorted(declared - used)]
    return problems


def check_ports(data: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    seen: dict[str, str] = {}
    for name, svc in data.get("services", {}).items():
        for port in svc.get("ports", []) or []:
            if not isinstance(port, str):
                problems.append(f'{name}: port {port!r} must be a quoted string like "8901:8901"')
                continue
            host = port.rsplit(":", 1)[0]
            if host in seen:
                problems.append(f"{name} and {seen[host]} both publish {host}")
            seen[host] = name
    return problems


def redis_options(data: dict[str, Any]) -> dict[str, str]:
    argv = argv_of(data["services"]["redis"].get("command"))
    opts: dict[str, str] = {}
    for i, token in enumerate(argv):
        if token.startswith("--"):
            opts[token[2:]] = argv[i + 1] if i + 1 < len(argv) else ""
    return opts


def check_redis(data: dict[str, Any]) -> list[str]:
    redis = data.get("services", {}).get("redis")
    if redis is None:
        return ["no redis service"]
    problems: list[str] = []
    if not str(redis.get("image", "")).startswith("redis:7"):
        problems.append("redis must use the redis:7 image")
    opts = redis_options(data)
    if opts.get("appendonly") != "yes":
        problems.append("redis must run with --appendonly yes (AOF persistence)")
    if opts.get("appendfsync") != "everysec":
        problems.append("redis must run with --appendfsync everysec")
    if opts.get("maxmemory-policy") != "noeviction":
        problems.append("redis must run with --maxmemory-policy noeviction (evicting a key loses a job)")
    mounts = [str(m) for m in redis.get("volumes", []) or []]
    if not any(
        m.split(":")[1:2] == ["/data"] and m.split(":")[0] in (data.get("volumes") or {}) for m in mounts
    ):
        problems.append("redis /data must be on a named volume")
    test = argv_of((redis.get("healthcheck") or {}).get("test"))
    if not {"redis-cli", "ping"} <= set(test):
        problems.append("redis healthcheck must run `redis-cli ping`")
    return problems


def check_minio(data: dict[str, Any]) -> list[str]:
    services = data.get("services", {})
    minio, init = services.get("minio"), services.get("minio-init")
    if minio is None or init is None:
        return ["minio and minio-init services are required"]
    problems: list[str] = []
    if not str(minio.get("image", "")).startswith("minio/minio"):
        problems.append("minio must use the minio/minio image")
    argv = argv_of(minio.get("command"))
    if argv[:2] != ["server", "/data"] or "--console-address" not in argv:
        problems.append("minio command must be `server /data --console-address :9001`")
    if "healthcheck" not in minio:
        problems.append("minio needs a healthcheck")
    if not any(str(m).split(":")[0] in (data.get("volumes") or {}) for m in minio.get("volumes", []) or []):
        problems.append("minio data must be on a named volume")
    env = dict(env_items(minio.get("environment")))
    for var in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        ref = parse_reference(str(env.get(var, "")))
        if ref is None or ref[0] != var:
            problems.append(f"minio {var} must come from the environment (${{{var}:-...}})")

    # minio-init: one-shot bucket creation once minio is healthy
    if not str(init.get("image", "")).startswith("minio/mc"):
        problems.append("minio-init must use the minio/mc image")
    deps = init.get("depends_on") or {}
    if not isinstance(deps, dict) or deps.get("minio", {}).get("condition") != "service_healthy":
        problems.append("minio-init must depend on minio being healthy")
    if init.get("restart", "no") != "no":
        problems.append('minio-init is one-shot: restart must be "no"')
    script = "\n".join(argv_of(init.get("entrypoint")) + [str(c) for c in init.get("command") or []])
    bucket_expr = data.get("x-editq-env", {}).get("EDITQ_S3_BUCKET")
    m = re.search(r"\bmc\s+mb\b[^\n]*?\blocal/(?P<bucket>\"?\$\{[^}]+\}|[\w.-]+)", script)
    if not m:
        problems.append("minio-init must create the bucket with `mc mb local/<bucket>`")
    else:
        bucket = m.group("bucket").strip('"')
        if bucket != bucket_expr:
            problems.append(f"minio-init creates {bucket!r}, the workers use {bucket_expr!r}")
        if interpolate(bucket, {}) != "editq":
            problems.append("the default bucket must be `editq`")
    return problems


def check_editq_services(data: dict[str, Any]) -> list[str]:
    services = data.get("services", {})
    problems: list[str] = []
    expected_env = {
        "EDITQ_REDIS_URL": "redis://redis:6379/0",
        "EDITQ_S3_ENDPOINT": "http://minio:9000",
        "EDITQ_S3_BUCKET": "${EDITQ_S3_BUCKET:-editq}",
        "EDITQ_WEBHOOK_BASE_URL": "${EDITQ_WEBHOOK_BASE_URL:-http://webhooks:8901}",
    }
    for name in EDITQ_SERVICES:
        svc = services.get(name)
        if svc is None:
            problems.append(f"missing service {name}")
            continue
        build = svc.get("build")
        dockerfile = build.get("dockerfile") if isinstance(build, dict) else None
        context = build.get("context") if isinstance(build, dict) else build
        if dockerfile != "infra/Dockerfile" or context != ".":
            problems.append(f"{name} must build from infra/Dockerfile with the repo root as context")
        if svc.get("restart") not in ("unless-stopped", "always", "on-failure"):
            problems.append(f"{name} needs a restart policy")
        env = dict(env_items(svc.get("environment")))
        for var, value in expected_env.items():
            if env.get(var) != value:
                problems.append(f"{name}: {var} should be {value!r}, got {env.get(var)!r}")
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            ref = parse_reference(str(env.get(var, "")))
            if ref is None or ref[0] != var:
                problems.append(f"{name}: {var} must come from the environment")
        for var in PROVIDER_KEYS:
            if var not in env:
                problems.append(f"{name}: provider key {var} is not passed through")
            elif env[var] not in (None, f"${{{var}}}", f"${{{var}:-}}"):
                problems.append(f"{name}: {var} must be passed through from the host with no default")

    worker = services.get("worker", {})
    if argv_of(worker.get("command")) != ["editq", "worker"]:
        problems.append("worker command must be `editq worker`")
    deps = worker.get("depends_on") or {}
    if not isinstance(deps, dict) or deps.get("redis", {}).get("condition") != "service_healthy":
        problems.append("worker must wait for redis to be healthy")
    if (
        not isinstance(deps, dict)
        or deps.get("minio-init", {}).get("condition") != "service_completed_successfully"
    ):
        problems.append("worker must wait for minio-init to complete successfully")
    if "container_name" in worker or worker.get("ports"):
        problems.append("worker must stay scalable: no container_name, no published ports")
    if not isinstance((worker.get("deploy") or {}).get("replicas", 1), int):
        problems.append("worker deploy.replicas must be an integer")

    webhooks = services.get("webhooks", {})
    if argv_of(webhooks.get("command")) != ["editq", "webhooks", "--host", "0.0.0.0", "--port", "8901"]:
        problems.append("webhooks command must be `editq webhooks --host 0.0.0.0 --port 8901`")
    if "8901:8901" not in [str(p) for p in webhooks.get("ports", [])]:
        problems.append("webhooks must publish 8901:8901")
    return problems


def check_flower(data: dict[str, Any]) -> list[str]:
    flower = data.get("services", {}).get("flower")
    if flower is None:
        return ["no flower service"]
    problems: list[str] = []
    command = flower.get("command")
    # Compose interpolates first, then splits a string command shell-style.
    try:
        render(command, {})
        problems.append("flower must refuse to start without FLOWER_PASSWORD (${FLOWER_PASSWORD:?...})")
    except InterpolationError as exc:
        if not str(exc).startswith("FLOWER_PASSWORD"):
            problems.append(f"unexpected required variable in flower command: {exc}")
    sentinel = "pw-from-env-7f3a"
    argv = argv_of(render(command, {"FLOWER_PASSWORD": sentinel}))
    if argv[:4] != ["celery", "-A", "editq.worker.celery_app", "flower"]:
        problems.append("flower command must be `celery -A editq.worker.celery_app flower ...`")
    if "--port=5555" not in argv:
        problems.append("flower must listen on --port=5555")
    auth = [a.split("=", 1)[1] for a in argv if a.startswith("--basic_auth=")]
    if len(auth) != 1:
        problems.append("flower must use --basic_auth")
    elif auth[0] != f"admin:{sentinel}":
        problems.append(
            f"flower basic auth must be ${{FLOWER_USER:-admin}}:<FLOWER_PASSWORD>, got {auth[0]!r}"
        )
    if "5555:5555" not in [str(p) for p in flower.get("ports", [])]:
        problems.append("flower must publish 5555:5555")
    return problems


def check_profiles(data: dict[str, Any]) -> list[str]:
    services = data.get("services", {})
    problems: list[str] = []
    sandbox = services.get("sandbox")
    if sandbox is None:
        return ["no sandbox service"]
    if sandbox.get("profiles") != ["sandbox"]:
        problems.append('sandbox must be only in profiles: ["sandbox"]')
    if argv_of(sandbox.get("command")) != ["editq", "sandbox", "--host", "0.0.0.0", "--port", "8900"]:
        problems.append("sandbox command must be `editq sandbox --host 0.0.0.0 --port 8900`")
    if "8900:8900" not in [str(p) for p in sandbox.get("ports", [])]:
        problems.append("sandbox must publish 8900:8900")
    for name in ("redis", "minio", "minio-init", "worker", "webhooks", "flower"):
        if services.get(name, {}).get("profiles"):
            problems.append(f"{name} must start by default (no profiles)")
    return problems


def check_no_secrets(data: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for where, env in environments(data):
        for var, value in env.items():
            if not SECRET_NAME.search(var) or value is None:
                continue
            ref = parse_reference(str(value))
            if ref is None:
                problems.append(f"{where}: {var} has a literal value; take it from the environment")
            elif ref[0] != var and not SECRET_NAME.search(ref[0]):
                problems.append(
                    f"{where}: {var} is fed from ${{{ref[0]}}}, which is not a credential variable"
                )
            elif ref[1] in (":-", "-") and ref[2] and not LOCAL_PLACEHOLDER.fullmatch(ref[2]):
                problems.append(f"{where}: default for {var} ({ref[2]!r}) looks like a real secret")
    for where, text in walk_strings(data):
        problems += _secret_shapes(where, text)
    return problems


def _secret_shapes(where: str, text: str) -> list[str]:
    problems = [
        f"{where}: contains something shaped like a {kind}"
        for kind, rx in TOKEN_SHAPES.items()
        if rx.search(text)
    ]
    for m in URL_CREDENTIALS.finditer(text):
        if not m.group("password").startswith("${"):
            problems.append(f"{where}: URL with an embedded password")
    for token in re.findall(r"[A-Za-z0-9+/=_-]{24,}", text):
        if re.search(r"\d", token) and re.search(r"[A-Za-z]", token) and shannon_entropy(token) > 4.0:
            problems.append(f"{where}: high-entropy string {token[:6]}... looks like a credential")
    return problems


def check_editq_subcommands(data: dict[str, Any]) -> list[str]:
    rendered = render(data, {"FLOWER_PASSWORD": "x"})
    problems: list[str] = []
    found: set[str] = set()
    for name, svc in rendered.get("services", {}).items():
        for field in ("entrypoint", "command"):
            argv = argv_of(svc.get(field))
            if argv[:1] == ["editq"]:
                sub = argv[1] if len(argv) > 1 else ""
                found.add(sub)
                if sub not in EDITQ_SUBCOMMANDS:
                    problems.append(f"{name}.{field}: `editq {sub}` is not a known subcommand")
    # editq invoked from inside shell scripts (entrypoint/command/healthcheck strings),
    # at a command position: line start, after ; && || | ( ` or exec/then/do.
    shell_cmd = re.compile(
        r"(?:^|[;&|(`]|\b(?:exec|then|do|else))\s*(?:/[\w/.-]*/)?editq\s+([a-z][a-z0-9_-]*)", re.MULTILINE
    )
    for where, text in walk_strings(rendered):
        if not re.search(r"\.(command|entrypoint|test)(\[\d+\])?$", where):
            continue
        for m in shell_cmd.finditer(text):
            found.add(m.group(1))
            if m.group(1) not in EDITQ_SUBCOMMANDS:
                problems.append(f"{where}: `editq {m.group(1)}` is not a known subcommand")
    if not {"worker", "webhooks", "sandbox"} <= found:
        problems.append(f"expected editq worker/webhooks/sandbox commands, found {sorted(found)}")
    return problems


def check_restart_policies(data: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for name, svc in data.get("services", {}).items():
        deps_on_me = [
            other
            for other, s in data["services"].items()
            if isinstance(s.get("depends_on"), dict)
            and s["depends_on"].get(name, {}).get("condition") == "service_completed_successfully"
        ]
        if deps_on_me:
            if svc.get("restart", "no") != "no":
                problems.append(f'{name} is a one-shot job (awaited by {deps_on_me}); restart must be "no"')
        elif svc.get("restart") not in ("unless-stopped", "always", "on-failure"):
            problems.append(f"{name} is long-running and needs a restart policy")
    return problems


def sandbox_url_paths() -> dict[str, str]:
    """Every provider URL variable producer/stack.py points at the sandbox for the local stack, with
    the sandbox path it uses (``EDITQ_FAL_BASE_URL -> /fal``): taken from the code, not a copy."""
    probe = "http://sandbox.invalid:1"
    return {
        var: value[len(probe) :]
        for var, value in sandbox_provider_env(probe).items()
        if value == probe or value.startswith(probe + "/")
    }


def check_provider_urls(data: dict[str, Any]) -> list[str]:
    """The worker and the receiver get every provider URL variable, passed through from the host
    with no default (a default would replace the provider's real API URL in production)."""
    services = data.get("services", {})
    problems: list[str] = []
    for name in PROVIDER_CLIENTS:
        env = dict(env_items(services.get(name, {}).get("environment")))
        for var in sandbox_url_paths():
            if var not in env:
                problems.append(f"{name}: provider URL {var} is not passed through")
            elif env[var] not in (None, f"${{{var}}}"):
                problems.append(f"{name}: {var} must be passed through from the host with no default")
    return problems


_SANDBOX_ASSIGNMENT = re.compile(r"\b([A-Z][A-Z0-9_]*)=(" + re.escape(SANDBOX_BASE) + r"[^\s`'\"(),]*)")


def check_sandbox_mentions(where: str, text: str) -> list[str]:
    """Every ``VAR=http://sandbox:8900...`` written anywhere (comments and docs included) uses the
    sandbox path producer/stack.py uses for that variable."""
    paths = sandbox_url_paths()
    problems: list[str] = []
    for m in _SANDBOX_ASSIGNMENT.finditer(text):
        var, value = m.group(1), m.group(2).rstrip(".:;")
        line = text.count("\n", 0, m.start()) + 1
        if var not in paths:
            if var.endswith("_URL") and var.startswith("EDITQ_"):
                problems.append(f"{where}:{line}: {var} is not a provider URL producer/stack.py sets")
        elif value != SANDBOX_BASE + paths[var]:
            problems.append(f"{where}:{line}: {var}={value} should be {SANDBOX_BASE}{paths[var]}")
    return problems


def check_env_example(text: str) -> list[str]:
    """infra/env.example carries every provider URL with its sandbox value, commented out (copying
    the file must not point a real deployment at the sandbox)."""
    assigned: dict[str, tuple[bool, str]] = {}
    for line in text.splitlines():
        m = re.fullmatch(r"(#\s*)?([A-Z_][A-Z0-9_]*)=(.*)", line.strip())
        if m:
            assigned[m.group(2)] = (m.group(1) is not None, m.group(3).strip())
    problems: list[str] = []
    for var, path in sandbox_url_paths().items():
        if var not in assigned:
            problems.append(f"env.example: no {var} (sandbox value {SANDBOX_BASE}{path})")
            continue
        commented, value = assigned[var]
        if value != SANDBOX_BASE + path:
            problems.append(f"env.example: {var}={value} should be {SANDBOX_BASE}{path}")
        if not commented:
            problems.append(f"env.example: {var} must be commented out (opt-in sandbox block)")
    return problems + check_sandbox_mentions("env.example", text)


PRIVATE_HOSTS_VAR = "EDITQ_ALLOWED_PRIVATE_HOSTS"
RETIRED_VARS = ("EDITQ_ALLOW_PRIVATE_URLS",)  # replaced by the allow-list: a stale mention misleads


def check_private_hosts(data: dict[str, Any], example: str, documents: Mapping[str, str]) -> list[str]:
    """The SSRF allow-list: compose passes it through with no default (a default would open private
    addresses in production); env.example's sandbox block lists exactly what producer/stack.py would
    allow for the compose stack (the sandbox, and the S3 server the compose file points at); the
    retired all-or-nothing switch is mentioned nowhere."""
    problems: list[str] = []
    shared = dict(env_items(data.get("x-editq-env")))
    if PRIVATE_HOSTS_VAR not in shared:
        problems.append(f"compose: {PRIVATE_HOSTS_VAR} is not passed through")
    elif shared[PRIVATE_HOSTS_VAR] not in (None, f"${{{PRIVATE_HOSTS_VAR}}}"):
        problems.append(f"compose: {PRIVATE_HOSTS_VAR} must be passed through from the host with no default")
    want = allowed_private_hosts("", SANDBOX_BASE, str(shared.get("EDITQ_S3_ENDPOINT")))
    m = re.search(rf"(?m)^#\s*{PRIVATE_HOSTS_VAR}=(\S*)\s*$", example)
    if not m:
        problems.append(f"env.example: no commented-out {PRIVATE_HOSTS_VAR}={want}")
    elif m.group(1) != want:
        problems.append(f"env.example: {PRIVATE_HOSTS_VAR}={m.group(1)} should be {want}")
    for where, text in {"env.example": example, **documents}.items():
        for var in RETIRED_VARS:
            if var in text:
                problems.append(f"{where}: mentions {var}, replaced by {PRIVATE_HOSTS_VAR}")
    return problems


def _image_workdir() -> str:
    workdirs = [
        line.split(None, 1)[1].strip()
        for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()
        if line.strip().upper().startswith("WORKDIR ")
    ]
    return workdirs[-1] if workdirs else "/"


_RUN_OPTIONS_WITH_VALUE = frozenset(
    {"-e", "--env", "-v", "--volume", "-w", "--workdir", "--name", "--entrypoint", "-u", "--user",
     "-p", "--publish", "-l", "--label", "--env-from-file", "--cap-add", "--cap-drop", "--pull"}
)


def compose_run_commands(markdown: str) -> list[tuple[str, list[str], list[str]]]:
    """``docker compose run`` lines of a document's code blocks: (service, command argv, extra -v mounts)."""
    found: list[tuple[str, list[str], list[str]]] = []
    for block in re.findall(r"```[^\n]*\n(.*?)```", markdown, re.DOTALL):
        for line in block.splitlines():
            if not line.strip().startswith("docker compose run"):
                continue  # other lines of the block need not be shell (a layout, prose with apostrophes)
            argv = shlex.split(line, comments=True)
            if argv[:3] != ["docker", "compose", "run"]:
                continue
            rest, mounts, service = argv[3:], [], ""
            while rest:
                token = rest.pop(0)
                if token.startswith("-"):
                    name, eq, value = token.partition("=")
                    if name in _RUN_OPTIONS_WITH_VALUE:
                        value = value if eq else (rest.pop(0) if rest else "")
                        if name in ("-v", "--volume"):
                            mounts.append(value)
                    continue
                service = token
                break
            found.append((service, rest, mounts))
    return found


def check_compose_run_paths(data: dict[str, Any], documents: Mapping[str, str]) -> list[str]:
    """Each file a documented ``docker compose run`` names is inside a volume mounted in that container."""
    rendered = render(data, {"FLOWER_PASSWORD": "x"})
    workdir = _image_workdir()
    problems: list[str] = []
    for where, text in documents.items():
        for service, command, extra in compose_run_commands(text):
            svc = rendered.get("services", {}).get(service)
            if svc is None:
                problems.append(f"{where}: `docker compose run {service}`: no such service")
                continue
            targets = [str(m).split(":")[1] for m in [*(svc.get("volumes") or []), *extra] if ":" in str(m)]
            for arg in command:
                if arg.startswith("-") or not re.search(r"/|\.(jsonl|json|csv|txt)$", arg):
                    continue
                path = posixpath.normpath(posixpath.join(workdir, arg))
                if not any(path == t or path.startswith(t.rstrip("/") + "/") for t in targets):
                    problems.append(
                        f"{where}: `docker compose run ... {service} ... {arg}`: {path} is in no volume "
                        f"mounted in {service} (mounts: {targets or 'none'})"
                    )
    return problems


def _run_docs() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in RUN_DOCS}


CHECKS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "schema": check_schema,
    "version": check_no_version_key,
    "depends_on": check_depends_on,
    "volumes": check_volumes,
    "ports": check_ports,
    "redis": check_redis,
    "minio": check_minio,
    "editq_services": check_editq_services,
    "flower": check_flower,
    "profiles": check_profiles,
    "secrets": check_no_secrets,
    "subcommands": check_editq_subcommands,
    "restart": check_restart_policies,
    "provider_urls": check_provider_urls,
    "run_paths": lambda data: check_compose_run_paths(data, _run_docs()),
}


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------


def test_schema_file_is_a_valid_json_schema(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_compose_file(compose: dict[str, Any], check: str) -> None:
    problems = CHECKS[check](compose)
    assert not problems, "\n".join(problems)


def test_expected_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "redis",
        "minio",
        "minio-init",
        "worker",
        "webhooks",
        "flower",
        "sandbox",
    }


def test_shared_env_is_an_anchor(compose_text: str, compose: dict[str, Any]) -> None:
    assert re.search(r"^x-editq-env:\s*&editq-env\b", compose_text, re.MULTILINE)
    shared = compose["x-editq-env"]
    for name in EDITQ_SERVICES:
        env = compose["services"][name]["environment"]
        assert {k: env.get(k) for k in shared} == shared, f"{name} does not carry the shared environment"


def test_raw_text_has_no_secret_shapes(compose_text: str) -> None:
    # Also covers comments, which the YAML loader drops.
    problems = [
        p for i, line in enumerate(compose_text.splitlines(), 1) for p in _secret_shapes(f"line {i}", line)
    ]
    assert not problems, "\n".join(problems)


def test_defaults_render_to_a_usable_local_stack(compose: dict[str, Any]) -> None:
    rendered = render(compose, {"FLOWER_PASSWORD": "x"})
    env = rendered["services"]["worker"]["environment"]
    minio_env = rendered["services"]["minio"]["environment"]
    assert env["EDITQ_S3_BUCKET"] == "editq"
    assert env["EDITQ_WEBHOOK_BASE_URL"] == "http://webhooks:8901"
    # the default AWS credentials are the default MinIO root credentials
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        minio_env["MINIO_ROOT_USER"],
        minio_env["MINIO_ROOT_PASSWORD"],
    )
    assert len(minio_env["MINIO_ROOT_PASSWORD"]) >= 8, "MinIO refuses root passwords under 8 characters"
    overridden = render(compose, {"FLOWER_PASSWORD": "x", "EDITQ_S3_BUCKET": "prod-out"})
    assert "local/prod-out" in "\n".join(overridden["services"]["minio-init"]["command"])


def test_with_compose_spec_package_if_installed(compose: dict[str, Any]) -> None:
    """Full Compose Specification parse via the optional `compose-spec` package."""
    compose_spec = pytest.importorskip("compose_spec")
    # The Rust parser does not resolve YAML merge keys, so hand it the loaded tree.
    parsed = compose_spec.PyCompose.from_json(json.dumps(compose))
    assert set(parsed.service_names()) == set(compose["services"])
    parsed.to_spec()


def test_interpolation_helper() -> None:
    assert interpolate("${A:-x}/${B-y}/$$C/${D}", {"B": ""}) == "x//$C/"
    with pytest.raises(InterpolationError):
        interpolate("${P:?set P}", {"P": ""})
    assert interpolate("${P?set P}", {"P": ""}) == ""


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        *parents, leaf = path.split("/")
        node: Any = d
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is _DELETE:
            del node[int(leaf) if isinstance(node, list) else leaf]
        else:
            node[int(leaf) if isinstance(node, list) else leaf] = value

    return mutate


_DELETE = object()


def _redis_command(*args: str) -> Callable[[dict[str, Any]], None]:
    return _set("services/redis/command", ["redis-server", *args])


REGRESSIONS: dict[str, tuple[str, Callable[[dict[str, Any]], None]]] = {
    "no AOF": ("redis", _redis_command("--appendfsync", "everysec", "--maxmemory-policy", "noeviction")),
    "AOF off": (
        "redis",
        _redis_command("--appendonly", "no", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction"),
    ),
    "evicting redis": (
        "redis",
        _redis_command(
            "--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "allkeys-lru"
        ),
    ),
    "redis healthcheck gone": ("schema", _set("services/redis/healthcheck/test", ["CMD"])),
    "version key": ("version", _set("version", "3.9")),
    "unknown top-level key": ("schema", _set("service", {})),
    "unknown service key": ("schema", _set("services/worker/replica", 3)),
    "no image or build": ("schema", _set("services/minio/image", _DELETE)),
    "bad depends_on condition": ("schema", _set("services/worker/depends_on/redis/condition", "healthy")),
    "depends on missing service": (
        "depends_on",
        _set("services/worker/depends_on/postgres", {"condition": "service_started"}),
    ),
    "undeclared volume": ("volumes", _set("services/redis/volumes", ["redisdata:/data"])),
    "unquoted port": ("schema", _set("services/webhooks/ports", [8901])),
    "profiles not a list": ("schema", _set("services/sandbox/profiles", "sandbox")),
    "sandbox always on": ("profiles", _set("services/sandbox/profiles", _DELETE)),
    "bucket never created": ("minio", _set("services/minio-init/command", ["mc ls local"])),
    "flower without auth": (
        "flower",
        _set("services/flower/command", "celery -A editq.worker.celery_app flower --port=5555"),
    ),
    "flower literal password": (
        "flower",
        _set(
            "services/flower/command",
            "celery -A editq.worker.celery_app flower --port=5555 --basic_auth=admin:hunter2",
        ),
    ),
    "literal provider key": ("secrets", _set("services/worker/environment/EDITQ_FAL_KEY", "abc123")),
    "provider key default": (
        "editq_services",
        _set("services/worker/environment/EDITQ_OPENAI_API_KEY", "${EDITQ_OPENAI_API_KEY:-x}"),
    ),
    "real-looking default": (
        "secrets",
        _set("x-editq-env/AWS_SECRET_ACCESS_KEY", "${AWS_SECRET_ACCESS_KEY:-wJalrXUtnFEMIK7MDENGbPxRfiCY}"),
    ),
    "token in a command": (
        "secrets",
        _set("services/sandbox/command", ["editq", "sandbox", "--key", "sk-" + "A1b2C3d4" * 4]),
    ),
    "password in a URL": ("secrets", _set("x-editq-env/EDITQ_REDIS_URL", "redis://:s3cret@redis:6379/0")),
    "unknown subcommand": ("subcommands", _set("services/worker/command", ["editq", "run-worker"])),
    "unknown subcommand in a script": (
        "subcommands",
        _set("services/minio-init/command", ["set -e\nmc mb local/x && editq migrate"]),
    ),
    "worker not scalable": ("editq_services", _set("services/worker/container_name", "editq-worker")),
    "one-shot restarts forever": ("restart", _set("services/minio-init/restart", "always")),
    "fal JWKS not passed": ("provider_urls", _set("services/webhooks/environment/EDITQ_FAL_JWKS_URL", _DELETE)),
    "provider URL default": (
        "provider_urls",
        _set("services/worker/environment/EDITQ_OXEN_BASE_URL", "${EDITQ_OXEN_BASE_URL:-http://sandbox:8900}"),
    ),
    "no /data mount": ("run_paths", _set("services/worker/volumes", _DELETE)),
    "mount elsewhere": ("run_paths", _set("services/worker/volumes", ["./data:/srv/data:ro"])),
}


@pytest.mark.parametrize("regression", sorted(REGRESSIONS))
def test_checks_catch_regressions(compose: dict[str, Any], regression: str) -> None:
    check, mutate = REGRESSIONS[regression]
    broken = copy.deepcopy(compose)
    mutate(broken)
    assert CHECKS[check](broken), f"check {check!r} did not notice: {regression}"


def test_deleting_aof_from_the_file_fails(compose_text: str) -> None:
    """Edit the text itself (not the loaded tree): removing AOF must be caught."""
    broken = re.sub(r"\n\s*- --appendonly\n\s*- \"yes\"", "", compose_text)
    assert broken != compose_text
    assert check_redis(load_compose(broken))


# --------------------------------------------------------------------------
# provider URLs and docs: compose, infra/env.example and the READMEs agree with producer/stack.py
# --------------------------------------------------------------------------


def test_sandbox_url_paths_come_from_the_stack() -> None:
    paths = sandbox_url_paths()
    assert paths["EDITQ_FAL_BASE_URL"] == "/fal"
    assert paths["EDITQ_FAL_JWKS_URL"] == "/fal/.well-known/jwks.json"
    providers = {"FAL", "OPENAI", "OPENAI_BATCH", "OXEN", "WAVESPEED", "MODELRUNNER", "REPLICATE"}
    assert {f"EDITQ_{p}_BASE_URL" for p in providers} <= set(paths)
    assert not [v for v in paths if "KEY" in v or "TOKEN" in v]


def test_fal_jwks_url_is_passed(compose: dict[str, Any]) -> None:
    for name in PROVIDER_CLIENTS:
        assert "EDITQ_FAL_JWKS_URL" in compose["services"][name]["environment"], name


def test_sandbox_urls_in_compose_text_use_the_stacks_paths(compose_text: str) -> None:
    problems = check_sandbox_mentions("docker-compose.yml", compose_text)
    assert not problems, "\n".join(problems)
    assert "EDITQ_FAL_BASE_URL=http://sandbox:8900/fal" in compose_text


def test_env_example_lists_every_provider_url_with_its_sandbox_path() -> None:
    problems = check_env_example(ENV_EXAMPLE.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


def test_docs_sandbox_urls_use_the_stacks_paths() -> None:
    problems = [p for where, text in _run_docs().items() for p in check_sandbox_mentions(where, text)]
    assert not problems, "\n".join(problems)


def test_readme_compose_run_names_a_file_in_a_mounted_volume(compose: dict[str, Any]) -> None:
    docs = _run_docs()
    runs = compose_run_commands(docs["README.md"])
    assert any("/data/batch.jsonl" in command for _, command, _ in runs), runs
    problems = check_compose_run_paths(compose, docs)
    assert not problems, "\n".join(problems)


def _private_hosts_documents() -> dict[str, str]:
    paths = [COMPOSE_FILE, *RUN_DOCS, *sorted((ROOT / "docs").glob("*.md"))]
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in paths}


def test_private_hosts_allow_list_agrees_everywhere(compose: dict[str, Any]) -> None:
    problems = check_private_hosts(compose, ENV_EXAMPLE.read_text(encoding="utf-8"), _private_hosts_documents())
    assert not problems, "\n".join(problems)


def test_private_hosts_check_catches_regressions(compose: dict[str, Any]) -> None:
    example = ENV_EXAMPLE.read_text(encoding="utf-8")
    docs = _private_hosts_documents()
    assert check_private_hosts(compose, example.replace("sandbox:8900,minio:9000", "sandbox:8900"), docs)
    assert check_private_hosts(compose, example, {**docs, "README.md": "set EDITQ_ALLOW_PRIVATE_URLS=true"})
    opened = copy.deepcopy(compose)
    opened["x-editq-env"][PRIVATE_HOSTS_VAR] = "${EDITQ_ALLOWED_PRIVATE_HOSTS:-10.0.0.0:80}"
    assert check_private_hosts(opened, example, docs)
    dropped = copy.deepcopy(compose)
    del dropped["x-editq-env"][PRIVATE_HOSTS_VAR]
    assert check_private_hosts(dropped, example, docs)


def test_text_checks_catch_regressions() -> None:
    stale = "# EDITQ_FAL_BASE_URL=http://sandbox:8900\n"
    assert check_sandbox_mentions("x", stale)
    example = ENV_EXAMPLE.read_text(encoding="utf-8")
    assert check_env_example(example.replace("sandbox:8900/fal\n", "sandbox:8900\n"))
    assert check_env_example(example.replace("# EDITQ_REPLICATE_BASE_URL=", "EDITQ_REPLICATE_BASE_URL="))
    assert check_env_example(re.sub(r"(?m)^# EDITQ_OXEN_BASE_URL=.*\n", "", example))
    doc = "```bash\ndocker compose run --rm -v $PWD:/in worker editq submit /in/b.jsonl  # x\n```"
    assert compose_run_commands(doc) == [("worker", ["editq", "submit", "/in/b.jsonl"], ["$PWD:/in"])]


# --------------------------------------------------------------------------
# infra/Dockerfile
# --------------------------------------------------------------------------


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    instructions = [
        line.strip()
        for line in re.sub(r"\\\n", " ", text).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    froms = [i for i in instructions if i.upper().startswith("FROM ")]
    assert froms and all("${PYTHON_IMAGE}" in f or "python:3.11-slim" in f for f in froms)
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in instructions
    assert any(re.search(r"\bpip install\b.*\s\.(\s|$)", i) for i in instructions), "must `pip install .`"
    users = [i.split(None, 1)[1] for i in instructions if i.upper().startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    for i in instructions:
        if i.upper().startswith(("ENV ", "ARG ")):
            assert not SECRET_NAME.search(i.split(None, 1)[1].split("=")[0]), (
                f"no credentials in the image: {i}"
            )
        assert not re.search(r"\bCOPY\b.*\.env\b", i), "never copy .env into the image"
    assert not _secret_shapes("Dockerfile", text)
