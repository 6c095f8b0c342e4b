"""The project installs under one name: a wheel holds `editq/` and its dist-info only, and the installed copy
imports, finds its Lua scripts and templates, and runs its command, away from the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("worker", "schemas", "producer", "sandbox", "bench", "providers")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    source = tmp_path_factory.mktemp("source")  # setuptools builds in the tree: keep build/ out of the checkout
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("editq", *FOLDERS):
        shutil.copytree(ROOT / name, source / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
                   check=True, capture_output=True, timeout=600)
    (built,) = out.glob("editq-*.whl")
    return built


def test_the_wheel_holds_only_the_editq_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"editq", wheel.name.split("-py3")[0] + ".dist-info"}
    for folder in FOLDERS:
        assert f"editq/{folder}/__init__.py" in names
    assert "editq/py.typed" in names
    assert "editq/worker/lua/claim.lua" in names
    assert "editq/producer/templates/grid.html.j2" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "editq = editq.producer.cli:main" in entry_points


def test_the_installed_copy_works_away_from_the_checkout(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info") and p.name != "bin") \
        == ["editq"]
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = f"""
import importlib, editq
from editq.worker import state
from editq.producer.report_render import _env
print(editq.__file__)
print(len(state.lua_script("claim.lua")) > 0 and _env().get_template("grid.html.j2") is not None)
print(callable(editq.submit), callable(editq.rerun))
for name in {FOLDERS!r}:
    try:
        importlib.import_module(name)
        print("importable", name)
    except ModuleNotFoundError:
        pass
"""
    res = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith(str(target / "editq")), lines
    assert lines[1:3] == ["True", "True True"]
    assert not [line for line in lines if line.startswith("importable")]
    cli = subprocess.run([sys.executable, "-m", "editq", "--help"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert "submit" in cli.stdout and "rerun" in cli.stdout
