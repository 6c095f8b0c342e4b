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

# no rich tracebacks: they print every local variable (keys in headers included)
app = typer.Typer(add_completion=False, no_args_is_help=True, help="editq: image-edit jobs at volume.",
                  pretty_exceptions_enable=False)
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


@app.callback()
def _startup(ctx: typer.Context) -> None:
    """Before any command: logging without locals, every secret registered for redaction, and the checks a
    process of this kind needs (worker/startup.py): keys with control characters are refused everywhere; a
    worker giving providers webhook URLs and the receiver need EDITQ_WEBHOOK_SECRET (and EDITQ_FAL_USER_ID
    with fal webhooks on)."""
    if ctx.invoked_subcommand == "sandbox":  # the provider side: none of editq's settings apply
        return
    from editq.worker import startup
    from editq.worker.logging import configure_logging

    configure_logging()
    roles: dict[str, startup.Role] = {"worker": "worker", "webhooks": "receiver"}
    startup.check(roles.get(ctx.invoked_subcommand or "", "client"))


def _defaults(provider: str | None, tenant: str | None) -> dict[str, Any] | None:
    d = {k: v for k, v in (("provider", provider), ("tenant", tenant)) if v}
    return d or None


def _print_estimate(file: Path, defaults: dict[str, Any] | None, as_json: bool, seeds: int | None = None) -> int:
    """Validate every line as submit does, print what the batch will cost; returns the number of bad lines."""
    from editq.producer.api import UnknownProvider
    from editq.producer.estimate import dumps, estimate_file, render

    try:
        report = estimate_file(file, defaults=defaults, seeds=seeds)
    except UnknownProvider as exc:
        console.print(f"[red]--provider[/red]: {escape(str(exc))}")
        raise typer.Exit(2) from None
    if as_json:
        out.print_json(dumps(report))
    else:
        _print_invalid(report.invalid)  # user data is printed literally
        render(report, lambda line: out.print(escape(line)))
        if report.invalid:
            console.print(f"invalid lines: {len(report.invalid)} (not counted)")
    return len(report.invalid)


@app.command()
def estimate(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL, one job per line.")],
    provider: Annotated[str | None, typer.Option(help="Default provider/route for lines that name none.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Default tenant for lines that name none.")] = None,
    variants: Annotated[int | None, typer.Option(
        min=1, max=64, help="As `submit --variants N`: each line without `variants` counts N times.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What a batch will cost: validates every line as submit does (reads the inputs, writes nothing, no Redis)
    and prints per provider and in total the jobs, images, expected and worst-case cost."""
    bad = _print_estimate(file, _defaults(provider, tenant), as_json, variants)
    raise typer.Exit(2 if bad else 0)


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL, one job per line.")],
    strict: Annotated[bool, typer.Option(help="Refuse the whole file if any line is invalid.")] = False,
    batch_id: Annotated[str | None, typer.Option(help="Use this batch id (default: a new one).")] = None,
    provider: Annotated[str | None, typer.Option(help="Default provider/route for lines that name none.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Default tenant (daily budget) for lines that name none.")] = None,
    max_cost: Annotated[float | None, typer.Option(
        help="The batch's budget in USD: each job reserves its worst case when it is submitted; none overshoots.",
        min=0)] = None,
    on_budget: Annotated[str, typer.Option(
        help="A job that does not fit the budget: 'wait' (until `editq budget` raises it) or 'fail'.")] = "wait",
    dry_run: Annotated[bool, typer.Option(help="Validate and estimate only (as `editq estimate`); enqueue nothing.")]
    = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --dry-run: print JSON.")] = False,
    watch: Annotated[bool, typer.Option(help="Show live progress until the batch finishes.")] = False,
    variants: Annotated[int | None, typer.Option(
        min=1, max=64, help="Run each line without `variants` N times as one A/B group (labels s1..sN).")] = None,
    create_bucket: Annotated[bool, typer.Option(help="Create the S3 bucket if it does not exist.")] = False,
    procs: Annotated[int | None, typer.Option(
        min=0, help="Producer processes, each on a byte range of the file (default EDITQ_SUBMIT_PROCS; 0: one per "
        "CPU for a large file).")] = None,
) -> None:
    """Enqueue a batch. Invalid lines are reported with their number; the rest are enqueued."""
    from editq.producer.api import UnknownProvider, submit_file
    from editq.producer.preflight import check_all

    if on_budget not in ("wait", "fail"):
        console.print("[red]--on-budget[/red] must be 'wait' or 'fail'")
        raise typer.Exit(2)
    defaults = _defaults(provider, tenant)
    if dry_run:  # before any check of Redis or S3: an estimate touches neither
        bad = _print_estimate(file, defaults, as_json, variants)
        raise typer.Exit(2 if bad and strict else 0)
    check_all(create_bucket)
    try:
        report = submit_file(file, strict=strict, batch_id=batch_id, defaults=defaults, keep_ids=False,
                             max_cost=max_cost, on_budget=on_budget, seeds=variants, procs=procs)
    except UnknownProvider as exc:
        console.print(f"[red]--provider[/red]: {escape(str(exc))}; nothing enqueued")
        raise typer.Exit(2) from None
    _print_invalid(report.invalid)
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


def _print_invalid(errors: list[Any]) -> None:
    """Each refused line with its number; a reason shared by several lines (every line naming the same
    unknown provider, the same missing file) is said once, with their numbers. User data (custom_id, field
    names, references) is printed literally, never as markup."""
    by_reason: dict[str, list[Any]] = {}
    for err in errors:
        by_reason.setdefault(err.error, []).append(err)
    for reason, errs in by_reason.items():
        if len(errs) == 1:
            err = errs[0]
            cid = f" ({escape(err.custom_id)})" if err.custom_id else ""
            console.print(f"[red]line {err.line}[/red]{cid}: {escape(reason)}")
        else:
            shown = ", ".join(str(e.line) for e in errs[:10])
            more = f" and {len(errs) - 10} more" if len(errs) > 10 else ""
            console.print(f"[red]lines {shown}{more}[/red]: {escape(reason)}")


@app.command()
def status(
    ident: Annotated[str, typer.Argument(help="A batch id, a job id, or a custom_id with --batch.")],
    batch: Annotated[str | None, typer.Option(help="Look IDENT up as a custom_id within this batch.")] = None,
    watch: Annotated[bool, typer.Option(help="Live progress until it finishes.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Counts by state for a batch (and, once re-run, each item's latest outcome), or one job's state."""
    from editq.producer.api import status as get_status
    from editq.producer.preflight import check_redis

    check_redis()
    if watch:
        _watch(ident, batch)
    st = get_status(ident, groups=True, batch_id=batch)
    if as_json or st["kind"] == "job":
        out.print_json(json.dumps(st))
        return
    for line in batch_lines(st):
        out.print(line, highlight=False, markup=False)


def batch_lines(st: dict[str, Any]) -> list[str]:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(st["counts"].items())) or "no jobs"
    lines = [f"batch {st['batch_id']}: {st['done']}/{st['total']} finished ({counts}); invalid lines {st['invalid']}"]
    lines += money_lines(st)
    if st.get("rerun_of"):
        lines.append(f"re-run of batch {st['rerun_of']}")
    if st.get("reruns"):
        latest = ", ".join(f"{k} {v}" for k, v in sorted((st.get("latest") or {}).items()))
        lines.append(f"re-run by {', '.join(st['reruns'])}; latest outcome per item: {latest}")
    if st.get("manifest_key"):
        lines.append(f"manifest: {st['manifest_key']}")
    if st.get("groups"):
        from editq.producer.groups import format_groups

        lines.append(f"{len(st['groups'])} A/B groups:")
        lines += format_groups(st["groups"])
    return lines


def _watch(ident: str, batch: str | None = None) -> dict[str, Any]:
    from rich.live import Live
    from rich.text import Text

    from editq.producer.api import settled
    from editq.producer.api import status as get_status
    from editq.producer.watch import Meter, render, workers_alive
    from editq.worker.state import JobStore

    store = JobStore()
    meter = Meter()
    with Live(Text(""), console=console, refresh_per_second=4, transient=False) as live:
        while True:
            st = get_status(ident, store, batch_id=batch, latest=False)
            if st["kind"] == "job":
                live.update(Text(f"job {st['job_id']}: {st['state']}"))
            else:
                meter.add(time.monotonic(), st["done"])
                lines = render(st, rate=meter.rate(), workers=workers_alive(store), split=st.get("providers", {}))
                live.update(Text("\n".join(lines)))
            if settled(st):
                return st
            time.sleep(0.5)


def money_lines(st: dict[str, Any]) -> list[str]:
    """The cost and budget lines of `editq status BATCH`."""
    cap = st.get("max_cost_usd")
    lines = [f"cost: ${st.get('cost_usd', 0):,.2f} spent, ${st.get('committed_usd', 0):,.2f} committed"
             + (f" of ${cap:,.2f} (--on-budget {st.get('on_budget')})" if cap is not None else " (no budget)")]
    if st.get("budget_waiting"):
        lines.append(f"waiting for budget: {st['budget_waiting']} job(s): {st.get('budget_reason') or 'over budget'}"
                     " -- raise it with `editq budget BATCH --max-cost N`")
    return lines


@app.command()
def budget(
    batch_id: Annotated[str | None, typer.Argument(help="A batch id (omit with --tenant).")] = None,
    max_cost: Annotated[float | None, typer.Option(help="The new cap in USD (a tenant's: per UTC day).", min=0)] = None,
    tenant: Annotated[str | None, typer.Option(help="Set or show a tenant's daily budget instead.")] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Remove the cap (a tenant's: back to the settings).")]
    = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show or change a budget. Raising it sends the jobs waiting for it back to the queue."""
    from editq.producer.api import batch_budget, set_batch_budget, set_tenant_budget, tenant_money

    change = remove or max_cost is not None
    if (batch_id is None) == (tenant is None):
        console.print("name a batch id or --tenant NAME")
        raise typer.Exit(2)
    try:
        if tenant is not None:
            st = set_tenant_budget(tenant, None if remove else max_cost) if change else tenant_money(tenant)
        elif change:
            st = set_batch_budget(str(batch_id), None if remove else max_cost)
        else:
            st = batch_budget(str(batch_id))
    except (KeyError, ValueError) as exc:
        console.print(escape(str(exc.args[0] if exc.args else exc)), style="red", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        out.print_json(json.dumps(st))
        return
    if tenant is not None:
        cap = st["max_cost_usd"]
        out.print(f"tenant {tenant} on {st['day_utc']} (UTC): ${st['cost_usd']:,.2f} spent, "
                  f"${st['committed_usd']:,.2f} committed of " + (f"${cap:,.2f}" if cap is not None else "no cap")
                  + f"; {st['waiting']} job(s) waiting")
    else:
        for line in money_lines(st):
            out.print(line)
    if st.get("released"):
        out.print(f"released {st['released']} waiting job(s)")


@app.command()
def jobs(
    batch_id: str,
    state: Annotated[str | None, typer.Option(
        help="Only these outcomes (comma list): succeeded, failed, cancelled, expired, moderated, missing "
             "(checked in S3), or an active state.")] = None,
    latest: Annotated[bool, typer.Option(help="Each item's latest re-run instead of the job first enqueued.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """The batch's jobs: custom_id, provider, state, error, cost."""
    from editq.producer.batches import list_jobs
    from editq.producer.preflight import check_redis

    check_redis()
    states = [s.strip() for s in state.split(",") if s.strip()] if state else None
    n = 0
    for row in list_jobs(batch_id, states, latest=latest):
        n += 1
        if as_json:
            out.print(json.dumps(row, sort_keys=True), highlight=False, soft_wrap=True)
            continue
        cost = f"${row['cost_usd']:.4f}" if row["cost_usd"] is not None else "-"
        err = (row["error"] or "").replace("\n", " ")
        if row["moderation_stage"]:
            err = f"[moderated at {row['moderation_stage']}] {err}"
        out.print(f"{row['job_id']}\t{row['custom_id'] or '-'}\t{row['provider']}\t{row['state']}\t{cost}\t{err}",
                  highlight=False, markup=False)
    console.print(f"{n} job(s)")


@app.command()
def rerun(
    batch_id: str,
    only: Annotated[str | None, typer.Option(help="Which outcomes to re-run (comma list): failed, cancelled, "
                                             "expired, moderated, missing. Default: all of them.")] = None,
    provider: Annotated[str | None, typer.Option(help="Run them on this provider/route instead.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Change a parameter: --set quality=high "
                                                   "(a changed parameter makes a new job).")] = None,
    max_cost: Annotated[float | None, typer.Option(help="The new batch's budget in USD (default: what is left of "
                                                   "the original's, if it had one).")] = None,
    on_budget: Annotated[str | None, typer.Option(help="'wait' or 'fail' when a job does not fit the budget "
                                                  "(default: the original's choice).")] = None,
    watch: Annotated[bool, typer.Option(help="Show live progress until the new batch finishes.")] = False,
) -> None:
    """Re-run the items of a batch that did not succeed, as a new batch linked to it. Successes never run again."""
    from editq.producer.batches import parse_only
    from editq.producer.batches import rerun as do_rerun
    from editq.producer.preflight import check_all

    check_all()
    overrides: dict[str, Any] = {"provider": provider} if provider else {}
    for item in set_ or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set {item!r}: expected NAME=VALUE")
        try:
            overrides[name.strip()] = json.loads(value)
        except ValueError:
            overrides[name.strip()] = value
    report = do_rerun(batch_id, parse_only(only), overrides, max_cost=max_cost, on_budget=on_budget)
    for jid, cid, why in report.skipped:
        console.print(f"[yellow]skipped[/yellow] {jid}{escape(f' ({cid})') if cid else ''}: {escape(why)}",
                      highlight=False)
    for old, existing in report.duplicates:
        console.print(f"{old}: already enqueued as {existing} (not run again)")
    if report.still_running:
        console.print(f"{report.still_running} job(s) of {batch_id} are still running and were left alone")
    if report.batch_id is None:
        console.print(f"nothing to re-run in {batch_id}")
        raise typer.Exit(1 if report.skipped else 0)
    what = ", ".join(f"{k} {v}" for k, v in sorted(report.by_outcome.items()))
    console.print(f"re-running {report.enqueued} job(s) of {batch_id} ({what})")
    out.print(report.batch_id)
    if watch:
        _watch(report.batch_id)


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="Task threads in this worker process.")] = 16,
    queues: Annotated[str | None, typer.Option(help="Comma list; default: the main and the sync queue.")] = None,
    name: Annotated[str, typer.Option(help="Node name prefix.")] = "editq",
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Run a Celery worker (threads pool; each task hands its I/O to one asyncio loop)."""
    from celery.bin.celery import celery as celery_command

    from editq.worker.celery_app import app as celery_app
    from editq.worker.logging import json_enabled
    from editq.worker.triggers import queue_name

    qs = queues or f"{queue_name()},{queue_name('sync')}"
    quiet = ["--quiet"] if json_enabled() else []  # JSON logs: no start-up banner on stdout either
    # as `celery_app.worker_main`, which drops the worker's exit code: an unrecoverable error must end
    # the process non-zero, so a supervisor restarts it
    celery_command.params[0].default = celery_app
    code = celery_command.main(
        args=[*quiet, "worker", "--pool=threads", f"--concurrency={concurrency}", "-Q", qs, f"--loglevel={loglevel}",
              "-n", f"{name}@%h", "--without-gossip", "--without-mingle"],
        standalone_mode=False,
    )
    if code:
        raise typer.Exit(int(code))


@app.command()
def drain(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the tasks in hand.")] = 60.0,
    name: Annotated[str, typer.Option(help="The worker's --name (node NAME@this host).")] = "editq",
    node: Annotated[str | None, typer.Option(help="Celery node name; default NAME@hostname.")] = None,
) -> None:
    """Drain a worker (Kubernetes preStop): it takes no new task, hands its pumps over, finishes what it holds.
    Exit 0 when drained, 1 when tasks were still running at the timeout (SIGTERM's warm shutdown follows)."""
    from editq.worker.drain import drain as run_drain
    from editq.worker.drain import node_name

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

    from editq.worker.logging import configure_logging

    configure_logging()  # uvicorn's lines too (log_config=None: it installs no handler of its own)
    uvicorn.run("editq.worker.webhooks:app", host=host, port=port, log_level="warning", access_log=False,
                log_config=None, timeout_keep_alive=keep_alive, backlog=4096)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sandbox(ctx: typer.Context) -> None:
    """Run the provider sandbox (every provider's protocol on one port). Options as `python -m editq.sandbox -h`."""
    from editq.sandbox.__main__ import main as sandbox_main

    sandbox_main(list(ctx.args))


@app.command()
def cancel(
    ident: Annotated[str, typer.Argument(help="A batch id (cancels every job not yet finished), a job id, or a "
                                         "custom_id with --batch.")],
    batch: Annotated[str | None, typer.Option(help="Look IDENT up as a custom_id within this batch.")] = None,
) -> None:
    """Cancel a batch or one job, at the provider too where it holds the request."""
    from editq.producer.api import cancel as do_cancel
    from editq.producer.batches import cancel_batch, resolve
    from editq.producer.preflight import check_redis
    from editq.worker.state import JobStore

    check_redis()
    store = JobStore()
    if batch is None and store.r.exists(store.k.batch(ident)):
        rep = cancel_batch(ident, store)
        out.print(f"cancelled {rep.cancelled} job(s) of {ident} ({rep.at_provider} at the provider); "
                  f"{rep.finished} had finished; {rep.left_finishing} already done at the provider are being stored")
        return
    if batch is None and not store.r.exists(store.k.job(ident)):
        raise KeyError(f"no batch or job with id {ident!r}")
    ok = do_cancel(resolve(ident, batch, store))
    out.print("cancelled" if ok else "not cancellable (it has finished)")
    raise typer.Exit(0 if ok else 1)


@app.command()
def download(
    batch_id: str,
    dest: Annotated[Path, typer.Option("--out", help="Folder to write outputs and manifests to.")] = Path("out"),
    name: Annotated[str, typer.Option(help="Name files by 'job' id (S3's layout) or by 'custom_id'.")] = "job",
    parallel: Annotated[int, typer.Option(help="Files downloaded at once.")] = 8,
) -> None:
    """Download a batch's outputs (each checked against its manifest's sha256) and manifests from S3.
    Files already present with the same sha256 are skipped."""
    from editq.producer.download import download_batch
    from editq.producer.preflight import check_s3

    if name not in ("job", "custom_id"):
        raise typer.BadParameter("--name must be 'job' or 'custom_id'")
    check_s3()
    rep = download_batch(batch_id, dest, name=name, workers=parallel)  # type: ignore[arg-type]
    for key, why in rep.failed:
        console.print(f"[red]failed[/red] {escape(key)}: {escape(why)}")
    if rep.written + rep.skipped == 0 and not rep.failed:
        raise KeyError(f"nothing stored for batch {batch_id!r} (unknown id, or no job has finished yet)")
    out.print(f"{rep.written} files written, {rep.skipped} already present (same sha256), {len(rep.failed)} failed, "
              f"under {dest / batch_id}", markup=False, highlight=False)
    raise typer.Exit(1 if rep.failed else 0)


@app.command()
def up(
    state_dir: Annotated[Path, typer.Option(help="Where the environment file, pids and logs go.")] = Path(".editq"),
    latency: Annotated[float, typer.Option(help="The sandbox's edit latency, seconds.")] = 2.0,
) -> None:
    """Start the embedded stack (Redis, S3, provider sandbox, webhook receiver, one worker) and leave it running."""
    from editq.producer.up import up as do_up

    started, lines = do_up(state_dir, latency_s=latency)
    console.print("started" if started else "already running", f"(stop it with `editq down`); in other shells: "
                  f"source {state_dir / 'env'}")
    from editq.worker.startup import is_secret_var

    for line in lines:
        if line.startswith("export "):
            name = line.removeprefix("export ").partition("=")[0]
            shown = f"export {name}=***  # in {state_dir / 'env'}" if is_secret_var(name) else line
            out.print(shown, highlight=False, markup=False)


@app.command()
def down(
    state_dir: Annotated[Path, typer.Option(help="The folder `editq up` used.")] = Path(".editq"),
) -> None:
    """Stop the stack `editq up` started."""
    from editq.producer.up import down as do_down

    if do_down(state_dir):
        out.print("stopped")
    else:
        out.print(f"nothing running (no stack started from {state_dir})")


@app.command()
def demo(
    dest: Annotated[Path, typer.Option("--out", help="Where outputs and manifests go.")] = Path("out"),
    batch: Annotated[Path, typer.Option(help="The batch to run.")] = Path("examples/batch.jsonl"),
) -> None:
    """Start what is missing, run the sample batch end to end, download the results, stop."""
    from editq.producer.demo import run_demo

    sys.exit(run_demo(batch, dest))


from editq.producer import variants_cli  # noqa: E402  (report, review, continue: their own module)

variants_cli.register(app)


def _error(message: object) -> None:
    """One error line. The message often quotes what the user typed (an id, a custom_id, a file name), so it is
    printed literally: `editq status '[/red]'` must say the id is unknown, not fail on it as rich markup."""
    console.print(f"[red]error[/red]: {escape(str(message))}", highlight=False)


def main() -> None:
    """The CLI, with the errors a user can fix printed as one line and a non-zero exit."""
    import redis
    from botocore.exceptions import BotoCoreError, NoCredentialsError

    from editq.producer.preflight import Problem
    from editq.worker.startup import StartupRefused

    try:
        app()
    except StartupRefused as exc:  # names the variables to fix, never their values
        console.print(f"[red]refusing to start[/red]: {escape('; '.join(str(exc).splitlines()))}", highlight=False)
        sys.exit(2)
    except Problem as exc:
        _error(exc)
        sys.exit(1)
    except KeyError as exc:  # an unknown id
        _error(exc.args[0] if exc.args else exc)
        sys.exit(1)
    except ValueError as exc:  # a bad option value (e.g. --only) or a bad line in --strict
        _error(exc)
        sys.exit(2)
    except redis.ConnectionError as exc:
        _error(f"lost the connection to Redis: {exc}")
        sys.exit(1)
    except NoCredentialsError:
        console.print("[red]error[/red]: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        sys.exit(1)
    except BotoCoreError as exc:
        _error(f"S3: {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
