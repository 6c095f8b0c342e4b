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


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed into a folder of its own (as site-packages would hold it)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    return target


def test_the_installed_copy_works_away_from_the_checkout(installed: Path, tmp_path: Path) -> None:
    target = installed
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


# A user's script, type-checked against the installed package: every result is a typed object, the async
# variant's coroutines return the same types, and a misuse is an error (not Any, not dict[str, Any]).
USER_SCRIPT = """
import asyncio

import editq
from editq import BatchStatus, Estimate, JobRow, JobStatus


def sync_use() -> None:
    report = editq.submit_file("batch.jsonl", max_cost=5.0)
    final: BatchStatus = editq.wait_batch(report.batch_id)
    done: int = final.counts.get("succeeded", 0) + final.total
    job: JobStatus = editq.job_status("SKU-1", batch_id=report.batch_id)
    key: str = job.outputs[0].key
    state: editq.State = job.state
    rows: list[JobRow] = list(editq.list_jobs(report.batch_id, ["failed"]))
    est: Estimate = editq.estimate_file("batch.jsonl")
    worst: float = est.total.worst_usd
    either = editq.status(report.batch_id)
    if isinstance(either, JobStatus):
        print(either.outputs)
    again = editq.rerun(report.batch_id, ["failed"])
    print(done, key, state, rows, worst, again.batch_id, editq.cancel("j"), editq.batch_budget("b").max_cost_usd)
    reveal_type(editq.wait_job("j"))
    reveal_type(editq.list_jobs)


async def async_use() -> None:
    final = await editq.aio.wait_batch("b")
    total: int = final.total
    async for row in editq.aio.list_jobs("b"):
        cid: str | None = row.custom_id
    cancelled: bool = await editq.aio.cancel("j")
    print(total, cancelled)
    reveal_type(await editq.aio.status("b"))
    reveal_type(editq.aio.job_status)

asyncio.run(async_use())
"""

MISUSES = {
    "untyped = editq.batch_status('b')['counts']": 'Value of type "BatchStatus" is not indexable',
    "as_dict: dict[str, object] = editq.job_status('j')": 'variable has type "dict[str, object]"',
    "editq.wait('b').outputs": 'Item "BatchStatus" of "BatchStatus | JobStatus" has no attribute "outputs"',
    "editq.aio.status('b').counts": '"Coroutine[Any, Any, BatchStatus | JobStatus]" has no attribute "counts"',
    "editq.submitt('x.jsonl')": 'Module has no attribute "submitt"',
    "editq.list_jobs('b', state='failed')": 'Unexpected keyword argument "state"',
    "editq.estimate_file('x').total.worst = 1.0": '"CostLine" has no attribute "worst"',
}


def test_a_users_script_type_checks_against_the_installed_package(installed: Path, tmp_path: Path) -> None:
    """mypy --strict, as a user runs it, finds the package through its py.typed marker (not the checkout)."""
    script = tmp_path / "user.py"
    script.write_text(USER_SCRIPT + "\n\ndef misuse() -> None:\n"
                      + "".join(f"    {line}  # misuse {i}\n" for i, line in enumerate(MISUSES)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYPY")} | {"PYTHONPATH": str(installed)}
    res = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental",
                          "--python-executable", sys.executable, "--hide-error-context", "--no-error-summary",
                          "user.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = res.stdout
    lines = script.read_text().splitlines()
    errors = [line for line in out.splitlines() if ": error:" in line]
    bad = {lines[int(e.split(":")[1]) - 1].split("# misuse ")[-1] for e in errors}
    assert bad == {str(i) for i in range(len(MISUSES))}, out  # the misuses and nothing else
    for message in MISUSES.values():
        assert message in out, (message, out)
    assert 'Revealed type is "editq.producer.results.JobStatus"' in out
    assert "def (batch_id: str, states: typing.Iterable[str] | None =, *, latest: bool =) -> " \
        "typing.Iterator[editq.producer.results.JobRow]" in out
    assert 'Revealed type is "editq.producer.results.BatchStatus | editq.producer.results.JobStatus"' in out
    assert "Coroutine[Any, Any, editq.producer.results.JobStatus]" in out
    assert str(installed / "editq") in subprocess.run(
        [sys.executable, "-c", "import editq; print(editq.__file__)"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=60).stdout
