"""The `editq` command line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

app = typer.Typer(add_completion=False, no_args_is_help=True, help="editq: image-edit jobs at volume.")
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL, one job per line.")],
    strict: Annotated[bool, typer.Option(help="Refuse the whole file if any line is invalid.")] = False,
    batch_id: Annotated[str | None, typer.Option(help="Use this batch id (default: a new one).")] = None,
    provider: Annotated[str | None, typer.Option(help="Default provider/route for lines that name none.")] = None,
    watch: Annotated[bool, typer.Option(help="Show live progress until the batch finishes.")] = False,
    variants: Annotated[int | None, typer.Option(
        min=1, max=64, help="Run each line without `variants` N times as one A/B group (labels s1..sN).")] = None,
) -> None:
    """Enqueue a batch. Invalid lines are reported with their number; the rest are enqueued."""
    from producer.api import UnknownProvider, submit_file

    defaults = {"provider": provider} if provider else None
    try:
        report = submit_file(file, strict=strict, batch_id=batch_id, defaults=defaults, keep_ids=False,
                             seeds=variants)
    except UnknownProvider as exc:
        console.print(f"[red]--provider[/red]: {escape(str(exc))}; nothing enqueued")
        raise typer.Exit(2) from None
    for err in report.invalid:  # user data (custom_id, field names, references) is printed literally
        cid = f" ({escape(err.custom_id)})" if err.custom_id else ""
        console.print(f"[red]line {err.line}[/red]{cid}: {escape(err.error)}")
    if report.refused:
        console.print(f"[red]refused[/red]: {len(report.invalid)} invalid line(s) and --strict; nothing enqueued")
        raise typer.Exit(2)
    for line, jid in report.duplicates:
        console.print(f"line {line}: already enqueued as {jid} (not run again)")
    console.print(
        f"enqueued {report.enqueued}, duplicates {len(report.duplicates)}, invalid {len(report.invalid)}"
    )
    out.print(escape(report.batch_id))
    if watch:
        _watch(report.batch_id)
    if report.invalid:  # the rest was enqueued, but the caller must know lines were refused
        raise typer.Exit(1)


@app.command()
def status(
    ident: Annotated[str, typer.Argument(help="A batch id or a job id.")],
    watch: Annotated[bool, typer.Option(help="Live progress bar until it finishes.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Counts by state for a batch, or the state and outputs of a job."""
    from producer.api import status as get_status

    if watch:
        _watch(ident)
    st = get_status(ident, groups=True)
    if as_json or st["kind"] == "job":
        out.print_json(json.dumps(st))
        return
    counts = ", ".join(f"{k} {v}" for k, v in sorted(st["counts"].items())) or "no jobs"
    out.print(f"batch {escape(ident)}: {st['done']}/{st['total']} finished ({counts}); invalid lines {st['invalid']}")
    if st.get("manifest_key"):
        out.print(f"manifest: {st['manifest_key']}")
    if st.get("groups"):
        from producer.groups import format_groups

        out.print(f"{len(st['groups'])} A/B groups:")
        for line in format_groups(st["groups"]):
            out.print(line, markup=False)


def _watch(ident: str) -> dict[str, Any]:
    from producer.api import status as get_status

    st = get_status(ident)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[detail]}"), console=console, transient=False) as progress:
        task = progress.add_task(escape(ident), total=max(1, st.get("total", 1)), detail="")
        while True:
            st = get_status(ident)
            detail = " ".join(f"{k}:{v}" for k, v in sorted(st.get("counts", {}).items()))
            if st["kind"] == "job":
                detail = st["state"]
            progress.update(task, completed=st.get("done", int(st["finished"])), total=max(1, st.get("total", 1)),
                            detail=detail)
            if st["finished"] and (st["kind"] == "job" or st.get("manifest_key")):
                return st
            time.sleep(0.5)


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="Task threads in this worker process.")] = 16,
    queues: Annotated[str | None, typer.Option(help="Comma list; default: the main and the sync queue.")] = None,
    name: Annotated[str, typer.Option(help="Node name prefix.")] = "editq",
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Run a Celery worker (threads pool; each task hands its I/O to one asyncio loop)."""
    from worker.celery_app import app as celery_app
    from worker.logging import json_enabled
    from worker.triggers import queue_name

    qs = queues or f"{queue_name()},{queue_name('sync')}"
    quiet = ["--quiet"] if json_enabled() else []  # JSON logs: no start-up banner on stdout either
    celery_app.worker_main(
        [*quiet, "worker", "--pool=threads", f"--concurrency={concurrency}", "-Q", qs, f"--loglevel={loglevel}",
         "-n", f"{name}@%h", "--without-gossip", "--without-mingle"]
    )


@app.command()
def drain(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the tasks in hand.")] = 60.0,
    name: Annotated[str, typer.Option(help="The worker's --name (node NAME@this host).")] = "editq",
    node: Annotated[str | None, typer.Option(help="Celery node name; default NAME@hostname.")] = None,
) -> None:
    """Drain a worker (Kubernetes preStop): it takes no new task, hands its pumps over, finishes what it holds.
    Exit 0 when drained, 1 when tasks were still running at the timeout (SIGTERM's warm shutdown follows)."""
    from worker.drain import drain as run_drain
    from worker.drain import node_name

    target = node or node_name(name)
    drained, active = run_drain(target, timeout)
    console.print(f"{target}: {'drained' if drained else f'{active} task(s) still running'}")
    raise typer.Exit(0 if drained else 1)


@app.command()
def webhooks(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8901,
    keep_alive: Annotated[int, typer.Option(help="Seconds an idle connection stays open.")] = 75,
) -> None:
    """Run the webhook receiver (ASGI, uvicorn).

    Idle connections are kept 75 s (uvicorn's default is 5): longer than the 60 s idle timeout of the
    usual load balancers in front of it, and a provider that delivers in bursts (a wave of jobs
    finishing together) reuses its connections instead of opening hundreds at each burst."""
    import uvicorn

    from worker.logging import configure_logging

    configure_logging()  # uvicorn's lines too (log_config=None: it installs no handler of its own)
    uvicorn.run("worker.webhooks:app", host=host, port=port, log_level="warning", access_log=False, log_config=None,
                timeout_keep_alive=keep_alive, backlog=4096)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sandbox(ctx: typer.Context) -> None:
    """Run the provider sandbox (every provider's protocol on one port). Options as `python -m sandbox -h`."""
    from sandbox.__main__ import main as sandbox_main

    sandbox_main(list(ctx.args))


@app.command()
def cancel(job_id: str) -> None:
    """Cancel a job (and its provider request, where the provider can)."""
    from producer.api import cancel as do_cancel

    ok = do_cancel(job_id)
    out.print("cancelled" if ok else "not cancellable (finished or unknown)")
    raise typer.Exit(0 if ok else 1)


@app.command()
def download(
    batch_id: str,
    dest: Annotated[Path, typer.Option("--out", help="Folder to write outputs and manifests to.")] = Path("out"),
) -> None:
    """Download a batch's outputs and manifests from S3."""
    from producer.download import download_batch

    n = download_batch(batch_id, dest)
    out.print(f"{n} files written under {escape(str(dest / batch_id))}")


@app.command()
def demo(
    dest: Annotated[Path, typer.Option("--out", help="Where outputs and manifests go.")] = Path("out"),
    batch: Annotated[Path, typer.Option(help="The batch to run.")] = Path("examples/batch.jsonl"),
) -> None:
    """Start what is missing, run the sample batch end to end, download the results, stop."""
    from producer.demo import run_demo

    sys.exit(run_demo(batch, dest))


from producer import variants_cli  # noqa: E402  (report, review, continue: their own module)

variants_cli.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
