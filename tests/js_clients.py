"""The official JavaScript clients the sandbox tests run (tests/js: package.json pins them, package-lock.json
locks the tree): find node, install the locked dependencies when they are missing or stale, run a script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

JS_DIR = Path(__file__).resolve().parent / "js"


def _stale() -> list[str]:
    """Dependencies of tests/js/package.json not installed at their pinned version."""
    wanted: dict[str, str] = json.loads((JS_DIR / "package.json").read_text())["dependencies"]
    stale = []
    for name, version in wanted.items():
        manifest = JS_DIR / "node_modules" / name / "package.json"
        try:
            installed = json.loads(manifest.read_text()).get("version")
        except (OSError, ValueError):
            installed = None
        if installed != version:
            stale.append(f"{name}@{version}")
    return stale


def node_ready() -> str:
    """The node binary, with tests/js's locked dependencies installed (`npm ci`) if any is missing or not at
    the version package.json pins (so a checkout whose node_modules predates a new client still works)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node is not None and npm is not None, "node and npm are needed (.ci/run installs them)"
    if _stale():
        done = subprocess.run([npm, "ci", "--prefix", str(JS_DIR), "--no-audit", "--no-fund"], capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"npm ci failed: {done.stdout}\n{done.stderr}"
        assert not _stale(), f"still missing after npm ci: {_stale()}"
    return node


def run_script(script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Any:
    """Run tests/js/<script> with node (dependencies installed first) and return the one JSON object it
    prints on stdout; AssertionError with its stderr if it exits non-zero."""
    node = node_ready()
    run = subprocess.run([node, str(JS_DIR / script), *args], cwd=JS_DIR, capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, **(env or {})})
    assert run.returncode == 0, f"{script} exited {run.returncode}:\n{run.stderr}\n{run.stdout}"
    return json.loads(run.stdout)
